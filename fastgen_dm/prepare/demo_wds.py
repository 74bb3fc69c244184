"""Small demo WebDataset shards for every family, generated locally.

Raw media for ``ImageWDSDataModule`` and ``VideoWDSDataModule``: :func:`write_demo_media_shards`
(captioned JPEGs or h264 clips of drawn shapes). Latents, pairs and paths:

``write_demo_shards(folder, kind)`` writes ``folder/00000.tar, 00001.tar, ...`` in the layout
FastGen's latent loaders read, plus ``folder/neg_condition.pth`` (a negative-prompt embedding,
what ``files_map={"neg_condition": ...}`` points to) and ``folder/shard_counts.json`` (FastGen's
shard count file, ``{"00000.tar": 64, ...}``). Members per sample key ``00000000``, ...:

============  ==================================================================================
kind          members
============  ==================================================================================
image_latent  ``latent.pth`` [4, 32, 32], ``txt_emb.pth`` [text_len, text_dim], ``txt``, ``json``
video_latent  ``latent.pth`` [16, 5, 8, 8] (C, T, H, W), ``txt_emb.pth``, ``txt``, ``json``
pair          ``latent.pth``, ``noise.pth`` (same shape), ``txt_emb.pth``
path          ``latent.pth``, ``path.pth`` [path_steps, *latent], ``txt_emb.pth``
============  ==================================================================================

Every ``.pth`` holds one plain float32 tensor (``torch.load(..., weights_only=True)`` reads it);
``txt`` is a UTF-8 caption and ``json`` is ``{"aesthetic_score": <float in [3, 7)>}``.

A learnable signal: sample ``i`` belongs to class ``i % 4``. Its caption names the class, its text
embedding is the class's embedding plus small noise, and its latent is the class's pattern plus
noise (about unit variance), so a toy conditional model's loss can fall. Pairs are a
deterministic map of noise to latent (``latent = 0.8 * pattern + 0.6 * noise``); a path goes from
the noise towards the latent, ``path[k] = s_k * noise + (1 - s_k) * latent`` with
``s_k = (1 - k / path_steps) ** 2``, so ``path[0]`` is the noise and ``path[-1]`` is near the latent.

Deterministic: sample ``i`` is drawn from its own generator, seeded by ``(seed, kind, i)``, and the
class patterns from ``(seed, kind)``, so a smaller set is a prefix of a larger one with the same
seed, and the tars (fixed mtime, owner and order) are the same bytes on every run.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import PIL.Image
import torch
import webdataset
from tqdm import tqdm

from fastgen_dm.prepare.demo import _rgb, draw_shape
from fastgen_dm.storage import AtomicPath, write_atomic

__all__ = ["DemoKind", "MediaKind", "h264_mp4", "write_demo_media_shards", "write_demo_shards"]

logger = logging.getLogger(__name__)

DemoKind = Literal["image_latent", "video_latent", "pair", "path"]
MediaKind = Literal["images", "videos"]

# Default latent shape and allowed ranks per kind; the id seeds each kind's samples apart.
_KINDS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    # kind: (id, default latent shape, allowed latent ranks)
    "image_latent": (0, (4, 32, 32), (3,)),  # (C, H, W)
    "video_latent": (1, (16, 5, 8, 8), (4,)),  # (C, T, H, W)
    "pair": (2, (4, 32, 32), (3, 4)),
    "path": (3, (4, 32, 32), (3, 4)),
}

_CAPTIONS = ("a red circle", "a green square", "a blue triangle", "a yellow star")  # class c: _CAPTIONS[c]
_STYLES = ("a photo of", "a drawing of", "a painting of", "a close-up of")
_NUM_CLASSES = len(_CAPTIONS)
_MTIME = 946684800  # 2000-01-01T00:00:00Z: every tar member gets it, so the bytes do not depend on the clock
_SHARD_NAME = re.compile(r"\d{5}\.tar")
SHARD_COUNTS_FILE = "shard_counts.json"

# Raw media: class c is _CAPTIONS[c], drawn as what the caption says (draw_shape's kinds, hues).
_MEDIA_IDS = {"images": 5, "videos": 6}  # seed streams, apart from the latent kinds' and the negative prompt's
_MEDIA_SHAPES = (0, 1, 2, 7)  # circle, square, triangle, star
_MEDIA_HUES = (0.0, 1 / 3, 2 / 3, 1 / 6)  # red, green, blue, yellow
MEDIA_SIZE = (96, 64)  # (width, height): not square, so the loaders' resize and center crop have work
VIDEO_FRAMES, VIDEO_FPS, VIDEO_GOP = 32, 24, 8  # 1.3 s clips with a keyframe every 8 frames (seeks have work)
NEG_CONDITION_FILE = "neg_condition.pth"


def _validate_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _validate_kind(kind: object) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind {kind!r} is unknown; use one of {', '.join(map(repr, get_args(DemoKind)))}")
    return str(kind)


def _validate_latent_shape(kind: str, latent_shape: object) -> tuple[int, ...]:
    _, default, ranks = _KINDS[kind]
    if latent_shape is None:
        return default
    if (
        isinstance(latent_shape, (str, bytes))
        or not isinstance(latent_shape, Sequence)
        or len(latent_shape) not in ranks
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in latent_shape)
    ):
        dims = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"latent_shape for kind {kind!r} must be {dims} positive ints (e.g. {default}) or None, "
            f"got {latent_shape!r}"
        )
    return tuple(int(s) for s in latent_shape)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one stream of ``seed``: its words go in ``spawn_key``, kept apart from the seed.

    (A plain list seed would not do: ``default_rng([0, 0, 1])`` equals ``default_rng([0, 0, 1, 0])``,
    as trailing zero words up to the pool size do not change the state.) Streams in use:
    ``(kind id, 0)`` the class constants, ``(kind id, 1, i)`` sample ``i``, ``(4,)`` the negative prompt.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def _tensor_bytes(array: np.ndarray) -> bytes:
    """``torch.save`` of ``array`` as a fresh float32 tensor (never a view of a larger storage)."""
    buffer = io.BytesIO()
    torch.save(torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True)), buffer)
    return buffer.getvalue()


def _samples(
    kind: str, num_samples: int, seed: int, shape: tuple[int, ...], text_len: int, text_dim: int, path_steps: int
) -> Iterator[list[tuple[str, bytes]]]:
    """For each sample, its members as (suffix, bytes), in a fixed order."""
    kind_id = _KINDS[kind][0]
    # Per-class constants from the seed alone: patterns (classes, *shape), text embeddings
    # (classes, text_len, text_dim).
    constants = _rng(seed, kind_id, 0)
    patterns = constants.standard_normal((_NUM_CLASSES, *shape))
    text_embs = constants.standard_normal((_NUM_CLASSES, text_len, text_dim))
    # Noise level of path step k, from 1 (pure noise) down towards 0: shape (path_steps,).
    sigmas = (1.0 - np.arange(path_steps) / path_steps) ** 2
    for i in range(num_samples):
        label = i % _NUM_CLASSES
        rng = _rng(seed, kind_id, 1, i)
        noise = rng.standard_normal(shape)
        latent = 0.8 * patterns[label] + 0.6 * noise
        txt_emb = text_embs[label] + 0.1 * rng.standard_normal((text_len, text_dim))
        members = [("latent.pth", _tensor_bytes(latent))]
        if kind == "pair":
            members.append(("noise.pth", _tensor_bytes(noise)))
        elif kind == "path":
            start = rng.standard_normal(shape)  # the trajectory's own noise: (*shape)
            sig = sigmas.reshape(-1, *(1,) * len(shape))  # (path_steps, 1, ...)
            members.append(("path.pth", _tensor_bytes(sig * start + (1.0 - sig) * latent)))
        members.append(("txt_emb.pth", _tensor_bytes(txt_emb)))
        if kind in ("image_latent", "video_latent"):
            caption = f"{_STYLES[int(rng.integers(len(_STYLES)))]} {_CAPTIONS[label]}"
            members.append(("txt", caption.encode("utf-8")))
            score = round(float(rng.uniform(3.0, 7.0)), 4)
            members.append(("json", json.dumps({"aesthetic_score": score}).encode("utf-8")))
        yield members


def _draw(
    label: int, centre: np.ndarray, angle: float, *, radius: float, foreground: tuple[int, int, int], background: tuple[int, int, int]
) -> PIL.Image.Image:
    """Class ``label``'s shape at ``centre``, turned by ``angle``, on ``background``."""
    return draw_shape(_MEDIA_SHAPES[label], MEDIA_SIZE, tuple(centre), radius, angle, foreground, background)


