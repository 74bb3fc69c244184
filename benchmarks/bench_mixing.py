"""Mixing of the delivered stream: ours (epoch mode) against FastGen's WDSLoader, on the same local shards.

FastGen's ``WDSLoader(shuffle_size=1000)`` is emulated with webdataset as FastGen builds it:
``WebDataset(urls, shardshuffle=100).shuffle(1000)`` (``shardshuffle=True`` means 100 in
webdataset 1.x), split by worker (webdataset's default), batched by a ``DataLoader`` with the
same workers and batch size as ours. An unshuffled webdataset row gives the floor.

For each loader, one epoch; each delivered sample is recorded as (shard file name, key) and
measured with benchmarks/mixing.py: distinct shards per batch (mean, min), the median step in
file order between consecutive samples divided by the dataset size, and the fraction of
batches from a single shard. A uniform random order's figures are printed for reference.

Ours reads blocks of neighbouring samples sized in bytes (``read_block_bytes``, 2 MiB by
default, and never more than a FastGen buffer's mixing allows), so its mixing could depend on
the sample size. ``--emulate-sample-mb`` adds rows for ours with ``read_block_bytes`` scaled as
if each sample were that large (the block in samples is what counts: 2 MiB holds less than one
sample of 3 MB or 60 MB, so a block is one sample).

Examples (the defaults take about a minute on 2 cores):

    python benchmarks/bench_mixing.py
    python benchmarks/bench_mixing.py --samples 16384 --per-shard 512 --emulate-sample-mb 3,60
    python benchmarks/bench_mixing.py --dm-kwargs '{"seed": 1}'
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import webdataset as wds
from torch.utils.data import DataLoader

import mixing
from fastgen_dm import ImageLatentDataModule
from fastgen_dm.prepare.demo_wds import write_demo_shards

DEFAULT_READ_BLOCK_BYTES = 2 << 20  # WDSDataModule's read_block_bytes default, for the scaled rows

warnings.filterwarnings("ignore", message="This DataLoader will create")


def _origin(sample: dict[str, Any]) -> tuple[str, str]:
    return Path(sample["__url__"]).name, sample["__key__"]


def _as_list(batch: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return batch


def webdataset_batches(urls: list[str], workers: int, batch_size: int, shuffled: bool) -> list[list[mixing.Sample]]:
    """One epoch of the webdataset pipeline: (shard name, key) per sample; members are not decoded."""
    if shuffled:
        dataset = wds.WebDataset(urls, shardshuffle=100).shuffle(1000).map(_origin)
    else:
        dataset = wds.WebDataset(urls, shardshuffle=False).map(_origin)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_as_list)
    return [list(b) for b in loader]


def ours_batches(folder: str, index_dir: str, workers: int, batch_size: int, dm_kwargs: dict) -> list[list[mixing.Sample]]:
    kwargs = {"batch_size": batch_size, "num_workers": workers, "index_dir": index_dir, "pin_memory": False, **dm_kwargs}
    dm = ImageLatentDataModule(datatags=[f"WDS:{folder}"], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return [_ours_samples(b) for b in dm.train_dataloader()]


def _ours_samples(batch: dict[str, Any]) -> list[mixing.Sample]:
    return [(Path(url).name, key) for url, key in zip(batch["shard"], batch["fname"])]


def shard_keys(paths: Iterable[Path]) -> list[tuple[str, list[str]]]:
    """Each shard's keys in file order (webdataset groups members into samples as both loaders do)."""
    return [
        (p.name, list(dict.fromkeys(s["__key__"] for s in wds.WebDataset(str(p), shardshuffle=False, empty_check=False))))
        for p in paths
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8192, help="samples in all (default 8192)")
    parser.add_argument("--per-shard", type=int, default=256, help="samples per shard (default 256)")
    parser.add_argument("--latent-shape", default="4,16,16", help="latent C,H,W float32 (default 4,16,16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--emulate-sample-mb", default="3,60", help="extra ours rows, window scaled for these sample sizes (MB)")
    parser.add_argument("--dm-kwargs", type=json.loads, default={}, help="extra ImageLatentDataModule arguments as JSON")
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.latent_shape.split(","))
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at start")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        paths = write_demo_shards(folder, "image_latent", num_samples=args.samples, samples_per_shard=args.per_shard, latent_shape=shape)
        sample_bytes = sum(p.stat().st_size for p in paths) / args.samples
        positions = mixing.file_positions(shard_keys(paths))
        urls = [str(p) for p in paths]
        index_dir = str(Path(tmp) / "index")
        print(
            f"data: {args.samples} samples in {len(paths)} shards of {args.per_shard}, {sample_bytes / 1024:.1f} KB per sample; "
            f"{args.workers} workers, batch {args.batch_size}, one epoch per loader"
        )
        rows: dict[str, mixing.Mixing | None] = {
            f"ours (defaults + {json.dumps(args.dm_kwargs)})": mixing.measure(
                ours_batches(str(folder), index_dir, args.workers, args.batch_size, args.dm_kwargs), positions
            ),
        }
        for mb in [float(x) for x in args.emulate_sample_mb.split(",") if x.strip()]:
            block_bytes = max(1, int(DEFAULT_READ_BLOCK_BYTES * sample_bytes / (mb * 2**20)))
            label = f"ours, blocks as for {mb:g} MB samples"
            try:
                batches = ours_batches(str(folder), index_dir, args.workers, args.batch_size, {"read_block_bytes": block_bytes, **args.dm_kwargs})
            except TypeError:
                rows[label] = None
            else:
                rows[label] = mixing.measure(batches, positions)
        rows["FastGen WDSLoader(shuffle_size=1000) emulated"] = mixing.measure(
            webdataset_batches(urls, args.workers, args.batch_size, shuffled=True), positions
        )
        rows["webdataset unshuffled (floor)"] = mixing.measure(webdataset_batches(urls, args.workers, args.batch_size, shuffled=False), positions)
        measured = {k: v for k, v in rows.items() if v is not None}
        print(mixing.table(measured, args.batch_size, len(paths)))
        for label in (k for k, v in rows.items() if v is None):
            print(f"   {label:44} n/a (the DataModule takes no read_block_bytes)")
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
