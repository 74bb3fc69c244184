"""CIFAR-10 at 32x32 in EDM's zip format, with FastGen's defaults."""

from __future__ import annotations

from typing import Any

from fastgen_dm.datamodules.image_folder import ImageFolderDataModule
from fastgen_dm.storage import exists


class CIFAR10DataModule(ImageFolderDataModule):
    """CIFAR-10 32x32 with its 10 class labels (``fastgen prepare cifar10`` writes the zip).

    When the zip is missing and no ``s3_path`` is given, ``prepare_data`` writes it (once per
    node): it downloads the official archive beside it, checks its MD5 and converts it as EDM does.

    Args:
        dataset_path: The EDM zip; None reads ``$DATA_ROOT_DIR/cifar10/cifar10-32x32.zip``.
        batch_size: Samples per GPU per step.
        resolution: Image side in pixels.
        **kwargs: Every other argument of :class:`ImageFolderDataModule`.
    """

    default_dataset = "cifar10/cifar10-32x32.zip"

    def __init__(self, dataset_path: str | None = None, batch_size: int = 128, resolution: int | None = 32, **kwargs: Any) -> None:
        super().__init__(dataset_path=dataset_path, batch_size=batch_size, resolution=resolution, **kwargs)

    def prepare_data(self) -> None:
        """Write the zip from the official archive when it is missing locally, then as the base class."""
        path = self.dataset_path.removeprefix("file://")
        if self.s3_path is None and "://" not in path and not exists(path, self.storage_options):
            from fastgen_dm.prepare.cifar10 import prepare_cifar10

            prepare_cifar10(path)
        super().prepare_data()
