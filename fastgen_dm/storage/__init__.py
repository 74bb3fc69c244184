"""Storage layer: bytes by URL through fsspec (local paths, ``file://``, ``s3://``, ``gs://``, ...), and exact byte ranges of them."""

from fastgen_dm.storage.fs import exists, fetch_once, is_local, open_url, resolve_fs
from fastgen_dm.storage.ranges import BlockReader, ByteCounter, RangeSource
from fastgen_dm.storage.shards import (
    DATATAG_PREFIX,
    ShardFile,
    fit_shard_count,
    list_shards,
    parse_datatag,
    select_shards,
    shard_sort_key,
)

__all__ = [
    "DATATAG_PREFIX",
    "BlockReader",
    "ByteCounter",
    "RangeSource",
    "ShardFile",
    "exists",
    "fetch_once",
    "fit_shard_count",
    "is_local",
    "list_shards",
    "open_url",
    "parse_datatag",
    "resolve_fs",
    "select_shards",
    "shard_sort_key",
]
