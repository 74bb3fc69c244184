"""Transform layer: per-family array operations (flip, crop, resize, scaling)."""

from fastgen_dm.transform.image import scale_to_unit

__all__ = ["scale_to_unit"]
