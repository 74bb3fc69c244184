"""One item of an EDM zip or folder, decoded: a PNG's pixels or an ``.npy`` array, as (C, H, W)."""

from __future__ import annotations

import numpy as np

from fastgen_dm.decode.image import decode_image
from fastgen_dm.decode.table import decoder_for


def decode_item(member: str, data: bytes, source: str | None = None) -> np.ndarray:
    """An EDM item as an array of shape (C, H, W): uint8 pixels, or an ``.npy`` array as stored.

    Args:
        member: The item's member name; its suffix picks the decoder.
        data: The member's bytes.
        source: The dataset, named with the member in errors; None names the member alone.
    """
    if member.lower().endswith(".npy"):
        array = decoder_for("npy")(data)
        if array.ndim != 3:
            raise ValueError(f"array has shape {array.shape}; expected (C, H, W)")
        return array
    pixels = decode_image(data, name=member if source is None else f"{source}: {member}")
    return pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W), a view
