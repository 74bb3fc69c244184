"""The one image opener: every family, tool and ``prepare`` command parses image bytes here.

Three rules hold for every image, whatever its member's name says:

- Only the formats of :data:`~fastgen_dm.format.image.IMAGE_FORMATS` are parsed (Pillow's
  ``formats=``), so EPS, PS and PDF bytes never reach the plugins that start Ghostscript.
- Pillow's decompression-bomb limit stays on: an image of more than ``PIL.Image.MAX_IMAGE_PIXELS``
  pixels (Pillow's default, about 89 million) is refused from its header, before its pixels are
  allocated. Raise that attribute yourself for larger images.
- Errors name the image (``name``: the dataset and member), not an anonymous ``BytesIO``.
"""

from __future__ import annotations

import io
import os

import numpy as np
import PIL.Image

from fastgen_dm.format.image import allowed_formats

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def open_image(data: bytes | str | os.PathLike[str], *, name: str | None = None) -> PIL.Image.Image:
    """An image with its header read and its pixels not yet decoded, in any mode.

    Decoding waits for the first pixel access, so a caller may still ask a JPEG for a reduced
    size first (``img.draft``). The format is found from the bytes, not from a member's suffix.
    PNG chunk checksums are verified first: Pillow skips those of the pixel data (IDAT) when it
    decodes, so a PNG whose pixel chunks fail their CRC would otherwise decode silently.

    Args:
        data: The encoded image, or the path of a local file that holds it (read as Pillow
            needs it, not at once).
        name: What the image is, for errors, e.g. ``"data/cifar10.zip: 00000/img00000003.png"``;
            None names the path, or nothing (when the caller names the sample itself).

    Raises:
        PIL.UnidentifiedImageError: Empty bytes, or a format outside ``IMAGE_FORMATS`` (EPS, PDF, ...).
        PIL.Image.DecompressionBombError: More than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels.
        ValueError: A PNG chunk whose CRC does not match.
        OSError: Other damage Pillow finds in the header (truncated or pixel data damage is
            raised later, when the pixels are decoded).
    """
    path = os.fspath(data) if isinstance(data, (str, os.PathLike)) else None
    name = name or path
    prefix = f"{name}: " if name else ""
    if path is None:
        head = bytes(data[:8])
    else:
        with open(path, "rb") as f:
            head = f.read(8)

    def source() -> str | io.BytesIO:
        return path if path is not None else io.BytesIO(data)

    formats = allowed_formats()
    try:
        if head == _PNG_SIGNATURE:
            try:
                with PIL.Image.open(source(), formats=["PNG"]) as probe:
                    probe.verify()  # walks every chunk and checks its CRC
            except SyntaxError as err:  # Pillow reports a bad chunk CRC as SyntaxError
                raise ValueError(f"{prefix}broken PNG: {err}") from err
        img = PIL.Image.open(source(), formats=formats)
    except PIL.UnidentifiedImageError:
        what = f" {name!r}" if name else ""
        raise PIL.UnidentifiedImageError(
            f"cannot identify image file{what}: not an image in an allowed format ({', '.join(formats)}); "
            "other formats (EPS, PDF, ...) are never opened"
        ) from None
    except PIL.Image.DecompressionBombError as err:
        raise PIL.Image.DecompressionBombError(f"{prefix}{err}") from None
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:  # Pillow only warns up to twice the limit
        img.close()
        raise PIL.Image.DecompressionBombError(
            f"{prefix}{img.width}x{img.height} = {img.width * img.height} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS "
            f"= {limit} (a decompression bomb?); raise PIL.Image.MAX_IMAGE_PIXELS if such images are expected"
        )
    return img


def decode_image(data: bytes, *, name: str | None = None) -> np.ndarray:
    """An image as stored (no mode conversion), uint8 of shape (H, W, C) with C >= 1.

    Args:
        data: The encoded image.
        name: What the bytes are, for errors (see :func:`open_image`).

    Raises:
        OSError: Not an image of an allowed format, or damaged (see :func:`open_image`).
        PIL.Image.DecompressionBombError: More than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels.
        ValueError: A bad PNG CRC, or pixels of more than 8 bits.
    """
    prefix = f"{name}: " if name else ""
    with open_image(data, name=name) as img:
        try:
            array = np.asarray(img)
        except OSError as err:  # truncated or damaged pixel data
            raise OSError(f"{prefix}{err}") from err
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.dtype != np.uint8:
        raise ValueError(f"{prefix}image has dtype {array.dtype}; expected 8-bit pixels")
    return array
