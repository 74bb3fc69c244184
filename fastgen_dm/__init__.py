"""fastgen-dm: Lightning DataModules for training fast generative models."""

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


def __getattr__(name: str):
    # The DataModules import Lightning and torch (seconds), which `fastgen --help` and the data
    # tools' argument parsing do not need; `from fastgen_dm import DemoDataModule` imports them.
    if name in __all__:
        from fastgen_dm import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module 'fastgen_dm' has no attribute {name!r}")
