"""Epoch mode over an object store with per-request latency, against webdataset streaming the same shards.

An object store charges 10-50 ms per request before the first byte. moto_server (an S3 server
on loopback, tests/s3server.py) answers in about a millisecond, so it sits behind
tests/s3proxy.py, which waits ``--latency-ms`` before each response and counts requests and
bytes. In one run, for each latency:

- ours: ``ImageLatentDataModule`` (epoch mode, the constructor's defaults plus ``--dm-kwargs``)
  over ``WDS:s3://bucket/...``, counts from the index that ``fastgen index`` wrote into the
  location (``--counts index``) or from the uploaded ``shard_counts.json`` (``--counts
  count-file``), ``--workers`` DataLoader workers, batch ``--batch-size``;
- webdataset: ``WebDataset(urls, shardshuffle=False)`` (its default ``split_by_worker``) in a
  ``DataLoader`` with the same workers and batch size, each shard opened through fsspec (a
  ``gopen`` handler for ``s3://``: no ``pipe:``, no subprocess), decoding the same two members
  (``latent.pth``, ``txt_emb.pth``, ``torch.load(weights_only=True)``).

Printed per loader: samples/s over one epoch (from ``iter(loader)`` to its end: worker start-up
included for both), requests by method and the GET bytes per GET (from the proxy, so whatever
the reader does is counted), the DataModule's set-up (construct to ``train_dataloader``) and
its requests apart; then the ratio ours/webdataset. The mixing of each delivered stream
(benchmarks/mixing.py) follows. webdataset here streams unshuffled: its mixing row is the
floor; bench_mixing.py compares against FastGen's shuffled pipeline.

Uploads and indexing go to moto_server directly, not through the proxy, so the counts are the
loaders' alone. Timings share the CPUs with whatever else runs (the load average is printed);
the ratios and request counts travel.

Examples (defaults: 2,048 samples of 64 KB in 8 shards, 2 workers, 20 ms then 0 ms; about
3 minutes on 2 cores):

    python benchmarks/bench_object_store.py
    python benchmarks/bench_object_store.py --latency-ms 20 --counts count-file
    python benchmarks/bench_object_store.py --dm-kwargs '{"shuffle": false}'
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import fsspec
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset.gopen import gopen_schemes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test servers

import mixing  # noqa: E402
from s3proxy import S3Proxy  # noqa: E402
from s3server import start_s3_server  # noqa: E402

from fastgen_dm import ImageLatentDataModule  # noqa: E402
from fastgen_dm.cli.main import main as fastgen  # noqa: E402
from fastgen_dm.prepare.demo_wds import write_demo_shards  # noqa: E402

MB = 1 << 20
MEMBERS = ("latent.pth", "txt_emb.pth")  # what ImageLatentDataModule decodes by default

warnings.filterwarnings("ignore", message="This DataLoader will create")


class FsspecOpener:
    """webdataset's ``gopen`` handler for ``s3://``: the object opened through fsspec.

    Installed in the main process and again in each worker (``worker_init_fn``), so it holds
    under any start method. Picklable: it carries only the options.
    """

    def __init__(self, storage_options: dict[str, Any]) -> None:
        self.storage_options = storage_options

    def __call__(self, url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
        return fsspec.open(url, mode, **self.storage_options).open()

    def install(self, worker_id: int | None = None) -> None:
        gopen_schemes["s3"] = self


def decode_same_members(sample: dict[str, Any]) -> dict[str, Any]:
    """The members ours decodes, the same way, under ours' batch keys."""
    real, condition = (torch.load(io.BytesIO(sample[m]), weights_only=True) for m in MEMBERS)
    return {"real": real, "condition": condition, "fname": sample["__key__"], "shard": sample["__url__"]}


def webdataset_loader(urls: list[str], options: dict[str, Any], workers: int, batch_size: int) -> DataLoader:
    opener = FsspecOpener(options)
    opener.install()
    dataset = wds.WebDataset(urls, shardshuffle=False).map(decode_same_members)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=opener.install)


