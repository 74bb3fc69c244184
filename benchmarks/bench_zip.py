"""Samples/s of CIFAR10DataModule against a plain one-worker PIL DataLoader over the same zip.

Both run in this process, on the same 50,000-image 32x32 EDM zip, at batch 128, and the result
is printed as ratios to the baseline (timings differ between machines; ratios travel).

    python benchmarks/bench_zip.py [--images 50000] [--epochs 1] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset

from fastgen_dm import CIFAR10DataModule
from fastgen_dm.prepare import write_demo_zip


class PlainZipDataset(Dataset):
    """What a typical loader does: a map-style dataset that decodes each PNG with PIL."""

    def __init__(self, path: str) -> None:
        self.path = path
        with zipfile.ZipFile(path) as zf:
            self.names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        self.zf: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.zf is None:
            self.zf = zipfile.ZipFile(self.path)
        image = np.array(PIL.Image.open(io.BytesIO(self.zf.read(self.names[i]))))
        real = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
        return {"real": real, "idx": torch.tensor(i)}


def rate(loader, epochs: int) -> float:
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["idx"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="comma-separated worker counts for cache=False")
    parser.add_argument("--workdir", default=None, help="where to write the zip (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        path = workdir / f"bench-{args.images}.zip"
        if not path.exists():
            t = time.perf_counter()
            write_demo_zip(path, num_images=args.images, num_classes=10)
            print(f"wrote {args.images} images in {time.perf_counter() - t:.1f} s")

        baseline = rate(DataLoader(PlainZipDataset(str(path)), batch_size=128, shuffle=True, num_workers=1), args.epochs)
        print(f"baseline  DataLoader(PIL, 1 worker)         {baseline:10.0f} samples/s  1.00x")

        for workers in [int(w) for w in args.workers.split(",")]:
            dm = CIFAR10DataModule(str(path), batch_size=128, num_workers=workers, cache=False, resolution=None)
            dm.setup("fit")
            r = rate(dm.train_dataloader(), args.epochs)
            print(f"fastgen   cache=False, {workers} worker(s)          {r:10.0f} samples/s  {r / baseline:5.2f}x")

        for on_device in (False, True):
            dm = CIFAR10DataModule(
                str(path), batch_size=128, cache=True, resolution=None, cache_dir=str(workdir), normalize_on_device=on_device
            )
            t = time.perf_counter()
            dm.prepare_data()
            if not on_device:
                print(f"(cache built once in {time.perf_counter() - t:.1f} s with every core, reused by later runs)")
            dm.setup("fit")
            r = rate(dm.train_dataloader(), args.epochs)
            label = "uint8, scaled on device" if on_device else "float32, scaled on CPU"
            print(f"fastgen   cache=True, {label:24s} {r:10.0f} samples/s  {r / baseline:5.2f}x")


if __name__ == "__main__":
    main()
