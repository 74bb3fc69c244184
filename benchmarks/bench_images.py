"""Samples/s of ImageWDSDataModule against a plain webdataset + PIL + torchvision pipeline.

Both read the same shards of photograph-like JPEGs (default 1024 at 640x480, quality 90) in this
process, with the same number of DataLoader workers and the same batch size, and both produce
``real`` [B, 3, res, res]. The baseline is what a typical loader (and FastGen's ImageWDSLoader)
does: ``webdataset.WebDataset(...).decode("pil")`` then ``Resize(res, bicubic)``,
``CenterCrop(res)``, ``ToTensor()``, ``Normalize(0.5, 0.5)``. Results are printed as ratios to
the baseline (timings differ between machines; ratios travel). Torch runs one intra-op thread
in every process, so a worker is one core.

Rows for ImageWDSDataModule:
    uint8 (default)   normalize_on_device=True: uint8 leaves the loader, scaled on the GPU after
                      the copy (that scaling is not on the CPU and is not timed here)
    float on CPU      normalize_on_device=False: float32 in [-1, 1], like the baseline
    exact_resize      full-size decode and Pillow's resize, float on CPU (FastGen's exact values)
    decode_jpeg_on_device (workers only)
                      the workers' share when JPEGs decode on the GPU: header checks and the bytes
                      passed on; the decode after the transfer is not timed (benchmarks/bench_gpu.py)

    python benchmarks/bench_images.py [--images 1024] [--size 640x480] [--res 256,512] [--workers 1] [--epochs 5]
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
import webdataset
from torch.utils.data import DataLoader
from torchvision import transforms as T

from fastgen_dm import ImageWDSDataModule
from fastgen_dm.prepare.demo import photo_like


def write_shards(folder: Path, images: int, width: int, height: int, per_shard: int = 128, distinct: int = 64) -> list[str]:
    """``images`` JPEGs (quality 90) in shards of ``per_shard``; ``distinct`` different pictures, cycled."""
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = []
    for seed in range(distinct):
        buf = io.BytesIO()
        photo_like(width, height, seed).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    urls = []
    for start in range(0, images, per_shard):
        url = str(folder / f"{start // per_shard:05d}.tar")
        with webdataset.TarWriter(url) as sink:
            for i in range(start, min(images, start + per_shard)):
                sink.write({"__key__": f"{i:06d}", "jpg": jpegs[i % distinct], "txt": f"photo {i}".encode()})
        urls.append(url)
    return urls


def baseline_loader(urls: list[str], res: int, batch_size: int, workers: int) -> DataLoader:
    transform = T.Compose(
        [T.Resize(res, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(res), T.ToTensor(), T.Normalize(0.5, 0.5)]
    )
    dataset = (
        webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(lambda img: transform(img.convert("RGB")), lambda text: text)
    )
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers)


def epoch_rate(make_loader) -> float:
    """Samples/s of one pass (including its workers' start, as in training)."""
    start, n = time.perf_counter(), 0
    for batch in make_loader():
        n += len(batch[0] if isinstance(batch, (list, tuple)) else batch["fname"])
    return n / (time.perf_counter() - start)


def compare(pipelines: dict, epochs: int) -> dict[str, tuple[float, float]]:
    """Per pipeline: (median samples/s, median ratio to the first pipeline).

    The pipelines take turns, one epoch each per round, and each round's ratio is taken within
    the round, so a machine that slows down or speeds up during the run shifts every pipeline alike.
    """
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(epochs):
        for name, make_loader in pipelines.items():
            rates[name].append(epoch_rate(make_loader))
    base = rates[next(iter(pipelines))]
    return {
        name: (statistics.median(r), statistics.median(x / b for x, b in zip(r, base)))
        for name, r in rates.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", default="640x480", help="source JPEG size, WIDTHxHEIGHT")
    parser.add_argument("--res", default="256,512", help="comma-separated input_res values")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of both pipelines (0: in process)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="rounds; each pipeline runs one epoch per round")
    parser.add_argument("--workdir", default=None, help="where to write the shards (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per process, as in a DataLoader worker
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp) / f"jpeg-{width}x{height}-{args.images}"
        t = time.perf_counter()
        urls = write_shards(folder, args.images, width, height)
        print(f"wrote {args.images} {width}x{height} JPEGs (quality 90) in {len(urls)} shards in {time.perf_counter() - t:.1f} s")
        print(f"workers={args.workers}  batch={args.batch_size}  torch threads=1  "
              f"medians over {args.epochs} rounds (ratios within each round)")
        for res in (int(r) for r in args.res.split(",")):
            pipelines = {"baseline  webdataset + PIL + torchvision": functools.partial(
                baseline_loader, urls, res, args.batch_size, args.workers
            )}
            for label, kwargs in (
                ("uint8 (default)", {}),
                ("float on CPU", {"normalize_on_device": False}),
                ("exact_resize, float on CPU", {"normalize_on_device": False, "exact_resize": True}),
                ("decode_jpeg_on_device (workers only)", {"decode_jpeg_on_device": True}),
            ):
                dm = ImageWDSDataModule(
                    [f"WDS:{folder}"], batch_size=args.batch_size, input_res=res, num_workers=args.workers,
                    index_dir=str(folder / "index"), **kwargs,
                )  # fmt: skip
                dm.prepare_data()
                dm.setup("fit")
                pipelines[f"ImageWDSDataModule {label}"] = dm.train_dataloader
            print(f"\n{width}x{height} -> {res}")
            for name, (samples_per_s, ratio) in compare(pipelines, args.epochs).items():
                print(f"  {name:46s} {samples_per_s:8.0f} samples/s  {ratio:4.2f}x")


if __name__ == "__main__":
    main()
