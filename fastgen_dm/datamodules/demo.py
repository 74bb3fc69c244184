"""A built-in demo dataset: drawn shapes per class, generated locally (no network)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastgen_dm.datamodules.image_folder import ImageFolderDataModule
from fastgen_dm.prepare import write_demo_zip
from fastgen_dm.storage import exists

logger = logging.getLogger(__name__)


class DemoDataModule(ImageFolderDataModule):
    """A small labelled 32x32 dataset in the EDM zip format, written by ``prepare_data`` if missing.

    The same files as ``fastgen prepare demo``: ``num_images`` images of ``num_classes`` shape
    kinds, deterministic for ``demo_seed``.

    Args:
        dataset_path: The zip; None uses ``$DATA_ROOT_DIR/demo/demo-32x32.zip``.
        batch_size: Samples per GPU per step.
        resolution: Image side in pixels.
        num_images: Images written when the zip is created.
        num_classes: Classes written when the zip is created.
        demo_seed: Seed of the drawing.
        **kwargs: Every other argument of :class:`ImageFolderDataModule`.
    """

    default_dataset = "demo/demo-32x32.zip"

    def __init__(
        self,
        dataset_path: str | None = None,
        batch_size: int = 64,
        resolution: int | None = 32,
        num_images: int = 2048,
        num_classes: int = 4,
        demo_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset_path=dataset_path, batch_size=batch_size, resolution=resolution, **kwargs)
        self.num_images = num_images
        self.num_classes = num_classes
        self.demo_seed = demo_seed

    def prepare_data(self) -> None:
        if not exists(self.dataset_path, self.storage_options):
            write_demo_zip(
                Path(self.dataset_path),
                num_images=self.num_images,
                resolution=self.resolution or 32,
                num_classes=self.num_classes,
                seed=self.demo_seed,
            )
            logger.info("wrote the demo dataset (%d images) to %s", self.num_images, Path(self.dataset_path).resolve())
        super().prepare_data()
