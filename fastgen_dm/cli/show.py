"""``fastgen show``: one batch as a picture, as the model would receive it.

The batch goes through the DataModule's ``on_after_batch_transfer(batch, 0)`` first, so
``normalize_on_device`` families are scaled. What is drawn depends on ``--key`` (default
``real``), recognised by shape (``--as`` forces it):

- image: [B, 1 or 3, H, W], uint8 or floats in [-1, 1]: a grid, each tile labelled;
- video: [B, 1 or 3, T, H, W], same values: one row of up to 8 frames per clip (``--gif``
  also writes every frame as an animated grid);
- latent: anything else [B, C, H, W] or [B, C, T, H, W]: a row of grayscale channel tiles per
  item (each channel scaled by its min and max over the items shown), and a histogram of all values.

Labels: a caption (a list of strings in the batch, e.g. ``txt``), else the class
(``condition`` one-hot argmax), else ``fname``, else ``idx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastgen_dm import viz
from fastgen_dm.cli._datamodule import build_datamodule, fail, family_name, is_planned, tool_parser

DESCRIPTION = "Draw the first batch(es) of the DataModule's training loader as a PNG: images as a labelled grid, videos as frame strips, latents as channel images with a histogram of values."
EXAMPLES = (
    "fastgen show --config configs/quickstart.yaml --out grid.png",
    "fastgen show --data ImageWDSDataModule --data.datatags '[\"WDS:shards\"]' --data.buckets '{\"ratios\": 5, \"pixels\": 65536}' --per-bucket --out buckets.png",
    "fastgen show --config configs/image_latent.yaml --out latents.png --max-items 8",
    "fastgen show --config configs/video_wds.yaml --out strips.png --gif clips.gif",
)
KINDS = ("auto", "image", "video", "latent")
_NOT_CAPTIONS = ("fname", "shard")
_CAPTION_KEYS = ("condition", "caption", "txt", "text", "prompt")


def kind_of(x: torch.Tensor) -> str:
    """"image", "video" or "latent" for a batch tensor [B, C, H, W] or [B, C, T, H, W]."""
    if x.ndim not in (4, 5):
        raise ValueError(f"has shape {list(x.shape)}; expected [B, C, H, W] or [B, C, T, H, W]")
    if viz.looks_like_pixels(x):
        return "image" if x.ndim == 4 else "video"
    return "latent"


def labels_of(batch: dict[str, Any], n: int) -> list[str] | None:
    """Up to ``n`` labels: captions, else "class k" from a one-hot ``condition``, else fnames, else "#idx".

    Captions: the first list of strings, not all empty, among ``condition``, ``caption``, ``txt``,
    ``text``, ``prompt``, then the other keys (``fname`` and ``shard`` excepted).
    """
    keys = [k for k in _CAPTION_KEYS if k in batch] + [k for k in batch if k not in _CAPTION_KEYS and k not in _NOT_CAPTIONS]
    for key in keys:
        value = batch[key]
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value) and any(value):
            return list(value[:n])
    condition = batch.get("condition")
    if isinstance(condition, torch.Tensor) and condition.ndim == 2 and condition.shape[1] > 0:
        return [f"class {k}" for k in condition[:n].argmax(1).tolist()]
    if isinstance(batch.get("fname"), (list, tuple)):
        return [str(f) for f in batch["fname"][:n]]
    idx = batch.get("idx")
    if isinstance(idx, torch.Tensor):
        return [f"#{i}" for i in idx[:n].tolist()]
    return None


def _join(batches: list[dict[str, Any]], max_items: int) -> dict[str, Any]:
    """Concatenate batches key by key (tensors along dim 0, lists end to end), cut to ``max_items``."""
    out: dict[str, Any] = {}
    for key, first in batches[0].items():
        values = [b.get(key) for b in batches]
        if isinstance(first, torch.Tensor) and all(isinstance(v, torch.Tensor) and v.shape[1:] == first.shape[1:] for v in values) and first.ndim:
            out[key] = torch.cat(values)[:max_items]
        elif isinstance(first, list) and all(isinstance(v, list) for v in values):
            out[key] = sum(values, [])[:max_items]
        else:
            out[key] = first
    return out


def draw(x: torch.Tensor, kind: str, labels: list[str] | None, columns: int | None) -> tuple[Any, list[Any]]:
    """(picture, GIF frames) of the batch tensor ``x`` drawn as ``kind``."""
    if kind == "image":
        return viz.image_grid(x, labels, columns), []
    if kind == "video":
        return viz.frame_strips(x, labels), viz.video_frames(x, labels, columns)
    channels = viz.channel_rows(x, labels)
    return viz.stack([channels, viz.histogram(x, channels.width)]), []


def main(argv: list[str]) -> int:
    parser = tool_parser("fastgen show", DESCRIPTION, EXAMPLES)
    parser.add_argument("--out", required=True, metavar="FILE", help="the picture to write (PNG, or any format Pillow writes)")
    parser.add_argument("--gif", metavar="FILE", help="video batches: also an animated GIF, one grid per frame")
    parser.add_argument("--batches", type=int, default=1, metavar="N", help="batches to take from the loader (default: 1)")
    parser.add_argument("--max-items", type=int, default=16, metavar="N", help="items drawn at most (default: 16)")
    parser.add_argument("--key", default="real", help="batch key to draw (default: real)")
    parser.add_argument("--as", dest="kind", choices=KINDS, default="auto", help="how to draw it (default: auto, by shape and values)")
    parser.add_argument("--columns", type=int, metavar="N", help="grid columns (default: near-square)")
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second of --gif (default: 8)")
    parser.add_argument("--per-bucket", action="store_true", help="bucketed DataModules: the first batch of every bucket, one picture each, stacked")
    args, rest = parser.parse_known_args(argv)
    for name in ("batches", "max_items", "columns"):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(parser, f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.fps <= 0:
        fail(parser, f"--fps must be > 0, got {args.fps}")
    dm = build_datamodule(parser, args.config, rest)
    try:
        dm.prepare_data()
        dm.setup("fit")
        batches = []
        by_bucket: dict[int, dict[str, Any]] = {}
        for batch in dm.train_dataloader():
            if args.per_bucket:
                if "bucket" not in batch:
                    fail(parser, f"--per-bucket: {family_name(dm)}'s batches carry no bucket; give it buckets (--data.buckets)")
                by_bucket.setdefault(batch["bucket"], batch)
                if len(by_bucket) == len(dm.bucket_targets):  # batches with a bucket: a bucketed family
                    break
                continue
            batches.append(dm.on_after_batch_transfer(batch, 0))  # as a Trainer does: normalize_on_device scales here
            if len(batches) == args.batches:
                break
    except (FileNotFoundError, ValueError) as err:
        fail(parser, str(err))
    if args.per_bucket:
        return _show_buckets(parser, dm, by_bucket, args)
    if not batches:
        fail(parser, f"{family_name(dm)}'s training loader yielded no batch")
    batch = _join(batches, args.max_items)
    x = batch.get(args.key)
    if not isinstance(x, torch.Tensor):
        tensors = sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor))
        fail(parser, f"--key {args.key!r}: the batch has no tensor {args.key!r}; its tensors are {tensors}")
    if is_planned(dm):
        x = dm.pixels_in_unit_range(args.key, x)  # as the zip family's pixels: [-1, 1]
    try:
        kind = kind_of(x) if args.kind == "auto" else args.kind
        picture, frames = draw(x, kind, labels_of(batch, len(x)), args.columns)
    except ValueError as err:
        fail(parser, f"--key {args.key!r} {err}" + ("" if args.kind == "auto" else f" (--as {args.kind})"))
    if args.gif and not frames:
        fail(parser, f"--gif needs a video batch [B, C, T, H, W] of pixels; {args.key!r} is drawn as {kind}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"{family_name(dm)}: {args.key} {x.dtype} {list(x.shape)} drawn as {kind}, {picture.width}x{picture.height} -> {args.out}")
    if args.gif:
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=round(1000 / args.fps), loop=0)
        print(f"{len(frames)} frames -> {args.gif}")
    return 0


def _show_buckets(parser: Any, dm: Any, by_bucket: dict[int, dict[str, Any]], args: Any) -> int:
    """One picture per bucket's first batch, stacked top to bottom in bucket order."""
    if not by_bucket:
        fail(parser, f"{family_name(dm)}'s training loader yielded no batch")
    pictures = []
    for bucket, batch in sorted(by_bucket.items()):
        batch = dm.on_after_batch_transfer(batch, 0)
        x = dm.pixels_in_unit_range(args.key, batch[args.key])[: args.max_items]
        picture, _ = draw(x, kind_of(x) if args.kind == "auto" else args.kind, labels_of(batch, len(x)), args.columns)
        pictures.append(picture)
        print(f"bucket {bucket}: {args.key} {list(x.shape)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    stacked = viz.stack(pictures)
    stacked.save(args.out)
    print(f"{family_name(dm)}: {len(pictures)} buckets, {stacked.width}x{stacked.height} -> {args.out}")
    return 0
