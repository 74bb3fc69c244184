"""Images/s of ``fastgen prepare imagenet-64`` on one core and on every core.

Writes a synthetic ImageNet tree (``--images`` JPEGs of ``--size`` pixels, ImageNet's typical
500x375, over 10 wnids) to a temporary folder, then converts it to both 64x64 zips (EDM crop and
ADM crop, one decode per image) with each worker count. The one-worker run is the baseline;
speedups are ratios to it, measured in the same process on the same files (the page cache is
warm for every run: the tree is read once before timing). The last lines give the machine's own
ceiling, pure-CPU busy loops in as many processes, to read the speedup against.

    python benchmarks/bench_prepare.py [--images 400] [--size 500x375] [--workers 1,N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image

from fastgen_dm.prepare.imagenet import TRAIN_SUBDIR, convert_imagenet, list_imagenet_train


def make_tree(root: Path, images: int, size: tuple[int, int], wnids: int = 10) -> None:
    """Smooth colour fields plus noise, saved at quality 90: JPEGs of natural-photo size."""
    w, h = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(images):
        folder = root / TRAIN_SUBDIR / f"n{i % wnids:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = 127 + 100 * np.sin(np.stack([x / 37 + phase[0], y / 23 + phase[1], (x + y) / 51 + phase[2]], -1))
        array = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(array).save(folder / f"n{i % wnids:08d}_{i}.JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", default="500x375", help="WxH of each JPEG")
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="comma-separated worker counts; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=2, help="runs per worker count; the best is reported")
    args = parser.parse_args()
    size = tuple(int(s) for s in args.size.split("x"))
    worker_counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_tree(root / "src", args.images, size)
        listing = list_imagenet_train(root / "src")
        mib = sum(os.path.getsize(f) for f in listing.files) / 2**20
        print(f"{len(listing)} JPEGs of {size[0]}x{size[1]} ({mib:.1f} MiB) written in {time.perf_counter() - start:.1f}s; "
              f"{os.cpu_count()} cores")
        for f in listing.files:  # warm the page cache for every run alike
            Path(f).read_bytes()
        rates = {}
        for workers in worker_counts:
            best = float("inf")
            for _ in range(args.repeats):
                outputs = {"center-crop": root / "out" / "a.zip", "center-crop-dhariwal": root / "out" / "b.zip"}
                start = time.perf_counter()
                convert_imagenet(listing, outputs, workers=workers, show_progress=False)
                best = min(best, time.perf_counter() - start)
            rates[workers] = len(listing) / best
            speedup = rates[workers] / rates[worker_counts[0]]
            print(f"workers={workers:<3d} {rates[workers]:8.1f} images/s  ({best:.2f}s, both crops)  speedup x{speedup:.2f}")
        # What the machine allows: pure-CPU busy loops in the same number of processes, no I/O.
        # On a shared or throttled VM this ceiling is well under the worker count.
        for workers in worker_counts[1:]:
            ceiling = _cpu_ceiling(workers)
            print(f"machine ceiling with {workers} processes (busy loops): x{ceiling:.2f}")


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _cpu_ceiling(workers: int, tasks_per_worker: int = 4, n: int = 2_000_000) -> float:
    start = time.perf_counter()
    for _ in range(tasks_per_worker):
        _burn(n)
    serial = time.perf_counter() - start
    with multiprocessing.get_context().Pool(workers) as pool:
        start = time.perf_counter()
        pool.map(_burn, [n] * (tasks_per_worker * workers), chunksize=1)
        parallel = time.perf_counter() - start
    return serial * workers / parallel


if __name__ == "__main__":
    main()
