"""ImageNet in EDM's zip format: 64x64 pixels (EDM and EDMv2 crops) and 256x256 SD-VAE latents."""

from __future__ import annotations

from typing import Any

from fastgen_dm.datamodules.image_folder import ImageFolderDataModule


class ImageNet64DataModule(ImageFolderDataModule):
    """ImageNet 64x64, EDM center crop + Lanczos (``fastgen prepare imagenet-64``).

    Args:
        dataset_path: The EDM zip; None reads ``$DATA_ROOT_DIR/imagenet-64/imagenet-64x64.zip``.
        resolution: Image side in pixels.
        **kwargs: Every other argument of :class:`ImageFolderDataModule`.
    """

    default_dataset = "imagenet-64/imagenet-64x64.zip"

    def __init__(self, dataset_path: str | None = None, resolution: int | None = 64, **kwargs: Any) -> None:
        super().__init__(dataset_path=dataset_path, resolution=resolution, **kwargs)

    def _missing_message(self) -> str:
        # ImageNet cannot be downloaded for the user: say how to make the zips from their copy.
        return (
            f"dataset_path {self.dataset_path!r} does not exist, and ImageNet cannot be downloaded for you; "
            "write it from your ImageNet copy with `fastgen prepare imagenet-64 --imagenet-source DIR` "
            "(DIR holds ILSVRC/Data/CLS-LOC/train; add --output-dir for a data root other than $DATA_ROOT_DIR), "
            "or pass s3_path to fetch an existing zip"
        )


class ImageNet64EDMv2DataModule(ImageNet64DataModule):
    """ImageNet 64x64 with the ADM/EDM2 ``center-crop-dhariwal`` crop.

    Args:
        dataset_path: The EDM zip; None reads ``$DATA_ROOT_DIR/imagenet-64/imagenet-64x64-edmv2.zip``.
        **kwargs: Every other argument of :class:`ImageFolderDataModule`.
    """

    default_dataset = "imagenet-64/imagenet-64x64-edmv2.zip"

    def __init__(self, dataset_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(dataset_path=dataset_path, **kwargs)


class ImageNet256DataModule(ImageFolderDataModule):
    """ImageNet 256x256 as Stable Diffusion VAE latents: ``real`` is float32 [B, 8, 32, 32].

    Channels 0-3 are the posterior mean and 4-7 its std; training code samples
    ``mean + std * eps`` and scales by 0.18215. Latents are delivered as stored.

    Args:
        dataset_path: The EDM zip; None reads ``$DATA_ROOT_DIR/imagenet-256/imagenet_256_sd.zip``.
        **kwargs: Every other argument of :class:`ImageFolderDataModule`.
    """

    default_dataset = "imagenet-256/imagenet_256_sd.zip"

    def __init__(self, dataset_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(dataset_path=dataset_path, **kwargs)
