"""Latents cut to their bucket: the center of ``(H, W)`` and the first ``T`` frames.

A latent cannot be resized like an image (its channels are not pixels), so a bucket of latents
holds those at least its size, center-cropped to it: ``(C, H, W)`` for image latents, ``(C, T,
H, W)`` for video latents. The plan puts each latent in the largest bucket it covers; one
smaller than every bucket of its aspect ratio is bad data (counted and skipped by the reader).

Example: buckets ``((32, 32), (24, 48))``; a ``(4, 40, 40)`` latent drawn for bucket 0 ->
its ``[:, 4:36, 4:36]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LatentBucketCrop:
    """Center-crops each sample's ``keys`` latents to its bucket's shape (picklable, for the workers).

    Args:
        shapes: Each bucket's ``(H, W)`` or ``(H, W, T)`` (a row of the targets).
        keys: Batch keys holding the latents (the bucketed member).
    """

    shapes: tuple[tuple[int, ...], ...]
    keys: tuple[str, ...] = ("real",)

    def __call__(self, sample: dict[str, Any], origin: Any = None) -> dict[str, Any]:
        bucket = getattr(origin, "bucket", None)  # a SampleOrigin (the batch layer's) or None
        if bucket is None:
            return sample
        target = self.shapes[bucket]
        for key in self.keys:
            if key in sample:
                sample[key] = crop_to(sample[key], target, key)
        return sample


def crop_to(latent: torch.Tensor, target: tuple[int, ...], key: str = "real") -> torch.Tensor:
    """``latent`` (``(..., H, W)``, or ``(C, T, H, W)`` when ``target`` has frames) cut to ``target``.

    Raises:
        ValueError: Not a tensor of enough dimensions, or smaller than ``target`` (bad data).
    """
    height, width = target[0], target[1]
    frames = target[2] if len(target) > 2 else None
    if not isinstance(latent, torch.Tensor) or latent.ndim < (4 if frames else 2):
        raise ValueError(f"{key!r} is not a latent of {'(C, T, H, W)' if frames else '(..., H, W)'} for bucket {target}: {type(latent).__name__} {getattr(latent, 'shape', '')}")
    h, w = latent.shape[-2], latent.shape[-1]
    t = latent.shape[-3] if frames else None
    if h < height or w < width or (frames and t is not None and t < frames):
        raise ValueError(f"{key!r} of shape {tuple(latent.shape)} is smaller than its bucket {target}; latents are cropped, never enlarged")
    top, left = (h - height) // 2, (w - width) // 2
    latent = latent[..., top : top + height, left : left + width]
    if frames:
        latent = latent[..., :frames, :, :]
    return latent.contiguous()
