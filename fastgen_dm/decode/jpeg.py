"""JPEG decoding on a device: nvJPEG on CUDA, through torchcodec (or torchvision, see :func:`jpeg_decoder`).

A DataLoader worker only reads the JPEG's header (:func:`device_decodable`) and passes the
bytes on in an :class:`~fastgen_dm.decode.encoded.EncodedJPEG`; after the batch reaches the GPU, :func:`decode_jpegs` decodes
the whole batch in one nvJPEG call. On a CPU device the same call runs libjpeg-turbo, which the
tests use to check this path against the workers' Pillow decode.

Only JPEGs that decode the same way on both sides go to the device: 8-bit baseline JPEGs in
"L" or "RGB" mode, complete (ending in the EOI marker) and without an EXIF rotation (torchcodec
applies EXIF orientation, the CPU path does not, as in FastGen). Everything else (PNG, CMYK,
progressive, truncated, rotated) is decoded by the workers as before.
"""

from __future__ import annotations

from typing import Callable, Sequence

import PIL.Image
import torch

#: JPEG end-of-image marker: a file that does not end with it is truncated (or has trailing bytes).
_EOI = b"\xff\xd9"
_EXIF_ORIENTATION = 0x0112


def device_decodable(img: PIL.Image.Image, data: bytes) -> bool:
    """True when ``img`` (opened from ``data``, pixels not decoded) can be decoded on the device.

    Baseline 8-bit JPEG, mode "L" or "RGB", ending in EOI, no EXIF orientation other than 1.
    """
    if img.format != "JPEG" or img.mode not in ("L", "RGB") or img.info.get("progressive") or bytes(data[-2:]) != _EOI:
        return False
    return "exif" not in img.info or img.getexif().get(_EXIF_ORIENTATION, 1) == 1


JPEGDecoder = Callable[[list[torch.Tensor], "torch.device | str"], list[torch.Tensor]]


def jpeg_decoder() -> tuple[str, JPEGDecoder]:
    """The library and its batched ``(encoded uint8 tensors on the CPU, device) -> RGB images on device``.

    torchcodec's ``decode_jpeg`` (torchcodec >= 0.16); on older stacks, torchvision's, which
    it replaces (the same nvJPEG on CUDA, and no EXIF rotation either).
    """
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as decode_jpeg_torchvision

        return "torchvision", lambda sources, device: decode_jpeg_torchvision(sources, mode=ImageReadMode.RGB, device=device)
    return "torchcodec", lambda sources, device: decode_jpeg(sources, mode="RGB", device=device)


def decode_jpegs(datas: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor | Exception]:
    """Decode JPEGs on ``device``: uint8 [3, H, W] RGB each, or the exception that image raised.

    One batched call first (nvJPEG's fast path); if any image fails, each is decoded alone, so
    one bad image costs only its own result.
    """
    _, decode = jpeg_decoder()
    sources = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        return list(decode(sources, device))
    except (RuntimeError, ValueError):
        pass
    results: list[torch.Tensor | Exception] = []
    for source in sources:
        try:
            results.append(decode([source], device)[0])
        except (RuntimeError, ValueError) as err:
            results.append(err)
    return results
