"""Shard families of precomputed tensors, with FastGen's defaults: latents, KD pairs and KD paths.

Each is a :class:`WDSDataModule` with other default members; every argument of that class
applies. ``neg_condition`` is read once from ``neg_condition.pth`` in the first datatag's folder
when that file exists (``files_map`` points it elsewhere).
"""

from __future__ import annotations

from typing import Any

from fastgen_dm.datamodules.webdataset import WDSDataModule

_NEG = {"neg_condition": "neg_condition.pth"}


class ImageLatentDataModule(WDSDataModule):
    """Image latents and text embeddings: ``real`` = ``latent.pth``, ``condition`` = ``txt_emb.pth``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(self, datatags: list[str] | None = None, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, **kwargs)


class VideoLatentDataModule(WDSDataModule):
    """Video latents [C, T, H, W] and text embeddings (``latent.pth``, ``txt_emb.pth``).

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        num_workers: DataLoader workers per GPU (video latents are large: few workers suffice).
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(self, datatags: list[str] | None = None, batch_size: int = 2, num_workers: int | None = 2, **kwargs: Any) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, num_workers=num_workers, **kwargs)


class PairDataModule(WDSDataModule):
    """Single-step distillation pairs: ``real`` (``latent.pth``), ``noise`` (``noise.pth``), ``condition``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "noise": "noise.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(self, datatags: list[str] | None = None, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, **kwargs)


class PathDataModule(WDSDataModule):
    """Multi-step distillation paths: ``real``, ``path`` [steps, C, ...] (``path.pth``), ``condition``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "path": "path.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(self, datatags: list[str] | None = None, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, **kwargs)
