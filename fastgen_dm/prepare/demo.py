"""Small class-conditional demo datasets, generated locally, in EDM's zip format.

``write_demo_zip`` draws one shape kind per class (class ``c`` draws ``_SHAPES[c % 8]``) on a
random background. With more than 8 classes, class ``c`` also gets colour family ``c // 8``: the
hue wheel is split into one band per family and the shape's hue stays inside its band, so every
class stays distinguishable. Shapes are drawn at 4x the resolution and downsampled with Lanczos.

``write_demo_latent_zip`` writes ImageNet-256-style latents: float32 (8, 32, 32) arrays holding a
posterior mean and std concatenated on channels, with a class-dependent mean.

Both are deterministic for a given seed: item ``i`` is drawn from
``numpy.random.default_rng([seed, i])``, so a smaller dataset is a prefix of a larger one with
the same seed. Labels cycle through the classes (item ``i`` has label ``i % num_classes``), so
class counts differ by at most one.
"""

from __future__ import annotations

import colorsys
import logging
import math
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter
from tqdm import tqdm

from fastgen_dm.prepare.edm_zip import EDMZipWriter

__all__ = ["draw_shape", "photo_like", "write_demo_latent_zip", "write_demo_zip"]

logger = logging.getLogger(__name__)

_SUPERSAMPLE = 4  # draw at 4x the resolution, then downsample with Lanczos
_VAE_SCALE = 0.18215  # SD VAE latent scale: training code multiplies latents by it

_Point = tuple[float, float]


def _validate_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --- shapes ----------------------------------------------------------------------------------
# Each takes (draw, centre x, centre y, radius r, rotation in radians, colour) and draws a shape
# that fits in the circle of radius r around the centre.


