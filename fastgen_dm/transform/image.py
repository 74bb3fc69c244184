"""Pixel transforms shared by the image families."""

from __future__ import annotations

import numpy as np
import torch


def hwc_to_chw(array: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (C, H, W), a view."""
    return array.transpose(2, 0, 1)


def scale_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float32 [-1, 1], exactly as EDM does it.

    The one formula used on the CPU and after transfer to the device, so both paths give
    bit-identical values.
    """
    return pixels.to(torch.float32) / 127.5 - 1
