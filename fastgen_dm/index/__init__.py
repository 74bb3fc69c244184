"""Index layer: what a dataset holds (members, labels, shard sample counts)."""

from fastgen_dm.index.edm import EDMIndex, scan_edm
from fastgen_dm.index.wds import (
    ByteCounter,
    ShardIndex,
    ShardReadError,
    index_shard,
    index_shards,
    load_index,
    save_index,
    split_name,
)

__all__ = [
    "EDMIndex",
    "scan_edm",
    "ByteCounter",
    "ShardIndex",
    "ShardReadError",
    "index_shard",
    "index_shards",
    "load_index",
    "save_index",
    "split_name",
]
