"""Data preparation: write datasets in the formats the DataModules read."""

from fastgen_dm.prepare.cifar10 import convert_cifar10, prepare_cifar10
from fastgen_dm.prepare.demo import write_demo_latent_zip, write_demo_zip
from fastgen_dm.prepare.demo_wds import DemoKind, MediaKind, write_demo_media_shards, write_demo_shards
from fastgen_dm.prepare.edm_zip import EDMZipWriter, member_name, png_bytes
from fastgen_dm.prepare.imagenet import center_crop_dhariwal, center_crop_edm, convert_imagenet, prepare_imagenet_64

__all__ = [
    "DemoKind",
    "EDMZipWriter",
    "MediaKind",
    "center_crop_dhariwal",
    "center_crop_edm",
    "convert_cifar10",
    "convert_imagenet",
    "member_name",
    "png_bytes",
    "prepare_cifar10",
    "prepare_imagenet_64",
    "write_demo_latent_zip",
    "write_demo_media_shards",
    "write_demo_shards",
    "write_demo_zip",
]
