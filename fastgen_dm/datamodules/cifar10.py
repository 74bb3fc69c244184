"""CIFAR-10 at 32x32 in EDM's zip format, with FastGen's defaults."""

from __future__ import annotations

from typing import Any

from fastgen_dm.datamodules.edm_zip import ImageFolderDataModule


class CIFAR10DataModule(ImageFolderDataModule):
    """CIFAR-10 32x32 with its 10 class labels (``fastgen prepare cifar10`` writes the zip).

    Args:
        dataset_path: The EDM zip; None reads ``$DATA_ROOT_DIR/cifar10/cifar10-32x32.zip``.
        batch_size: Samples per GPU per step.
        resolution: Image side in pixels.
        **kwargs: Every other argument of :class:`ImageFolderDataModule`.
    """

    default_dataset = "cifar10/cifar10-32x32.zip"

    def __init__(self, dataset_path: str | None = None, batch_size: int = 128, resolution: int | None = 32, **kwargs: Any) -> None:
        super().__init__(dataset_path=dataset_path, batch_size=batch_size, resolution=resolution, **kwargs)
