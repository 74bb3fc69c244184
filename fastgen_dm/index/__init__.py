"""Index layer: what a dataset holds (members, labels, shard sample counts and byte ranges)."""

from fastgen_dm.format.tar import ShardReadError, split_name
from fastgen_dm.index.build import index_shard, index_shards
from fastgen_dm.index.shard_index import KeyList, ShardIndex
from fastgen_dm.index.store import load_index, save_index
from fastgen_dm.index.zip_scan import EDMIndex, scan_edm
from fastgen_dm.storage import ByteCounter

__all__ = [
    "EDMIndex",
    "scan_edm",
    "ByteCounter",
    "KeyList",
    "ShardIndex",
    "ShardReadError",
    "index_shard",
    "index_shards",
    "load_index",
    "save_index",
    "split_name",
]
