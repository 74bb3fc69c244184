"""fastgen-dm: Lightning DataModules for training fast generative models."""

from fastgen_dm.datamodules import (
    CIFAR10DataModule,
    DemoDataModule,
    ImageFolderDataModule,
    ImageLatentDataModule,
    ImageNet64DataModule,
    ImageNet64EDMv2DataModule,
    ImageNet256DataModule,
    ImageWDSDataModule,
    PairDataModule,
    PathDataModule,
    VideoLatentDataModule,
    VideoWDSDataModule,
    WDSDataModule,
)

__version__ = "0.1.0"

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
    "VideoLatentDataModule",
    "VideoWDSDataModule",
    "WDSDataModule",
    "__version__",
]
