"""The one list of image formats every family, tool and ``prepare`` command opens.

Pillow knows about 40 formats, and some of its plugins hand the bytes to other programs: the
EPS plugin runs Ghostscript (``gs``), which has a history of code execution on crafted files.
So only the formats below are ever parsed (:func:`fastgen_dm.decode.image.open_image` passes them
to ``PIL.Image.open(formats=...)``, whatever a member's name says), and only members with these
extensions count as images (a zip's ``.eps`` or ``.pdf`` member is not a data member).
"""

from __future__ import annotations

#: Pillow format name -> the extensions (lower case, no dot) of files in that format.
#: ``JPEG`` also opens the multi-picture JPEGs (MPO) that cameras write; ``PPM`` opens PBM, PGM
#: and PNM too.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": ("jpg", "jpeg", "jpe", "jfif"),
    "PNG": ("png",),
    "WEBP": ("webp",),
    "BMP": ("bmp",),
    "TIFF": ("tif", "tiff"),
    "GIF": ("gif",),
    "PPM": ("ppm", "pgm", "pbm", "pnm"),
}
#: Every extension of :data:`IMAGE_FORMATS`: ``{"jpg", "jpeg", ..., "png", ...}``.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(ext for exts in IMAGE_FORMATS.values() for ext in exts)


def is_image_name(name: str) -> bool:
    """Whether a file or member name ends in an extension of :data:`IMAGE_EXTENSIONS` (any case).

    ``is_image_name("00000/img00000000.PNG")`` is True; ``is_image_name("page.eps")`` is False.
    """
    base = name.rsplit("/", 1)[-1]
    return "." in base and base.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
