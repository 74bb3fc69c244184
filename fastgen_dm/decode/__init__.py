"""Decode layer: bytes to arrays, by member suffix, never through pickle unless asked by name."""

from fastgen_dm.decode.image import decode_image, open_image
from fastgen_dm.decode.table import (
    DECODERS,
    PICKLE_EXTENSIONS,
    PickleRefusedError,
    decoder_for,
)

__all__ = ["DECODERS", "PICKLE_EXTENSIONS", "PickleRefusedError", "decode_image", "decoder_for", "open_image"]
