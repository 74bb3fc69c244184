"""Batch dictionaries, in FastGen's layout.

Zip family: ``real`` [B, C, H, W] (uint8 pixels until scaled, float latents as stored),
``condition`` float32 one-hot [B, num_classes] (zeros [B, 0] without labels),
``neg_condition`` zeros of the same shape, ``idx`` int64 [B].
"""

from __future__ import annotations

import numpy as np
import torch


def one_hot(labels: np.ndarray | None, num_classes: int, batch: int) -> torch.Tensor:
    """float32 [batch, num_classes]; ``labels`` None gives zeros [batch, num_classes]."""
    out = torch.zeros(batch, num_classes, dtype=torch.float32)
    if labels is not None and num_classes:
        out[torch.arange(batch), torch.from_numpy(labels)] = 1.0
    return out


def zip_batch(real: np.ndarray, labels: np.ndarray | None, num_classes: int, idx: np.ndarray) -> dict[str, torch.Tensor]:
    condition = one_hot(labels, num_classes, len(idx))
    return {
        "real": torch.from_numpy(real),
        "condition": condition,
        "neg_condition": torch.zeros_like(condition),
        "idx": torch.from_numpy(np.asarray(idx, dtype=np.int64)),
    }