def _media_samples(kind: str, num_samples: int, seed: int) -> Iterator[list[tuple[str, bytes]]]:
    """For each sample: a JPEG (``jpg``) or an h264 mp4 (``mp4``) of a drawn shape, ``txt``, ``json``."""
    width, height = MEDIA_SIZE
    for i in range(num_samples):
        label = i % _NUM_CLASSES
        rng = _rng(seed, _MEDIA_IDS[kind], 1, i)
        background = _rgb(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.35))
        foreground = _rgb(_MEDIA_HUES[label], rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.0))
        radius = rng.uniform(0.2, 0.32) * height
        margin = radius * 1.1 + 2
        low, high = np.array([margin, margin]), np.array([width - margin, height - margin])
        start, angle = rng.uniform(low, high), rng.uniform(-0.2, 0.2)
        # bound now: the frames are drawn lazily, by the consumer of a generator
        draw = functools.partial(_draw, label, radius=radius, foreground=foreground, background=background)

        if kind == "images":
            buffer = io.BytesIO()
            draw(start, angle).save(buffer, "JPEG", quality=90)
            media = ("jpg", buffer.getvalue())
        else:  # the shape glides to another point and turns
            end, spin = rng.uniform(low, high), rng.uniform(-1.0, 1.0) * np.pi / 2
            steps = np.linspace(0.0, 1.0, VIDEO_FRAMES)
            media = ("mp4", h264_mp4(np.asarray(draw(start + (end - start) * t, angle + spin * t)) for t in steps))
        caption = f"{_STYLES[int(rng.integers(len(_STYLES)))]} {_CAPTIONS[label]}"
        score = round(float(rng.uniform(3.0, 7.0)), 4)
        yield [media, ("txt", caption.encode("utf-8")), ("json", json.dumps({"aesthetic_score": score}).encode("utf-8"))]