def ours_loader(location: str, options: dict[str, Any], workers: int, batch_size: int, count_file: bool, dm_kwargs: dict) -> Any:
    kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": workers, "storage_options": options, "pin_memory": False}
    if count_file:
        kwargs["shard_count_file"] = "shard_counts.json"
    dm = ImageLatentDataModule(datatags=[f"WDS:{location}"], **{**kwargs, **dm_kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


def one_epoch(loader: Iterable[dict[str, Any]]) -> tuple[float, list[list[mixing.Sample]]]:
    """(seconds from ``iter`` to the end, the delivered (shard name, key) of each batch)."""
    batches = []
    start = time.perf_counter()
    for batch in loader:
        batches.append([(posixpath_name(url), key) for url, key in zip(batch["shard"], batch["fname"])])
    return time.perf_counter() - start, batches


def posixpath_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def shard_keys(paths: list[Path]) -> list[tuple[str, list[str]]]:
    """Each shard's sample keys in file order, read from the local copies (no requests)."""
    out = []
    for path in paths:
        keys = [s["__key__"] for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False)]
        out.append((path.name, list(dict.fromkeys(keys))))
    return out


def measured(proxy: S3Proxy, run: Callable[[], tuple[float, list]]) -> dict[str, Any]:
    proxy.reset_stats()
    seconds, batches = run()
    stats = proxy.stats()
    return {"seconds": seconds, "batches": batches, "stats": stats}


def load_line(label: str) -> str:
    return f"{label} load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2048, help="samples in all (default 2048)")
    parser.add_argument("--shards", type=int, default=8, help="shards (default 8)")
    parser.add_argument("--latent-shape", default="4,64,64", help="latent C,H,W of float32 (default 4,64,64: 64 KB)")
    parser.add_argument("--latency-ms", default="20,0", help="latencies per request to run, in ms (default 20,0)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="epochs per loader and latency, interleaved; best counts")
    parser.add_argument("--counts", choices=("index", "count-file"), default="index",
                        help="ours' sample counts: the index of `fastgen index` (default) or shard_counts.json only")
    parser.add_argument("--dm-kwargs", type=json.loads, default={}, help="extra ImageLatentDataModule arguments as JSON")
    args = parser.parse_args()  # fmt: skip
    latencies = [float(x) / 1000 for x in args.latency_ms.split(",") if x.strip()]
    shape = tuple(int(x) for x in args.latent_shape.split(","))
    per_shard = -(-args.samples // args.shards)

    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, webdataset {wds.__version__}\n         {load_line('at start:')}"
    )
    with tempfile.TemporaryDirectory() as tmp, start_s3_server() as server:
        local = Path(tmp) / "shards"
        paths = write_demo_shards(local, "image_latent", num_samples=args.samples, samples_per_shard=per_shard, latent_shape=shape)
        shard_bytes = sum(p.stat().st_size for p in paths)
        bucket = server.make_bucket("bench-object-store")
        location = f"s3://{bucket}/{'indexed' if args.counts == 'index' else 'counted'}"
        server.upload(local, location)
        if args.counts == "index":
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
                fastgen(["index", f"WDS:{location}", "--storage-options", json.dumps(server.storage_options)])
        urls = [f"{location}/{p.name}" for p in paths]
        positions = mixing.file_positions(shard_keys(paths))
        print(
            f"data:    {args.samples} samples, {len(paths)} shards of {per_shard}, {shard_bytes / MB:.1f} MB "
            f"({shard_bytes / args.samples / 1024:.1f} KB/sample) at {location}; counts: {args.counts}\n"
            f"ours:    ImageLatentDataModule, epoch mode, defaults + {json.dumps(args.dm_kwargs)}\n"
            f"webds:   WebDataset(urls, shardshuffle=False) + split_by_worker, fsspec opener, decodes {', '.join(MEMBERS)}\n"
            f"both:    {args.workers} workers, batch {args.batch_size}, one epoch each, best of {args.repeats}"
        )

        with S3Proxy.in_front_of(server) as proxy:
            for latency in latencies:
                proxy.latency_s = latency
                best: dict[str, dict[str, Any]] = {}
                setup: dict[str, Any] = {}
                for rep in range(args.repeats):
                    for name in ("ours", "webdataset") if rep % 2 == 0 else ("webdataset", "ours"):
                        if name == "ours":
                            proxy.reset_stats()
                            t = time.perf_counter()
                            loader = ours_loader(location, proxy.storage_options, args.workers, args.batch_size,
                                                 args.counts == "count-file", args.dm_kwargs)  # fmt: skip
                            setup = {"seconds": time.perf_counter() - t, "stats": proxy.stats()}
                        else:
                            loader = webdataset_loader(urls, proxy.storage_options, args.workers, args.batch_size)
                        result = measured(proxy, lambda: one_epoch(loader))  # noqa: B023
                        if name not in best or result["seconds"] < best[name]["seconds"]:
                            best[name] = result
                report(latency, best, setup, positions, args.batch_size, len(paths))
    print(load_line("\nat end:  "))


def report(latency: float, best: dict[str, dict[str, Any]], setup: dict[str, Any], positions: dict, batch_size: int, shards: int) -> None:
    print(f"\n--- {latency * 1000:.0f} ms per request ---")
    print(f"   {'loader':11} {'samples':>8} {'samples/s':>10} {'epoch s':>8} {'GET':>6} {'HEAD':>5} {'other':>6} {'KB/GET':>8}")
    rates = {}
    for name, r in best.items():
        stats = r["stats"]
        n = sum(len(b) for b in r["batches"])
        rates[name] = n / r["seconds"]
        gets = stats.requests["GET"]
        other = stats.total_requests - gets - stats.requests["HEAD"]
        per_get = stats.response_body_bytes["GET"] / gets / 1024 if gets else 0.0
        print(
            f"   {name:11} {n:>8} {rates[name]:>10.1f} {r['seconds']:>8.2f} {gets:>6} {stats.requests['HEAD']:>5} "
            f"{other:>6} {per_get:>8.1f}"
        )
    s = setup["stats"]
    print(
        f"   ours' set-up (construct .. train_dataloader): {setup['seconds']:.2f} s, "
        f"{s.requests['GET']} GET, {s.requests['HEAD']} HEAD, {s.total_requests - s.requests['GET'] - s.requests['HEAD']} other"
    )
    ours, theirs = best["ours"]["stats"], best["webdataset"]["stats"]
    print(
        f"   ours/webdataset: {rates['ours'] / rates['webdataset']:.2f}x samples/s (target >= 1.0 at 20 ms); "
        f"GETs {ours.requests['GET']} vs {theirs.requests['GET']}"
    )
    rows = {
        "ours (epoch mode, as configured)": mixing.measure(best["ours"]["batches"], positions),
        "webdataset (shardshuffle=False: unshuffled)": mixing.measure(best["webdataset"]["batches"], positions),
    }
    print("   mixing of the delivered streams (benchmarks/mixing.py):")
    print(mixing.table(rows, batch_size, shards))


if __name__ == "__main__":
    main()
