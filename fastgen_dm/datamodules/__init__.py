"""DataModule layer: one LightningDataModule per family."""

from fastgen_dm.datamodules.base import PlannedDataModule
from fastgen_dm.datamodules.cifar10 import CIFAR10DataModule
from fastgen_dm.datamodules.demo import DemoDataModule
from fastgen_dm.datamodules.image_folder import ImageFolderDataModule
from fastgen_dm.datamodules.imagenet import ImageNet64DataModule, ImageNet64EDMv2DataModule, ImageNet256DataModule
from fastgen_dm.datamodules.images import ImageWDSDataModule
from fastgen_dm.datamodules.latents import ImageLatentDataModule, PairDataModule, PathDataModule, VideoLatentDataModule
from fastgen_dm.datamodules.videos import VideoWDSDataModule
from fastgen_dm.datamodules.webdataset import WDSDataModule

__all__ = [
    "CIFAR10DataModule",
    "DemoDataModule",
    "ImageFolderDataModule",
    "ImageLatentDataModule",
    "ImageNet256DataModule",
    "ImageNet64DataModule",
    "ImageNet64EDMv2DataModule",
    "ImageWDSDataModule",
    "PairDataModule",
    "PathDataModule",
    "PlannedDataModule",
    "VideoLatentDataModule",
    "VideoWDSDataModule",
    "WDSDataModule",
]
