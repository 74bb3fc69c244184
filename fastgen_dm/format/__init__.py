"""Format layer: what the stored files look like (no I/O): the image formats the package opens."""

from fastgen_dm.format.image import IMAGE_EXTENSIONS, IMAGE_FORMATS, is_image_name

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_FORMATS", "is_image_name"]
