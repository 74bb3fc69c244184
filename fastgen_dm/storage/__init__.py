"""Storage layer: bytes by URL through fsspec (local paths, ``file://``, ``s3://``, ``gs://``, ...), and exact byte ranges of them."""

from fastgen_dm.storage.atomic import AtomicPath, write_atomic
from fastgen_dm.storage.bounded import (
    DEFAULT_MAX_MEMBER_BYTES,
    UnsafeMemberError,
    check_max_member_bytes,
    read_folder_member,
    read_zip_member,
)
from fastgen_dm.storage.fs import S3_CONFIG_DEFAULTS, S3_RETRIES, StorageReadError, check_storage_options, exists, fetch_once, is_local, open_url, resolve_fs
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
from fastgen_dm.storage.secrets import REDACTED, is_credential_key, redact_storage_options, without_redacted

__all__ = [
    "AtomicPath",
    "write_atomic",
    "S3_CONFIG_DEFAULTS",
    "S3_RETRIES",
    "StorageReadError",
    "check_storage_options",
    "DATATAG_PREFIX",
    "DEFAULT_MAX_MEMBER_BYTES",
    "REDACTED",
    "BlockReader",
    "ByteCounter",
    "RangeSource",
    "ShardFile",
    "UnsafeMemberError",
    "check_max_member_bytes",
    "exists",
    "fetch_once",
    "fit_shard_count",
    "is_credential_key",
    "is_local",
    "list_shards",
    "open_url",
    "parse_datatag",
    "read_folder_member",
    "read_zip_member",
    "redact_storage_options",
    "resolve_fs",
    "select_shards",
    "shard_sort_key",
    "without_redacted",
]
