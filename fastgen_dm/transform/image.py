"""Pixel transforms shared by the image families."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from fastgen_dm.decode.encoded import EncodedJPEG
from fastgen_dm.decode.jpeg import decode_jpegs, device_decodable
from fastgen_dm.decode.image import open_image


def scale_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float32 [-1, 1]: :func:`normalize_pixels` with mean = std = 0.5.

    Its values equal EDM's ``x / 127.5 - 1`` on the CPU for all 256 inputs (a test pins this).
    """
    return normalize_pixels(pixels, (0.5,), (0.5,))


# --- raw images: mode conversion, resize + center crop, normalization ---------------------------
#
# One image, as ImageTransform turns it into a training sample (input_res=256):
#
#   bytes (any format of IMAGE_FORMATS) --open_image--> lazy PIL image, e.g. 640x480 "P"
#     --draft (JPEG only, unless exact_resize)--> decoded at 1/2, 1/4 or 1/8 size when that still
#       covers the resized size
#     --to_rgb--> "RGB" (alpha composited on white, 16-bit scaled to 8-bit)
#     --bicubic resize, short side to 256--> 341x256 --center crop--> 256x256
#     --> uint8 [3, 256, 256], or float32 in [-1, 1] through normalize_pixels


#: Modes whose alpha channel :func:`to_rgb` composites on white.
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: 16-bit modes (the three byte orders Pillow names) and 32-bit "I", scaled to 8 bits by :func:`to_rgb`.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
WHITE = (255, 255, 255)


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any Pillow mode to 8-bit "RGB", before any resizing.

    - "RGB": unchanged (no copy).
    - Transparency ("RGBA", "LA", "PA", premultiplied "RGBa"/"La", and "P"/"L"/"RGB" with a
      ``transparency`` entry, as GIFs and PNGs with a tRNS chunk have): composited on white,
      ``round((c * a + 255 * (255 - a)) / 255)``. A fully transparent pixel is white whatever
      colour it stores (those colours are often black or garbage; dropping alpha would show them).
    - 16-bit ("I;16", "I;16B", ...) and "I" (how Pillow opens some 16-bit files): scaled to 8 bits
      by ``round(v / 257)`` (65535 -> 255, 257 * k -> k), not clipped at 255 as Pillow's own
      conversion does. "I" values outside [0, 65535] raise ``ValueError``.
    - "F" (32-bit float): raises ``ValueError`` (no defined pixel range).
    - Everything else ("L", "1", "P", "CMYK", "YCbCr", ...): Pillow's ``convert("RGB")``.

    Example: an "LA" pixel (0, 128) (black, half transparent) becomes (127, 127, 127).
    """
    mode = img.mode
    has_alpha = mode in ALPHA_MODES or "transparency" in img.info
    if mode == "RGB" and not has_alpha:
        return img
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"mode 'I' image has values in [{values.min()}, {values.max()}], outside the 16-bit range "
                "[0, 65535] that is scaled to 8 bits; store it as 8- or 16-bit"
            )
        gray = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return PIL.Image.fromarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))
    if mode == "F":
        raise ValueError("mode 'F' (32-bit float) image has no defined pixel range; store it as 8- or 16-bit")
    if has_alpha:
        rgba = img.convert("RGBA")
        out = PIL.Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def resized_size(width: int, height: int, input_res: int) -> tuple[int, int]:
    """(width, height) with the short side ``input_res`` and the long side scaled and truncated.

    torchvision's ``Resize(input_res)`` rule, so crops match FastGen's:
    ``resized_size(640, 480, 256) == (341, 256)``; ``resized_size(480, 640, 256) == (256, 341)``.
    """
    if width <= height:
        return input_res, int(input_res * height / width)
    return int(input_res * width / height), input_res


def cover_size(width: int, height: int, out_height: int, out_width: int) -> tuple[int, int]:
    """(width, height) scaled to cover ``out_height`` x ``out_width``, the other side truncated.

    For a square output it is :func:`resized_size`: ``cover_size(640, 480, 256, 256) == (341, 256)``;
    for a bucket, ``cover_size(640, 480, 192, 320) == (320, 240)``.
    """
    if out_width * height >= out_height * width:  # the width binds
        return out_width, max(out_height, int(out_width * height / width))
    return max(out_width, int(out_height * width / height)), out_height


def center_crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of a centered ``size`` x ``size`` crop, rounded as torchvision's ``CenterCrop``.

    ``center_crop_offsets(341, 256, 256) == (42, 0)``.
    """
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def normalization_table(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 [C, 256]: ``(v / 255 - mean[c]) / std[c]`` for every uint8 value ``v``.

    Computed on the CPU in float32 with torchvision's operations (``ToTensor`` then
    ``Normalize``), so its values are exactly FastGen's. C is 1 for scalar mean and std, else 3.
    """
    channels = max(len(mean), len(std))
    values = torch.arange(256, dtype=torch.float32).div(255).expand(channels, 256)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1)
    return values.sub(mean_t).div(std_t).contiguous()


def normalize_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 ``(pixels / 255 - mean) / std``, on the pixels' device.

    The one normalization of raw images, on the CPU (in DataLoader workers) and after the
    transfer to the GPU. It looks values up in :func:`normalization_table` rather than computing
    them, so every device gives the same bits. (Computing them would not: CUDA divides by a CPU
    scalar as a multiplication by its reciprocal, and ``x * float32(1 / 127.5) - 1`` differs from
    the CPU's ``x / 127.5 - 1`` for 111 of the 256 values, by up to 1.2e-7.) With mean = std = 0.5
    the values equal :func:`scale_to_unit`'s on the CPU.

    Args:
        pixels: uint8 with channels third from last, e.g. [3, H, W] or [B, 3, H, W].
        mean: One value, or one per channel.
        std: One value, or one per channel.
    """
    if pixels.dtype != torch.uint8:
        raise TypeError(f"normalize_pixels expects uint8 pixels, got {pixels.dtype}")
    if pixels.device.type == "cpu":
        # the table's own float32 operations, elementwise: the same bits as a lookup, 10x faster.
        # numpy, in place: one allocation, and one thread; torch's intra-op threads made this
        # 0.4 ms step take 7 ms in a training process whose cores were busy.
        channels = max(len(mean), len(std))
        shape = (-1, 1, 1) if channels > 1 else (1,)
        out = pixels.numpy().astype(np.float32)
        np.divide(out, np.float32(255), out=out)
        np.subtract(out, np.asarray(mean, dtype=np.float32).reshape(shape), out=out)
        np.divide(out, np.asarray(std, dtype=np.float32).reshape(shape), out=out)
        return torch.from_numpy(out)
    table = normalization_table(mean, std).to(pixels.device)
    if table.shape[0] == 1:
        return table[0].index_select(0, pixels.reshape(-1).to(torch.int32)).view(pixels.shape)
    if pixels.dim() < 3 or pixels.shape[-3] != table.shape[0]:
        raise ValueError(f"per-channel mean/std have {table.shape[0]} values but pixels have shape {list(pixels.shape)}")
    out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
    for c in range(table.shape[0]):
        plane = pixels.select(-3, c)
        out.select(-3, c).copy_(table[c].index_select(0, plane.reshape(-1).to(torch.int32)).view(plane.shape))
    return out


