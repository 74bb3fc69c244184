"""The one list of image formats every family, tool and ``prepare`` command opens.

Pillow knows about 40 formats, and some of its plugins hand the bytes to other programs: the
EPS plugin runs Ghostscript (``gs``), which has a history of code execution on crafted files.
So only the formats below are ever parsed (:func:`fastgen_dm.decode.image.open_image` passes them
to ``PIL.Image.open(formats=...)``, whatever a member's name says), and only members with these
extensions count as images (a zip's ``.eps`` or ``.pdf`` member is not a data member).
"""

from __future__ import annotations

import io
import warnings

import PIL.Image

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


def allowed_formats() -> list[str]:
    """The formats of :data:`IMAGE_FORMATS` this Pillow build can open (what ``PIL.Image.open(formats=...)`` gets)."""
    PIL.Image.init()  # registers every plugin once; later calls return at once
    return [f for f in IMAGE_FORMATS if f in PIL.Image.OPEN]  # WEBP is missing from some Pillow builds


def image_size(head: bytes, *, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image from the first bytes of its file: the header only, no pixels.

    The same formats as :func:`fastgen_dm.decode.image.open_image` (only ``IMAGE_FORMATS`` are
    parsed), but nothing past the header is checked (no PNG checksums): the pixels are judged when
    decoded. A header longer than ``head`` raises, so callers read more and ask again.

    Example: ``image_size(jpeg_bytes[:4096])`` -> ``(640, 480)`` for a 640x480 JPEG.

    Raises:
        PIL.UnidentifiedImageError: Not an image of an allowed format, or its header is cut short.
        OSError, SyntaxError: A damaged or cut header (Pillow's errors).
        ValueError: Over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow refuses the header).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of the cut-off rest, which is the point
            with PIL.Image.open(io.BytesIO(head), formats=allowed_formats()) as img:
                return int(img.width), int(img.height)
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{name or 'image'}: {err}") from None
