"""Format layer: what stored files look like, without I/O: tar member headers and webdataset's
sample grouping, and the image formats the package opens."""

from fastgen_dm.format.image import IMAGE_EXTENSIONS, IMAGE_FORMATS, is_image_name
from fastgen_dm.format.tar import (
    ShardReadError,
    TarMember,
    sample_members,
    scan_members,
    split_name,
    split_sample,
    walk_members,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "ShardReadError",
    "TarMember",
    "is_image_name",
    "sample_members",
    "scan_members",
    "split_name",
    "split_sample",
    "walk_members",
]