def check_input_res(value: Any, argument: str = "input_res") -> int:
    """``value`` as an int >= 1, else a ``ValueError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument} must be an integer >= 1 (output side in pixels), got {value!r}; e.g. {argument}=512")
    return int(value)


def check_norm(value: Any, argument: str) -> tuple[float, ...]:
    """A scalar or 1/3 finite numbers as a tuple (std: none 0), else a ``ValueError`` naming ``argument``.

    ``check_norm(0.5, "norm_mean") == (0.5,)``; ``check_norm([0.48, 0.46, 0.41], "norm_mean") == (0.48, 0.46, 0.41)``.
    """
    values = (value,) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) not in (1, 3):
        raise ValueError(
            f"{argument} must be one number or 3 (one per RGB channel), got {value!r}; e.g. {argument}=0.5"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"{argument} must hold finite numbers, got {value!r}; e.g. {argument}=0.5")
    if argument.endswith("std") and any(v == 0 for v in values):
        raise ValueError(f"{argument} must not contain 0 (it divides), got {value!r}; e.g. {argument}=0.5")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ImageTransform:
    """Encoded images in a sample dict -> square RGB tensors: resize, center crop, normalize.

    A picklable per-sample step (:meth:`WDSDataModule.sample_transform`) for DataLoader workers.
    Each key of ``keys`` holds an image's bytes (any format of ``IMAGE_FORMATS``, any mode) and
    becomes uint8 [3, input_res, input_res] (``normalize=False``), or float32 in
    ``(x / 255 - mean) / std`` (``normalize=True``); other keys pass through. Damaged images
    raise (truncated: ``OSError``; empty or unknown: ``PIL.UnidentifiedImageError``; bad PNG
    CRC: ``ValueError``), which the caller counts as bad data.

    Steps: :func:`to_rgb` first (before resizing), then a bicubic resize that takes the short
    side to ``input_res`` (:func:`resized_size`), then a centered crop (:func:`center_crop_offsets`).

    Args:
        input_res: Output side in pixels (>= 1).
        mean: Normalization mean, one value or one per RGB channel (default 0.5).
        std: Normalization std, one value or one per RGB channel, no zero (default 0.5).
        normalize: True: float32 output scaled by :func:`normalize_pixels`; False: uint8 output
            (to scale after the transfer to the GPU with the same function).
        exact_resize: True: decode at full size and resize with Pillow's bicubic filter; the
            result equals ``to_rgb(img).resize(...).crop(...)`` bit for bit, and for RGB images
            torchvision's ``Resize`` + ``CenterCrop`` (FastGen's transform). False (default): the
            fast path; a JPEG is decoded by DCT scaling at the smallest of 1/2, 1/4, 1/8 of its
            size that still covers the resized size (Pillow's ``draft``), and the resize runs in
            torch's vectorized uint8 antialiased bicubic (a port of Pillow's filter). The result
            stays within PSNR 40 dB of the exact path (about 50 dB measured on photographs; about
            70 dB without draft).
        keys: Sample keys that hold images (default ``("real",)``).
        bucket_sizes: With buckets, each bucket's ``(height, width)``: a sample drawn for bucket
            ``b`` (``origin.bucket``) is resized to cover ``bucket_sizes[b]`` (:func:`cover_size`)
            and center-cropped to it, instead of the square ``input_res``. Example:
            ``((256, 256), (192, 384))``: a 640x480 image drawn for bucket 1 becomes [3, 192, 384].
        decode_on_device: Leave JPEGs that the device decodes like the CPU
            (:func:`~fastgen_dm.decode.jpeg.device_decodable`) undecoded: :meth:`image` returns
            bytes in an :class:`~fastgen_dm.decode.encoded.EncodedJPEG` and :meth:`decode_encoded`
            finishes them after the transfer. Needs ``normalize=False`` and ``exact_resize=False``.
    """

    input_res: int
    mean: float | Sequence[float] = 0.5
    std: float | Sequence[float] = 0.5
    normalize: bool = True
    exact_resize: bool = False
    keys: tuple[str, ...] = ("real",)
    decode_on_device: bool = False
    bucket_sizes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("input_res", check_input_res(self.input_res))
        set_("mean", check_norm(self.mean, "mean"))
        set_("std", check_norm(self.std, "std"))
        keys = (self.keys,) if isinstance(self.keys, str) else tuple(self.keys)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"keys must name at least one sample key, got {self.keys!r}; e.g. keys=('real',)")
        set_("keys", keys)
        if self.decode_on_device and (self.normalize or self.exact_resize):
            raise ValueError("decode_on_device=True delivers uint8 from the fast path: it needs normalize=False and exact_resize=False")
        if self.bucket_sizes is not None:
            sizes = tuple((check_input_res(int(h), "bucket height"), check_input_res(int(w), "bucket width")) for h, w in self.bucket_sizes)
            if not sizes or self.decode_on_device:
                raise ValueError(f"bucket_sizes must list (height, width) targets and needs decode_on_device=False, got {self.bucket_sizes!r}")
            set_("bucket_sizes", sizes)

    def __call__(self, sample: dict[str, Any], origin: Any = None) -> dict[str, Any]:
        bucket = getattr(origin, "bucket", None)
        size = None if bucket is None or self.bucket_sizes is None else self.bucket_sizes[bucket]
        out = dict(sample)
        for key in self.keys:
            if key in out:
                out[key] = self.image(out[key], size=size)
        return out

    def image(self, data: bytes | PIL.Image.Image, *, size: tuple[int, int] | None = None) -> torch.Tensor | EncodedJPEG:
        """One encoded image (or an unloaded PIL image) -> [3, input_res, input_res], or [3, H, W] for ``size=(H, W)``.

        With ``decode_on_device``, a JPEG the device can decode comes back as :class:`EncodedJPEG`.
        """
        encoded = isinstance(data, (bytes, bytearray, memoryview))
        img = open_image(bytes(data)) if encoded else data
        if self.decode_on_device and encoded and device_decodable(img, data):
            return EncodedJPEG(data)
        out_h, out_w = (self.input_res, self.input_res) if size is None else size
        new_w, new_h = cover_size(img.width, img.height, out_h, out_w)
        left, top = int(round((new_w - out_w) / 2.0)), int(round((new_h - out_h) / 2.0))  # torchvision's CenterCrop rounding
        if self.exact_resize:
            rgb = to_rgb(img).resize((new_w, new_h), PIL.Image.Resampling.BICUBIC)
            pixels = _chw(rgb.crop((left, top, left + out_w, top + out_h))).contiguous()
        else:
            drafted = img.draft("RGB", (new_w, new_h))  # a no-op (None) for formats other than JPEG
            pixels = _resize_uint8(_chw(to_rgb(img)), new_w, new_h, None if drafted is None else drafted[1])
            pixels = pixels[:, top : top + out_h, left : left + out_w].contiguous()
        return normalize_pixels(pixels, self.mean, self.std) if self.normalize else pixels

    def decode_encoded(self, values: Sequence[Any], device: torch.device | str) -> list[torch.Tensor | Exception]:
        """One image key's rows after the transfer: each :class:`EncodedJPEG` decoded on ``device``
        (one batched nvJPEG call on CUDA), resized and cropped there; rows the workers decoded pass
        through. A JPEG the device fails on is decoded again on the CPU (:meth:`image`); a row
        that fails there too holds its exception.

        The resize runs in float32 (antialiased bicubic, then rounded): the result stays within
        PSNR 40 dB of the exact path, like the workers' fast path.
        """
        out: list[torch.Tensor | Exception] = list(values)
        pending = [i for i, value in enumerate(values) if isinstance(value, EncodedJPEG)]
        for i, decoded in zip(pending, decode_jpegs([values[i].data for i in pending], device)):
            out[i] = self._cpu_decode(values[i].data, device) if isinstance(decoded, Exception) else self._resize_crop(decoded)
        return out

    def _cpu_decode(self, data: bytes, device: torch.device | str) -> torch.Tensor | Exception:
        try:
            return dataclasses.replace(self, decode_on_device=False).image(bytes(data)).to(device)
        except Exception as err:  # bad data: the caller counts it
            return err

    def _resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] on any device -> [3, input_res, input_res]: short side resized, center crop."""
        res = self.input_res
        new_w, new_h = resized_size(pixels.shape[2], pixels.shape[1], res)
        left, top = center_crop_offsets(new_w, new_h, res)
        if (new_w, new_h) != (pixels.shape[2], pixels.shape[1]):
            resized = F.interpolate(pixels[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True)[0]
            pixels = resized.clamp_(0, 255).round_().to(torch.uint8)
        return pixels[:, top : top + res, left : left + res].contiguous()


def _resize_uint8(pixels: torch.Tensor, new_w: int, new_h: int, box: tuple[float, ...] | None) -> torch.Tensor:
    """uint8 [3, h, w] -> [3, >= new_h, >= new_w] by antialiased bicubic, mapping ``box`` onto (new_w, new_h).

    ``box`` is the region of ``pixels`` that holds the whole image (from ``draft``), else all of
    it. A draft at scale s decodes ceil(W / s) columns whose content spans W / s of them, e.g.
    1001 -> 251 columns spanning 250.25 at s = 4: the scale factor then comes from the span (so
    no rounding shifts the image) and the extra part is left outside the crop.
    """
    height, width = pixels.shape[1:]
    span_w, span_h = (width, height) if box is None else (box[2], box[3])
    if (span_w, span_h) == (width, height):
        if (width, height) == (new_w, new_h):
            return pixels
        return F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic", antialias=True)[0]
    factors = (new_h / span_h, new_w / span_w)
    out = F.interpolate(pixels[None], scale_factor=factors, mode="bicubic", antialias=True, recompute_scale_factor=False)[0]
    assert out.shape[1] >= new_h and out.shape[2] >= new_w, (out.shape, new_w, new_h)
    return out


def _chw(img: PIL.Image.Image) -> torch.Tensor:
    """An "RGB" image as uint8 [3, H, W], a channels-last view of one copy of its pixels."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)
