"""Transform layer: per-family array operations (flip, crop, resize, scaling)."""

from fastgen_dm.transform.image import hwc_to_chw, scale_to_unit

__all__ = ["hwc_to_chw", "scale_to_unit"]