def _polygon(cx: float, cy: float, r: float, angle: float, n: int, phase: float) -> list[_Point]:
    """Corners of a regular n-gon; phase 0 puts a corner straight up."""
    return [
        (cx + r * math.sin(angle + phase + 2 * math.pi * k / n),
         cy - r * math.cos(angle + phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _bars(cx: float, cy: float, r: float, angle: float) -> list[list[_Point]]:
    """Two crossing bars of half-width 0.22 r: a plus at angle 0."""
    w = 0.22 * r
    bars = []
    for a in (angle, angle + math.pi / 2):
        c, s = math.cos(a), math.sin(a)
        bars.append([(cx + x * c - y * s, cy + x * s + y * c)
                     for x, y in ((-r, -w), (r, -w), (r, w), (-r, w))])
    return bars


def _circle(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _square(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    d.polygon(_polygon(cx, cy, r * 0.95, a, 4, math.pi / 4), fill=fill)


def _triangle(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    d.polygon(_polygon(cx, cy + 0.15 * r, r * 1.1, a, 3, 0.0), fill=fill)


def _plus(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    for bar in _bars(cx, cy, r, a):
        d.polygon(bar, fill=fill)


def _ring(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, round(0.4 * r)))


def _diamond(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    d.polygon(_polygon(cx, cy, r, a, 4, 0.0), fill=fill)


def _cross(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    for bar in _bars(cx, cy, r, a + math.pi / 4):
        d.polygon(bar, fill=fill)


def _star(d: PIL.ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, fill) -> None:
    outer = _polygon(cx, cy, r * 1.1, a, 5, 0.0)
    inner = _polygon(cx, cy, r * 0.45, a, 5, math.pi / 5)
    d.polygon([p for pair in zip(outer, inner) for p in pair], fill=fill)


_SHAPES: tuple[Callable[..., None], ...] = (
    _circle, _square, _triangle, _plus, _ring, _diamond, _cross, _star,
)


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(255 * r), round(255 * g), round(255 * b)


def _draw_demo_image(
    rng: np.random.Generator, label: int, num_classes: int, resolution: int
) -> PIL.Image.Image:
    """One RGB image of class ``label``, at ``resolution`` x ``resolution``."""
    families = -(-num_classes // len(_SHAPES))  # ceil: hue bands, one per colour family
    family = label // len(_SHAPES)
    # A hue inside the family's band, keeping a gap to the neighbouring bands.
    offset = rng.uniform(0.0, 1.0) if families == 1 else rng.uniform(0.15, 0.85)
    hue = (family + offset) / families
    if rng.uniform() < 0.5:  # dark, greyish background; bright, saturated shape
        background = _rgb(rng.uniform(), rng.uniform(0.0, 0.4), rng.uniform(0.05, 0.3))
        foreground = _rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.85, 1.0))
    else:  # light, greyish background; darker, saturated shape
        background = _rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.8, 1.0))
        foreground = _rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.45, 0.7))

    size = resolution * _SUPERSAMPLE
    radius = rng.uniform(0.24, 0.4) * size
    margin = radius * 1.1 + 0.03 * size
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(-1.0, 1.0) * math.radians(10)
    s = _SUPERSAMPLE  # a power of two: dividing and multiplying back is exact
    return draw_shape(label, (resolution, resolution), (cx / s, cy / s), radius / s, angle, foreground, background)


def draw_shape(
    shape: int,
    size: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    angle: float,
    foreground: tuple[int, int, int],
    background: tuple[int, int, int],
) -> PIL.Image.Image:
    """Shape kind ``shape`` (0 circle, 1 square, 2 triangle, 3 plus, 4 ring, 5 diamond, 6 cross,
    7 star, then again) on a plain background: an RGB image of ``size`` (width, height).

    ``centre`` and ``radius`` are in output pixels; ``angle`` rotates the shape (radians). Drawn
    at 4x and downsampled with Lanczos, so edges are smooth.
    """
    s = _SUPERSAMPLE
    canvas = PIL.Image.new("RGB", (size[0] * s, size[1] * s), background)
    _SHAPES[shape % len(_SHAPES)](PIL.ImageDraw.Draw(canvas), centre[0] * s, centre[1] * s, radius * s, angle, foreground)
    return canvas.resize(size, PIL.Image.Resampling.LANCZOS)


def photo_like(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """A photograph stand-in, RGB ``width`` x ``height``: smooth gradients, objects with hard edges,
    lens blur and sensor noise, so codecs and resizers meet what photographs give them (the
    tests' and benchmarks' test images). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    side = max(width, height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / side
    img = np.full((height, width, 3), 128, np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.3, 3), rng.uniform(0.3, 3), rng.uniform(0, 2 * np.pi)
            img[..., c] += rng.uniform(20, 50) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, height / side), rng.uniform(0.03, 0.2)
        disc = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[disc] = img[disc] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    blurred = PIL.Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(PIL.ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(blurred, np.float32) + rng.normal(0, 3, (height, width, 3))
    return PIL.Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_demo_zip(
    path: str | os.PathLike[str],
    num_images: int = 2048,
    resolution: int = 32,
    num_classes: int = 4,
    seed: int = 0,
    show_progress: bool = False,
) -> pathlib.Path:
    """Write a labelled demo image dataset of drawn shapes as an EDM zip.

    Class ``c`` is a shape kind (0 filled circle, 1 square, 2 triangle, 3 plus, 4 ring,
    5 diamond, 6 diagonal cross, 7 star, then again from the circle) in colour family ``c // 8``,
    with random position, size, small rotation, colour and background. 2048 images at 32x32
    take about a second.

    Args:
        path: Destination zip file; parent folders are created, an existing file is replaced.
        num_images: Number of images, >= num_classes so that every class is present.
        resolution: Image width and height in pixels, >= 8.
        num_classes: Number of classes, >= 1. Item ``i`` has label ``i % num_classes``.
        seed: Seed, >= 0. The same seed gives the same zip, byte for byte.
        show_progress: Show a tqdm progress bar.

    Returns:
        The path written.
    """
    num_images = _validate_int("num_images", num_images, 1)
    resolution = _validate_int("resolution", resolution, 8)
    num_classes = _validate_int("num_classes", num_classes, 1)
    seed = _validate_int("seed", seed, 0)
    if num_images < num_classes:
        raise ValueError(
            f"num_images must be >= num_classes ({num_classes}) so that every class is present, "
            f"got {num_images}"
        )
    with EDMZipWriter(path) as writer:
        for i in tqdm(range(num_images), desc="demo images", unit="img", disable=not show_progress):
            label = i % num_classes
            rng = np.random.default_rng([seed, i])
            writer.add_image(_draw_demo_image(rng, label, num_classes, resolution), label)
    # Debug: the callers (`fastgen prepare`, DemoDataModule) say what they wrote, once.
    logger.debug("wrote %d demo images (%d classes) to %s", num_images, num_classes, writer.path)
    return writer.path


def write_demo_latent_zip(
    path: str | os.PathLike[str],
    num_items: int = 256,
    shape: Sequence[int] = (8, 32, 32),
    num_classes: int = 4,
    seed: int = 0,
    show_progress: bool = False,
) -> pathlib.Path:
    """Write a labelled demo latent dataset as an EDM zip, like EDM2's ``imagenet_256_sd.zip``.

    Each member ``00000/img-mean-std-00000000.npy`` is float32 of ``shape``: the first half of
    the channels a posterior mean, the second half its std (positive). The mean has a per-class
    channel offset plus noise, at the scale of the SD VAE's unscaled latents (about unit
    standard deviation after multiplying by 0.18215).

    Args:
        path: Destination zip file; parent folders are created, an existing file is replaced.
        num_items: Number of latents, >= num_classes so that every class is present.
        shape: (channels, height, width), positive, with an even channel count (mean and std).
        num_classes: Number of classes, >= 1. Item ``i`` has label ``i % num_classes``.
        seed: Seed, >= 0. The same seed gives the same zip, byte for byte.
        show_progress: Show a tqdm progress bar.

    Returns:
        The path written.
    """
    num_items = _validate_int("num_items", num_items, 1)
    num_classes = _validate_int("num_classes", num_classes, 1)
    seed = _validate_int("seed", seed, 0)
    if num_items < num_classes:
        raise ValueError(
            f"num_items must be >= num_classes ({num_classes}) so that every class is present, "
            f"got {num_items}"
        )
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or len(shape) != 3
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape)
        or shape[0] % 2
    ):
        raise ValueError(
            f"shape must be (channels, height, width) of positive ints with an even channel "
            f"count (mean and std), got {shape!r}"
        )
    channels, height, width = (int(s) for s in shape)
    half = channels // 2
    # Per-class channel offsets, shape (num_classes, half), from the seed alone.
    class_offsets = np.random.default_rng([seed, 2**32]).standard_normal((num_classes, half))
    with EDMZipWriter(path, member_prefix="img-mean-std") as writer:
        progress = tqdm(range(num_items), desc="demo latents", disable=not show_progress)
        for i in progress:
            label = i % num_classes
            rng = np.random.default_rng([seed, i])
            noise = rng.standard_normal((half, height, width))
            mean = (0.8 * noise + 0.6 * class_offsets[label][:, None, None]) / _VAE_SCALE
            std = np.exp(rng.uniform(math.log(0.05), math.log(0.5), size=(half, height, width)))
            writer.add_array(np.concatenate([mean, std]).astype(np.float32), label)
    # Debug: the callers (`fastgen prepare`, DemoDataModule) say what they wrote, once.
    logger.debug("wrote %d demo latents (%d classes) to %s", num_items, num_classes, writer.path)
    return writer.path
