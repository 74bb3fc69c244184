"""What mixing and buckets cost, against the same shards read without them.

1. Mixing throughput: ImageLatentDataModule over two datasets as one (``datatags``) against the
   same two as ``streams`` weighted 2:1, samples/s at 0 and 2 workers, as a ratio.
2. Mixing proportions: per global step and cumulatively, the largest gap between a stream's
   samples and its declared share, measured on the delivered batches.
3. Buckets: the padded and dropped shares of ``BucketPlan`` on a skewed (Zipf-like) mix of
   aspect ratios, for each tail policy and world size (from the plan: nothing is read).

    python benchmarks/bench_mix_buckets.py [--samples 3000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from fastgen_dm.datamodules.latents import ImageLatentDataModule
from fastgen_dm.plan import BucketPlan, aspect_buckets, assign_buckets
from fastgen_dm.prepare.demo_wds import write_demo_shards

BATCH = 32


def rate(dm: ImageLatentDataModule, epochs: int) -> tuple[float, list[list[str]]]:
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches: list[list[str]] = []
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            dm.cursor.step()
            batches.append([Path(url).parent.name for url in batch["shard"]])
    return sum(map(len, batches)) / (time.perf_counter() - start), batches


def proportion_errors(batches: list[list[str]], shares: dict[str, float]) -> tuple[float, float]:
    """(largest per-batch gap, largest cumulative gap) in samples, over full batches."""
    per_batch, cumulative, seen, drawn = 0.0, 0.0, 0, Counter()
    for batch in batches:
        counts = Counter(batch)
        if len(batch) == BATCH:
            per_batch = max(per_batch, *(abs(counts[k] - share * len(batch)) for k, share in shares.items()))
        drawn.update(counts)
        seen += len(batch)
        cumulative = max(cumulative, *(abs(drawn[k] - share * seen) for k, share in shares.items()))
    return per_batch, cumulative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000, help="samples of the larger dataset (the other has half)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, n in (("a", args.samples), ("b", args.samples // 2)):
            write_demo_shards(root / name, "image_latent", num_samples=n, samples_per_shard=100)
        tags = {name: [f"WDS:{root / name}"] for name in ("a", "b")}
        print("1-2. mixing: 2:1 streams against the same shards as one dataset (batch 32, epoch mode)")
        for workers in (0, 2):
            common = {"batch_size": BATCH, "num_workers": workers, "index_dir": str(root / "index"), "seed": 0}
            plain, _ = rate(ImageLatentDataModule(datatags=tags["a"] + tags["b"], **common), args.epochs)
            streams = [{"datatags": tags["a"], "weight": 2}, {"datatags": tags["b"], "weight": 1}]
            mixed, batches = rate(ImageLatentDataModule(streams=streams, epoch_end="total", epoch_samples=args.samples, **common), args.epochs)
            per_batch, cumulative = proportion_errors(batches, {"a": 2 / 3, "b": 1 / 3})
            print(
                f"   {workers} workers: plain {plain:8.0f} samples/s, mixed {mixed:8.0f} samples/s = {mixed / plain:4.2f}x; "
                f"largest gap to the 2:1 share: {per_batch:.2f} samples in a batch, {cumulative:.2f} cumulative"
            )

    rng = np.random.default_rng(0)
    targets = aspect_buckets(8, 256 * 256)  # 8 ratios round to fewer distinct targets at multiples of 64
    print(f"3. buckets: {len(targets)} targets at about 256x256 pixels, Zipf-like shares, 100,000 samples, batch 16")
    ratio = np.exp(rng.choice(np.log(targets[:, 1] / targets[:, 0]), size=100_000, p=_zipf(len(targets))))
    heights = rng.integers(200, 1200, size=100_000)
    widths = np.maximum(1, (heights * ratio).astype(np.int64))
    counts = np.bincount(assign_buckets(widths, heights, targets=targets), minlength=len(targets))
    print(f"   samples per bucket: {counts.tolist()}")
    for world in (8, 64, 512):
        row = []
        for tail in ("drop", "pad", "carry"):
            plan = BucketPlan(counts, batch_size=16, world_size=world, tail=tail)
            row.append(f"{tail}: dropped {plan.dropped_share:6.2%} padded {plan.padded_share:6.2%} carried {plan.carried_samples:6d}")
        print(f"   {world:3d} GPUs  " + " | ".join(row))


def _zipf(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1)
    return weights / weights.sum()


if __name__ == "__main__":
    main()