def h264_mp4(frames: Iterable[np.ndarray], fps: int = VIDEO_FPS, gop: int = VIDEO_GOP, qp: int = 23) -> bytes:
    """RGB frames (H, W, 3) uint8 -> an h264 mp4 (yuv420p) in memory, the same bytes on every run.

    Made with PyAV (its wheels carry libx264), so no ffmpeg command is needed. Frames are
    consumed one at a time. ``gop``: frames between keyframes; ``qp``: the constant quantizer.
    """
    try:
        import av
    except ImportError:
        raise ImportError("writing demo videos needs PyAV; install the video extra: pip install 'fastgen-dm[video]'") from None

    frames = iter(frames)
    first = next(frames)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        # The same bytes on every run need a constant quantizer (x264's rate control varies between
        # runs) and one thread.
        stream.codec_context.thread_count = 1
        stream.options = {"g": str(gop), "qp": str(qp), "threads": "1"}
        for index, frame in enumerate(itertools.chain([first], frames)):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_demo_shards(
    folder: str | os.PathLike[str],
    kind: DemoKind,
    num_samples: int = 256,
    samples_per_shard: int = 64,
    seed: int = 0,
    latent_shape: tuple[int, ...] | None = None,
    text_len: int = 8,
    text_dim: int = 32,
    path_steps: int = 4,
    show_progress: bool = False,
) -> list[Path]:
    """Write demo WebDataset shards of one latent family, with a shard count file.

    Writes ``folder/00000.tar, 00001.tar, ...`` of ``samples_per_shard`` samples each (the last
    may hold fewer), ``folder/neg_condition.pth`` and ``folder/shard_counts.json``. Each file goes
    to a temporary name first and is renamed into place when complete. Shards of an earlier run
    in ``folder`` that this run does not write (``NNNNN.tar`` beyond the new count) are removed,
    so ``folder/*.tar`` is always this dataset. 256 image latents take well under a second.

    Args:
        folder: Destination folder; created if missing.
        kind: "image_latent", "video_latent", "pair" (latent and the noise it came from) or
            "path" (latent and a denoising trajectory); see the module docstring for members.
        num_samples: Samples in all, >= 1. Sample ``i`` has key ``f"{i:08d}"`` and class ``i % 4``.
        samples_per_shard: Samples per tar, >= 1.
        seed: Seed, >= 0. The same arguments give the same files, byte for byte.
        latent_shape: Shape of ``latent.pth`` (and ``noise.pth``): (C, H, W) for image_latent,
            (C, T, H, W) for video_latent, either for pair and path. None: (4, 32, 32), or
            (16, 5, 8, 8) for video_latent.
        text_len: Tokens of the text embedding ``txt_emb.pth`` (and of ``neg_condition.pth``), >= 1.
        text_dim: Width of the text embedding, >= 1.
        path_steps: Steps of ``path.pth`` (kind "path" only), >= 1: shape
            (path_steps, *latent_shape), from pure noise at step 0 to near the latent.
        show_progress: Show a tqdm progress bar.

    Returns:
        The shard paths written, in order.

    Raises:
        ValueError: An argument is out of range; the message names it and its value.
    """
    kind_name = _validate_kind(kind)
    num_samples = _validate_int("num_samples", num_samples, 1)
    samples_per_shard = _validate_int("samples_per_shard", samples_per_shard, 1)
    seed = _validate_int("seed", seed, 0)
    shape = _validate_latent_shape(kind_name, latent_shape)
    text_len = _validate_int("text_len", text_len, 1)
    text_dim = _validate_int("text_dim", text_dim, 1)
    path_steps = _validate_int("path_steps", path_steps, 1)

    samples = _samples(kind_name, num_samples, seed, shape, text_len, text_dim, path_steps)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / SHARD_COUNTS_FILE).unlink(missing_ok=True)  # the commit marker goes first, comes back last
    negative = _rng(seed, len(_KINDS)).standard_normal((text_len, text_dim))
    write_atomic(Path(folder) / NEG_CONDITION_FILE, _tensor_bytes(negative))
    shards = _write_shards(Path(folder), samples, num_samples, samples_per_shard, f"demo {kind_name} shards", show_progress)
    # Debug: the callers (`fastgen prepare`, DemoDataModule) say what they wrote, once.
    logger.debug("wrote %d demo %s samples in %d shards to %s", num_samples, kind_name, len(shards), folder)
    return shards


