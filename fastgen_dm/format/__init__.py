"""Format layer: the byte layout of shard files (tar member headers and webdataset's sample grouping)."""

from fastgen_dm.format.tar import (
    ShardReadError,
    TarMember,
    sample_members,
    scan_members,
    split_name,
    split_sample,
    walk_members,
)

__all__ = ["ShardReadError", "TarMember", "sample_members", "scan_members", "split_name", "split_sample", "walk_members"]
