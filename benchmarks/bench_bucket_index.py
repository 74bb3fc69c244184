"""Memory and time of each sample's bucket against dataset size: the compact index against one sort.

The bucket plan needs, per (bucket, shard), which of the shard's samples are in the bucket.
Two ways to keep that, each measured in fresh subprocesses at each size:

- ``sorted`` (the baseline, what the index did before): every process assigns every sample and
  keeps an int64 argsort of all sample ids by bucket;
- ``compact`` (:class:`fastgen_dm.plan.BucketIndex` today): assigned once per node, shard by
  shard, into a file of one byte a sample; each process maps it and groups a shard only when it
  reads it.

The samples are synthetic: ``--per-shard`` samples a shard, each of one of 12 image sizes drawn
Zipf-like (so 5 aspect-ratio targets get skewed buckets); the dims come from a per-shard seed,
so no index of 10^9 samples has to exist on disk. Each row reports:

- build s: the node's one-time assignment (``compact``: written to the file; ``sorted``: what
  every process does at start);
- open s / RSS MB: a second process's start (``compact``: open the file; ``sorted``: the same
  build again) and its resident set after it (``VmRSS``, of which the file's pages are shared
  page cache), with ``VmHWM``, the kernel's high-water mark;
- lookup us/batch: ``samples()`` of 200 batches of 32, each from 4 consecutive shards, as a
  shard-block reader asks;
- disk MB: the file.

Examples:

    python benchmarks/bench_bucket_index.py --sizes 1e6,1e7 --kinds sorted,compact
    python benchmarks/bench_bucket_index.py --sizes 1e8,1e9 --kinds compact --workdir /tmp/bix
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

MB = 1 << 20
SIZES = np.array([(512, 512), (640, 480), (480, 640), (1024, 768), (768, 1024), (1280, 720), (720, 1280), (800, 800), (1024, 512), (512, 1024), (1920, 800), (600, 1200)])
TARGETS = [[384, 192], [320, 192], [256, 256], [192, 320], [192, 384]]


def shard_dims(shard: int, per_shard: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([7, shard])
    which = np.minimum(rng.zipf(1.6, per_shard) - 1, len(SIZES) - 1)
    return SIZES[which, 0], SIZES[which, 1]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB$", f.read(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def child(spec: dict[str, Any]) -> None:
    from fastgen_dm.index.bucket_store import load_assignment, save_assignment
    from fastgen_dm.plan import BucketIndex, assign_buckets

    shards, per_shard, kind, folder = spec["shards"], spec["per_shard"], spec["kind"], Path(spec["folder"])
    counts = [per_shard] * shards

    def assignments() -> Iterator[np.ndarray]:
        for s in range(shards):
            yield assign_buckets(*shard_dims(s, per_shard), targets=TARGETS)

    start = time.perf_counter()
    if kind == "compact":
        if not spec["open"]:
            save_assignment(folder, assignments(), num_buckets=len(TARGETS), shard_counts=counts)
        assignment, bucket_counts = load_assignment(folder, num_buckets=len(TARGETS), shard_counts=counts)
        index = BucketIndex(assignment, num_buckets=len(TARGETS), shard_counts=counts, counts=bucket_counts)
        lookup = index.samples
        bucket_counts = index.counts
    else:  # one int64 sort of every sample id by bucket, per process
        assignment = np.concatenate(list(assignments()))
        members = np.argsort(assignment, kind="stable").astype(np.int64)
        cell = assignment * shards + np.repeat(np.arange(shards), per_shard)
        bucket_counts = np.bincount(cell, minlength=len(TARGETS) * shards).reshape(len(TARGETS), shards)
        starts = np.concatenate([[0], np.cumsum(bucket_counts.ravel())[:-1]]).reshape(bucket_counts.shape)

        def lookup(bucket: int, shard: np.ndarray, local: np.ndarray) -> np.ndarray:
            return members[starts[bucket, shard] + local]

    seconds = time.perf_counter() - start
    rss, hwm = _status("VmRSS"), _status("VmHWM")
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(200):
        bucket = 2  # the square bucket: every shard has some
        first = int(rng.integers(0, max(shards - 4, 1)))
        shard = np.repeat(np.arange(first, min(first + 4, shards)), 8)[:32]
        local = np.array([rng.integers(0, bucket_counts[bucket, s]) for s in shard])
        batches.append((bucket, shard, local))
    t0 = time.perf_counter()
    for bucket, shard, local in batches:
        lookup(bucket, shard, local)
    per_batch = (time.perf_counter() - t0) / len(batches)
    print(json.dumps({"seconds": seconds, "rss": rss, "hwm": hwm, "lookup_us": per_batch * 1e6}), flush=True)


def run(spec: dict[str, Any], timeout_s: float) -> dict[str, Any] | str:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:.0f} s"
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return f"failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:] or ''}"
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated sample counts")
    parser.add_argument("--kinds", default="sorted,compact", help="sorted (baseline) and/or compact")
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--workdir", default=None, help="where the compact files go (default: a temporary folder, removed)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-bucket-index-"))
    print(f"{'samples':>8} {'kind':>8} {'build s':>8} {'open s':>8} {'RSS MB':>8} {'HWM MB':>8} {'lookup us/batch':>16} {'disk MB':>8}")
    try:
        for size in (int(float(s)) for s in args.sizes.split(",")):
            for kind in args.kinds.split(","):
                folder = workdir / f"{kind}-{size}"
                spec = {"shards": size // args.per_shard, "per_shard": args.per_shard, "kind": kind, "folder": str(folder), "open": False}
                build = run(spec, args.timeout_s)
                reopen = run({**spec, "open": True}, args.timeout_s) if isinstance(build, dict) else build
                if isinstance(reopen, str):
                    print(f"{size:>8.0e} {kind:>8} {reopen}")
                    continue
                disk = sum(f.stat().st_size for f in folder.glob("*")) / MB if folder.exists() else 0.0
                print(
                    f"{size:>8.0e} {kind:>8} {build['seconds']:>8.2f} {reopen['seconds']:>8.3f} {reopen['rss'] / MB:>8.0f} "
                    f"{reopen['hwm'] / MB:>8.0f} {reopen['lookup_us']:>16.0f} {disk:>8.0f}",
                    flush=True,
                )
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
