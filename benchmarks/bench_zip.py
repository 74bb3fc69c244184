"""Samples/s of CIFAR10DataModule against FastGen's ImageLoader over the same EDM zip.

The baseline is FastGen's ``ImageLoader`` algorithm re-implemented: EDM's map-style
``ImageFolderDataset`` (one PNG decoded per ``__getitem__``; with ``cache=True`` a dict of
decoded images kept by the worker) behind a one-worker DataLoader with an infinite sampler,
``pin_memory`` and ``prefetch_factor=2``, each sample a dict of float32 ``real`` in [-1, 1],
one-hot ``condition``, ``neg_condition`` and ``idx``. With ``cache=True`` it is timed on its
second epoch, when its cache is warm. Both run in this process at batch 128 and the result is
printed as ratios to the baseline of the same kind (timings differ between machines; ratios
travel).

    python benchmarks/bench_zip.py [--images 20000] [--epochs 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import itertools
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import PIL.Image
from torch.utils.data import DataLoader, Dataset, Sampler

from fastgen_dm import CIFAR10DataModule
from fastgen_dm.prepare import write_demo_zip

BATCH = 128


class FastGenImageFolder(Dataset):
    """EDM's ImageFolderDataset as FastGen's ImageLoader uses it (zip, labels, optional dict cache)."""

    def __init__(self, path: str, cache: bool) -> None:
        self.path, self.cache = path, cache
        with zipfile.ZipFile(path) as zf:
            self.names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        self.labels = np.arange(len(self.names)) % 10
        self.cached: dict[int, np.ndarray] = {}
        self.zf: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        image = self.cached.get(i)
        if image is None:
            if self.zf is None:
                self.zf = zipfile.ZipFile(self.path)
            image = np.array(PIL.Image.open(io.BytesIO(self.zf.read(self.names[i])))).transpose(2, 0, 1)
            if self.cache:
                self.cached[i] = image
        condition = np.zeros(10, dtype=np.float32)
        condition[self.labels[i]] = 1
        real = image.astype(np.float32) / 127.5 - 1
        return {"real": real.copy(), "condition": condition, "neg_condition": np.zeros(10, dtype=np.float32), "idx": i}


class InfiniteSampler(Sampler):
    """FastGen's sampler: a new permutation each pass, forever, so its one worker (and cache) lives on."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        for epoch in itertools.count():
            yield from np.random.default_rng(epoch).permutation(self.n).tolist()


def fastgen_rate(path: str, cache: bool, epochs: int) -> float:
    """Samples/s of FastGen's ImageLoader over its last ``epochs - 1`` epochs (the first warms the cache)."""
    dataset = FastGenImageFolder(path, cache)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=InfiniteSampler(len(dataset)), num_workers=1, pin_memory=True, prefetch_factor=2)
    batches = iter(loader)
    per_epoch = len(dataset) // BATCH
    for _ in range(per_epoch if cache else 0):
        next(batches)
    start = time.perf_counter()
    timed = per_epoch * (epochs - 1 if cache else 1)
    for _ in range(timed):
        next(batches)
    return timed * BATCH / (time.perf_counter() - start)


def rate(loader, epochs: int) -> float:
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["idx"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", default="2", help="comma-separated worker counts to time besides the defaults")
    parser.add_argument("--workdir", default=None, help="where to write the zip (default: a temporary folder)")
    args = parser.parse_args()
    worker_counts = [None, *(int(w) for w in args.workers.split(","))]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        path = workdir / f"bench-{args.images}.zip"
        if not path.exists():
            t = time.perf_counter()
            write_demo_zip(path, num_images=args.images, num_classes=10)
            print(f"wrote {args.images} images in {time.perf_counter() - t:.1f} s")

        for cache in (False, True):
            baseline = fastgen_rate(str(path), cache, max(args.epochs, 2))
            print(f"baseline  FastGen ImageLoader(cache={cache})              {baseline:10.0f} samples/s  1.00x")
            if cache:
                warm = CIFAR10DataModule(str(path), batch_size=BATCH, cache=True, resolution=None, cache_dir=str(workdir))
                t = time.perf_counter()
                warm.prepare_data()
                print(f"(cache built once in {time.perf_counter() - t:.1f} s with every core, reused by later runs)")
            for workers in worker_counts:
                for on_device in (False, True) if cache else (False,):
                    dm = CIFAR10DataModule(
                        str(path), batch_size=BATCH, cache=cache, resolution=None, cache_dir=str(workdir),
                        num_workers=workers, normalize_on_device=on_device,
                    )  # fmt: skip
                    dm.setup("fit")
                    loader = dm.train_dataloader()
                    r = rate(loader, args.epochs)
                    label = f"{'default' if workers is None else workers} workers ({loader.num_workers}), {'uint8' if on_device else 'float32'}"
                    print(f"fastgen   cache={cache!s:5} {label:34s} {r:10.0f} samples/s  {r / baseline:5.2f}x")


if __name__ == "__main__":
    main()
