"""Pictures of batches: tensors in, PIL images out (no files, no state, no matplotlib).

Layouts, all with ``PAD`` pixels between and around cells and tiles scaled up by an integer
factor (nearest neighbour) so the smaller side is at least ``min_tile`` pixels:

- :func:`image_grid`: N images [C, H, W] in a near-square grid, a label band under each tile.
  16 tiles of 32x32 at ``min_tile=64``: 4x4 tiles of 64x64, 266 x 314 pixels (:func:`grid_size`).
- :func:`frame_strips`: one row per clip, up to ``max_frames`` frames spread over its length,
  the clip's label in a band above the row.
- :func:`channel_rows`: one row per item (per frame of a video latent), one tile per channel,
  each channel scaled to [0, 255] by its min and max over everything shown.
- :func:`histogram`: bars of the value counts, with min, max, mean and std written on top.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

PAD = 2  # pixels between cells and around the picture
LABEL_H = 12  # height of a text band, in pixels (the default font is about 11 pixels high)
BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)
HIST_H = 120  # height of the histogram panel, in pixels
HIST_BINS = 64


def _font() -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    return PIL.ImageFont.load_default()


def fit_text(draw: PIL.ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` on one line, cut with "..." to at most ``width`` pixels."""
    text = " ".join(str(text).split())
    font = _font()
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels as uint8: uint8 as is; floats taken as [-1, 1] (the batches' range) and clamped."""
    if x.dtype == torch.uint8:
        return x
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def unnormalize(x: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> torch.Tensor:
    """Pixels normalized as ``(p - mean) / std`` (p in [0, 1], one value or one per channel) back to [-1, 1].

    Example: with mean 0.5 and std 0.5 the values are already in [-1, 1] and come back unchanged.
    """
    x = x.detach().float().cpu()
    shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel: [B, C, ...]
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(shape if torch.as_tensor(mean).numel() > 1 else ())
    s = torch.as_tensor(std, dtype=torch.float32).reshape(shape if torch.as_tensor(std).numel() > 1 else ())
    return (x * s + m) * 2 - 1


def looks_like_pixels(x: torch.Tensor) -> bool:
    """Whether ``x`` [B, C, ...] holds pictures: 1 or 3 channels, uint8 or floats within [-1, 1]."""
    if x.ndim < 4 or x.shape[1] not in (1, 3):
        return False
    if x.dtype == torch.uint8:
        return True
    if not x.is_floating_point() or x.numel() == 0:
        return False
    return bool(x.min() >= -1.001 and x.max() <= 1.001)


def scale_for(height: int, width: int, min_tile: int) -> int:
    """Integer upscale so the smaller side reaches ``min_tile``: ``scale_for(32, 32, 64) == 2``."""
    return max(1, math.ceil(min_tile / max(1, min(height, width))))


def _tile(chw: np.ndarray, scale: int) -> PIL.Image.Image:
    """uint8 [C, H, W] (C = 1 or 3) -> an RGB image scaled by ``scale``."""
    hwc = np.ascontiguousarray(np.repeat(chw, 3, axis=0) if chw.shape[0] == 1 else chw[:3]).transpose(1, 2, 0)
    image = PIL.Image.fromarray(np.ascontiguousarray(hwc), "RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), PIL.Image.Resampling.NEAREST)
    return image


def grid_size(n: int, tile_w: int, tile_h: int, columns: int | None = None) -> tuple[int, int, int, int]:
    """(columns, rows, width, height) of :func:`image_grid` for ``n`` tiles of ``tile_w x tile_h``.

    Example: ``grid_size(16, 64, 64) == (4, 4, 266, 314)``.
    """
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    cols = min(cols, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    return cols, rows, cols * (tile_w + PAD) + PAD, rows * (tile_h + LABEL_H + PAD) + PAD


def image_grid(images: torch.Tensor, labels: Sequence[str] | None = None, columns: int | None = None, min_tile: int = 64) -> PIL.Image.Image:
    """Images [N, C, H, W] (uint8, or floats in [-1, 1]; C = 1 or 3) as a grid, a label under each.

    Size: :func:`grid_size` of the scaled tiles.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid takes images of shape [N, 1 or 3, H, W], got {list(images.shape)}")
    pixels = to_uint8(images).cpu().numpy()
    n, _, h, w = pixels.shape
    scale = scale_for(h, w, min_tile)
    tw, th = w * scale, h * scale
    cols, rows, width, height = grid_size(n, tw, th, columns)
    canvas = PIL.Image.new("RGB", (width, height), BACKGROUND)
    draw = PIL.ImageDraw.Draw(canvas)
    for k in range(n):
        x, y = PAD + (k % cols) * (tw + PAD), PAD + (k // cols) * (th + LABEL_H + PAD)
        canvas.paste(_tile(pixels[k], scale), (x, y))
        if labels is not None and k < len(labels):
            draw.text((x, y + th), fit_text(draw, labels[k], tw), fill=TEXT, font=_font())
    return canvas


def _rows_canvas(rows: Sequence[Sequence[PIL.Image.Image]], labels: Sequence[str] | None) -> PIL.Image.Image:
    """Rows of equally sized tiles, each row under a label band."""
    tw, th = rows[0][0].size
    cols = max(len(r) for r in rows)
    width = cols * (tw + PAD) + PAD
    canvas = PIL.Image.new("RGB", (width, len(rows) * (LABEL_H + th + PAD) + PAD), BACKGROUND)
    draw = PIL.ImageDraw.Draw(canvas)
    for r, tiles in enumerate(rows):
        y = PAD + r * (LABEL_H + th + PAD)
        if labels is not None and r < len(labels):
            draw.text((PAD, y), fit_text(draw, labels[r], width - 2 * PAD), fill=TEXT, font=_font())
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (PAD + c * (tw + PAD), y + LABEL_H))
    return canvas


def rows_size(num_rows: int, num_cols: int, tile_w: int, tile_h: int) -> tuple[int, int]:
    """(width, height) of :func:`frame_strips` and :func:`channel_rows`.

    Example: 16 items of 4 channels of 64x64 tiles: ``rows_size(16, 4, 64, 64) == (266, 1250)``.
    """
    return num_cols * (tile_w + PAD) + PAD, num_rows * (LABEL_H + tile_h + PAD) + PAD


def frame_indices(length: int, max_frames: int) -> list[int]:
    """Up to ``max_frames`` frame indices spread over ``length``: ``frame_indices(20, 5) == [0, 5, 10, 14, 19]``."""
    if length <= max_frames:
        return list(range(length))
    return [int(round(i)) for i in np.linspace(0, length - 1, max_frames)]


def frame_strips(clips: torch.Tensor, labels: Sequence[str] | None = None, max_frames: int = 8, min_tile: int = 64) -> PIL.Image.Image:
    """Clips [N, C, T, H, W] (uint8, or floats in [-1, 1]; C = 1 or 3): one row of frames per clip."""
    if clips.ndim != 5 or clips.shape[1] not in (1, 3):
        raise ValueError(f"frame_strips takes clips of shape [N, 1 or 3, T, H, W], got {list(clips.shape)}")
    pixels = to_uint8(clips).cpu().numpy()
    scale = scale_for(pixels.shape[3], pixels.shape[4], min_tile)
    frames = frame_indices(pixels.shape[2], max_frames)
    rows = [[_tile(clip[:, t], scale) for t in frames] for clip in pixels]
    return _rows_canvas(rows, labels)


def video_frames(clips: torch.Tensor, labels: Sequence[str] | None = None, columns: int | None = None, min_tile: int = 64) -> list[PIL.Image.Image]:
    """One :func:`image_grid` of the clips [N, C, T, H, W] per time step (for an animated GIF)."""
    return [image_grid(clips[:, :, t], labels, columns, min_tile) for t in range(clips.shape[2])]


def normalize_channels(latents: torch.Tensor) -> np.ndarray:
    """[N, C, ...] floats -> uint8, each channel scaled by its min and max over all items (constant: 128)."""
    x = latents.detach().float().cpu()
    dims = [d for d in range(x.ndim) if d != 1]
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-12)
    scaled = torch.where(hi > lo, (x - lo) / span * 255, torch.full_like(x, 128.0))
    return scaled.round().clamp(0, 255).to(torch.uint8).numpy()


def channel_rows(latents: torch.Tensor, labels: Sequence[str] | None = None, max_frames: int = 8, min_tile: int = 64) -> PIL.Image.Image:
    """Latents [N, C, H, W] or [N, C, T, H, W]: a row per item (and frame), a grayscale tile per channel.

    A 5-D latent gets one row per frame, up to ``max_frames`` frames spread over T. Row labels
    get ``" | t=<frame>"`` (5-D) and ``" | channels 0-<C-1>"`` appended.
    """
    if latents.ndim not in (4, 5):
        raise ValueError(f"channel_rows takes latents of shape [N, C, H, W] or [N, C, T, H, W], got {list(latents.shape)}")
    gray = normalize_channels(latents)
    n, c = gray.shape[:2]
    frames = frame_indices(gray.shape[2], max_frames) if gray.ndim == 5 else [None]
    scale = scale_for(gray.shape[-2], gray.shape[-1], min_tile)
    suffix = f" | channels 0-{c - 1}" if c > 1 else ""
    rows, names = [], []
    for i in range(n):
        name = labels[i] if labels is not None and i < len(labels) else f"item {i}"
        for t in frames:
            item = gray[i] if t is None else gray[i, :, t]
            rows.append([_tile(item[j][None], scale) for j in range(c)])
            names.append(f"{name}{'' if t is None else f' | t={t}'}{suffix}")
    return _rows_canvas(rows, names)


def histogram(values: torch.Tensor, width: int, height: int = HIST_H, bins: int = HIST_BINS) -> PIL.Image.Image:
    """Counts of ``values`` in ``bins`` equal bins between their min and max, as bars, with statistics on top."""
    x = values.detach().float().cpu().flatten()
    x = x[torch.isfinite(x)]
    canvas = PIL.Image.new("RGB", (width, height), BACKGROUND)
    draw = PIL.ImageDraw.Draw(canvas)
    if x.numel() == 0:
        draw.text((PAD, PAD), "no finite values", fill=TEXT, font=_font())
        return canvas
    lo, hi = float(x.min()), float(x.max())
    stats = f"min {lo:.3g}  max {hi:.3g}  mean {float(x.mean()):.3g}  std {float(x.std()) if x.numel() > 1 else 0.0:.3g}"
    draw.text((PAD, PAD), fit_text(draw, stats, width - 2 * PAD), fill=TEXT, font=_font())
    counts = torch.histc(x, bins=bins, min=lo, max=hi if hi > lo else lo + 1)
    top, bottom = PAD + LABEL_H + PAD, height - PAD
    bar_w = (width - 2 * PAD) / bins
    peak = float(counts.max()) or 1.0
    for b, count in enumerate(counts.tolist()):
        bar_h = round((bottom - top) * count / peak)
        if bar_h:
            x0 = PAD + b * bar_w
            draw.rectangle([round(x0), bottom - bar_h, max(round(x0), round(x0 + bar_w) - 1), bottom], fill=(110, 170, 230))
    return canvas


def stack(images: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """Images one under the other, left-aligned, on the background colour."""
    width = max(i.width for i in images)
    canvas = PIL.Image.new("RGB", (width, sum(i.height for i in images)), BACKGROUND)
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height
    return canvas
