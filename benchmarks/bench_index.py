"""Samples/s of ``index_shard`` / ``index_shards`` against the tarfile header walk it replaced.

The baseline is the walk fastgen-dm used before (``tarfile.TarFile.next`` over a block reader,
one member at a time), re-implemented here so both run in the same process on the same shards.
The shards are what webdataset's ``TarWriter`` writes (a pax header before every member), of
small samples of two members, so the walk parses every header and seeks over nothing.

    python benchmarks/bench_index.py [--shards 100] [--samples 10000] [--processes 2] [--baseline-shards 10]
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from fastgen_dm.format.tar import INDEX_BLOCK_BYTES, split_name
from fastgen_dm.index import index_shard, index_shards
from fastgen_dm.storage import BlockReader, RangeSource


def write_shards(folder: Path, shards: int, samples: int) -> list[str]:
    """``shards`` webdataset shards of ``samples`` samples (a 100-byte .jpg and a 20-byte .json).

    One shard is written with webdataset's ``TarWriter``; the others are hard links to it (the
    walk's cost does not depend on the keys, and writing 10^6 samples would take minutes).
    """
    import webdataset

    first = folder / "00000.tar"
    with webdataset.TarWriter(str(first)) as writer:
        for k in range(samples):
            writer.write({"__key__": f"{k:08d}", "jpg": bytes(100), "json": b'{"label": 1, "k": 12345}'})
    for s in range(1, shards):
        os.link(first, folder / f"{s:05d}.tar")
    return [str(folder / f"{s:05d}.tar") for s in range(shards)]


def baseline_index_shard(url: str) -> int:
    """The previous walk: tarfile's header parser over a 32 KiB block reader; returns the sample count."""
    keys: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    with RangeSource(url) as source:
        f = BlockReader(source, INDEX_BLOCK_BYTES)
        tf = tarfile.TarFile(fileobj=f, mode="r", encoding="utf-8", errors="surrogateescape")
        while True:
            info = tf.next()
            if info is None:
                break
            tf.members = []
            parts = split_name(info.name) if info.isreg() else None
            if parts is None:
                continue
            if not keys or parts[0] != keys[-1]:
                keys.append(parts[0])
                starts.append(info.offset)
                ends.append(tf.offset)
            else:
                ends[-1] = tf.offset
    np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
    return len(keys)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--samples", type=int, default=10_000, help="samples per shard")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes of index_shards")
    parser.add_argument("--baseline-shards", type=int, default=10, help="shards the (slow) baseline indexes (its rate is per sample)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t, urls = timed(write_shards, Path(tmp), args.shards, args.samples)
        total = args.shards * args.samples
        print(f"wrote {args.shards} shards x {args.samples} samples ({sum(os.path.getsize(u) for u in urls) / 2**20:.0f} MiB) in {t:.1f} s")
        base_urls = urls[: args.baseline_shards]
        t_base, counts = timed(lambda: [baseline_index_shard(u) for u in base_urls])
        assert sum(counts) == len(base_urls) * args.samples
        base_rate = len(base_urls) * args.samples / t_base
        t_one, indexes = timed(lambda: [index_shard(u) for u in urls])
        assert [i.count for i in indexes] == [args.samples] * len(urls)
        one_rate = total / t_one
        t_threads, _ = timed(index_shards, urls, num_processes=1, show_progress=False)
        t_procs, _ = timed(index_shards, urls, num_processes=args.processes, show_progress=False)
        print(f"baseline (tarfile walk, 1 core):         {base_rate:>10,.0f} samples/s")
        print(f"index_shard (1 core):                    {one_rate:>10,.0f} samples/s  {one_rate / base_rate:5.1f}x")
        print(f"index_shards, in process:                {total / t_threads:>10,.0f} samples/s  {total / t_threads / base_rate:5.1f}x")
        print(f"index_shards, {args.processes} processes:               {total / t_procs:>10,.0f} samples/s  {total / t_procs / base_rate:5.1f}x")


if __name__ == "__main__":
    main()