def write_demo_media_shards(
    folder: str | os.PathLike[str],
    kind: MediaKind,
    num_samples: int = 64,
    samples_per_shard: int = 16,
    seed: int = 0,
    show_progress: bool = False,
) -> list[Path]:
    """Write demo WebDataset shards of raw media, for ``ImageWDSDataModule`` and ``VideoWDSDataModule``.

    Sample ``i`` (key ``f"{i:08d}"``) is class ``i % 4`` and shows what its caption says ("a photo
    of a red circle", "... a green square", "... a blue triangle", "... a yellow star") on a dark
    background, at ``MEDIA_SIZE`` (96x64): ``kind="images"`` a JPEG (``jpg``), ``kind="videos"`` a
    32-frame h264 mp4 (``mp4``, 24 fps, a keyframe every 8 frames) in which the shape glides and
    turns. Each also has ``txt`` (the caption) and ``json`` (``{"aesthetic_score": ...}``); the
    folder gets ``shard_counts.json``. 64 videos take about a second; the same arguments give
    the same bytes.

    Args:
        folder: Destination folder; created if missing.
        kind: "images" or "videos".
        num_samples: Samples in all, >= 1.
        samples_per_shard: Samples per tar, >= 1.
        seed: Seed, >= 0.
        show_progress: Show a tqdm progress bar.

    Returns:
        The shard paths written, in order.
    """
    if kind not in _MEDIA_IDS:
        raise ValueError(f"kind {kind!r} is unknown; use one of {', '.join(map(repr, get_args(MediaKind)))}")
    num_samples = _validate_int("num_samples", num_samples, 1)
    samples_per_shard = _validate_int("samples_per_shard", samples_per_shard, 1)
    seed = _validate_int("seed", seed, 0)
    samples = _media_samples(kind, num_samples, seed)
    shards = _write_shards(Path(folder), samples, num_samples, samples_per_shard, f"demo {kind} shards", show_progress)
    # Debug: the callers (`fastgen prepare`, DemoDataModule) say what they wrote, once.
    logger.debug("wrote %d demo %s in %d shards to %s", num_samples, kind, len(shards), folder)
    return shards


def _write_shards(
    folder: Path, samples: Iterator[list[tuple[str, bytes]]], num_samples: int, samples_per_shard: int, desc: str, show_progress: bool
) -> list[Path]:
    """``folder/00000.tar, ...`` of ``samples_per_shard`` samples (keys ``00000000``, ...) and
    ``shard_counts.json``, each renamed into place when complete; stale shards of an earlier run removed.

    ``shard_counts.json`` is the folder's commit marker: it is removed before anything else is
    written and written last, so a run killed midway leaves no marker and the next run (which
    reuses only folders that have one) writes the folder again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SHARD_COUNTS_FILE).unlink(missing_ok=True)
    num_shards = -(-num_samples // samples_per_shard)
    shards = [folder / f"{s:05d}.tar" for s in range(num_shards)]
    for old in folder.iterdir():
        if _SHARD_NAME.fullmatch(old.name) and old not in shards:
            logger.info("removing %s, a shard of an earlier demo that this one does not have", old)
            old.unlink()
    counts: dict[str, int] = {}
    with tqdm(total=num_samples, desc=desc, unit="sample", disable=not show_progress) as bar:
        for s, shard in enumerate(shards):
            first, stop = s * samples_per_shard, min((s + 1) * samples_per_shard, num_samples)
            # a fixed mtime and owner: the tar's bytes do not depend on the clock or the user
            with AtomicPath(shard) as tmp, open(tmp, "wb") as stream, webdataset.TarWriter(stream, user="", group="", mtime=_MTIME, encoder=False) as tar:
                for i in range(first, stop):
                    tar.write({"__key__": f"{i:08d}", **dict(next(samples))})
                    bar.update(1)
            counts[shard.name] = stop - first
    write_atomic(folder / SHARD_COUNTS_FILE, (json.dumps(counts, indent=1) + "\n").encode("utf-8"))
    return shards
