"""Start-up cost against dataset size: time to the first batch and peak memory at 10^6 .. 10^9 samples.

The plan must not grow with the dataset (issue 10, "plan independent of dataset size"): a start
at 10^9 samples should reach its first batch within 2x the time at 10^6, with peak RSS under
1.5 GB, and a resume in the middle of the epoch should cost the same as a fresh start.

The data is counts, not bytes: one real tar of ``--per-shard`` samples (one tiny ``cls``
member each, 1 KB of tar per sample) and, per size N, a folder of N / per-shard symbolic links
to it with a ``shard_count_file`` that gives each link per-shard samples: exactly what the tar
holds, so every planned sample exists. 10^9 samples are 10^5 links to a 10 MB tar.

Each (size, workers, start) runs in a fresh subprocess (its own process group) that builds
``WDSDataModule(datatags=["WDS:<links>"], shard_count_file=..., key_map={"label": "cls"},
num_workers=..., **--dm-kwargs)`` and then calls ``prepare_data``, ``setup("fit")``,
(for a resume: ``load_state_dict({"epoch": 0, "position": N // 2, "seed": 0})``),
``train_dataloader`` and takes batches until every worker has delivered one. It reports:

- first batch: seconds from constructing the DataModule to the first batch, with the phases
  (``prepare_data``, ``setup``, loader to first batch) and the time until every worker's first
  batch;
- peak RSS: ``VmHWM`` (the kernel's high-water mark) of the process and of each DataLoader
  worker, read from ``/proc`` once every worker has delivered (a forked worker's figure
  includes pages it still shares with the parent), beside the process's after its imports
  alone ("import MB": torch and Lightning, before any DataModule) and the largest sum of the
  RSS of the process and its workers seen while polling ("tree MB": shared pages count in
  each).

Each subprocess runs under ``--timeout-s`` and ``--memory-limit-gb`` (the sum of the RSS of
the process and its workers, polled every 50 ms from here): past either, its process group is
killed and the row says "timed out in <phase>" or "over memory limit in <phase>", so the
benchmark finishes against code that cannot start at a size. Each subprocess gets a fresh
``index_dir`` (a node that has not seen the data), unless ``--reuse-index`` shares one per size.

Examples (10^9 samples are 10^5 links, made once per --workdir; a size that cannot start
costs its timeout per row; the first line is a quick look):

    python benchmarks/bench_scale.py --sizes 1e6,1e7 --workers 0
    python benchmarks/bench_scale.py --sizes 1e6,1e8,1e9 --workers 0,2 --timeout-s 300
    python benchmarks/bench_scale.py --sizes 1e6,1e7 --dm-kwargs '{"shuffle": false}'
    python benchmarks/bench_scale.py --sizes 1e6,1e7,1e8 --timeouts 240,240,90 --no-prepare-data
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import selectors
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any
from procs import descendants

MB = 1 << 20
PHASES = ("start", "constructed", "prepare_data", "setup", "first_batch", "all_workers")


# -- the data -----------------------------------------------------------------------------------


def write_base_tar(path: Path, samples: int) -> Path:
    """A tar of ``samples`` samples ``<8 digits>.cls`` holding b"0": the smallest valid sample."""
    if path.exists():
        return path
    tmp = path.with_suffix(".part")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        payload = b"0"
        for k in range(samples):
            info = tarfile.TarInfo(f"{k:08d}.cls")
            info.size, info.mtime = len(payload), 0
            tf.addfile(info, io.BytesIO(payload))
    tmp.rename(path)
    return path


def link_folder(root: Path, base: Path, samples: int, per_shard: int) -> tuple[Path, Path]:
    """(folder of ``samples / per_shard`` links to ``base``, its count file); reused when complete."""
    shards = samples // per_shard
    folder = root / f"links-{samples}"
    counts = root / f"counts-{samples}.json"
    if counts.exists():
        return folder, counts
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{k:06d}.tar" for k in range(shards)]
    for name in names:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(base)
    tmp = counts.with_suffix(".part")
    tmp.write_text(json.dumps(dict.fromkeys(names, per_shard)))
    tmp.rename(counts)
    return folder, counts


# -- the child: one start ---------------------------------------------------------------------


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"^VmHWM:\s+(\d+) kB$", f.read(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def child(spec: dict[str, Any]) -> None:
    """Run one start and print one JSON line per phase (seconds since construction began)."""
    from fastgen_dm import WDSDataModule  # before the clock starts: the import is not the DataModule's cost

    start = time.perf_counter()

    def emit(phase: str, **extra: Any) -> None:
        print(json.dumps({"phase": phase, "t": time.perf_counter() - start, **extra}), flush=True)

    emit("start", main_hwm=_vm_hwm(os.getpid()))
    kwargs = {"key_map": {"label": "cls"}, "pin_memory": False, **spec["dm_kwargs"]}
    dm = WDSDataModule(
        datatags=[f"WDS:{spec['folder']}"], batch_size=spec["batch_size"], num_workers=spec["workers"],
        shard_count_file=spec["count_file"], index_dir=spec["index_dir"], **kwargs,
    )  # fmt: skip
    emit("constructed")
    if spec["prepare_data"]:
        dm.prepare_data()
    emit("prepare_data")
    dm.setup("fit")
    emit("setup")
    if spec["resume"]:
        dm.load_state_dict({"epoch": 0, "position": spec["samples"] // 2, "seed": 0})
    batches = iter(dm.train_dataloader())
    next(batches)
    emit("first_batch")
    for _ in range(max(spec["workers"], 1) - 1):  # the DataLoader takes batches from workers in turn
        next(batches)
    workers = descendants(os.getpid())
    worker_hwm = []
    for pid in workers:
        try:
            worker_hwm.append(_vm_hwm(pid))
        except OSError:
            pass
    emit("all_workers", main_hwm=_vm_hwm(os.getpid()), worker_hwm=worker_hwm)
    os._exit(0)  # the workers are not needed any more; do not wait for an orderly shutdown


# -- the parent: run, watch, report -----------------------------------------------------------


def _tree_rss(pid: int) -> int:
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                match = re.search(r"^VmRSS:\s+(\d+) kB$", f.read(), re.M)
            total += int(match.group(1)) * 1024 if match else 0
        except OSError:
            pass
    return total


def run_one(spec: dict[str, Any], timeout_s: float, memory_limit: int) -> dict[str, Any]:
    """Run :func:`child` in a fresh process group under the limits; its phases and how it ended."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    phases: dict[str, Any] = {}
    peak_tree = 0
    status = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while proc.poll() is None:
        for _ in sel.select(timeout=0.05):
            chunk = os.read(proc.stdout.fileno(), 65536)
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                record = json.loads(line)
                phases[record.pop("phase")] = record
        peak_tree = max(peak_tree, _tree_rss(proc.pid))
        if peak_tree > memory_limit:
            status = f"over memory limit ({memory_limit / 2**30:.1f} GB)"
        elif time.monotonic() > deadline:
            status = f"timed out ({timeout_s:.0f} s)"
        if status:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the child's os._exit
    except ProcessLookupError:
        pass
    rest = proc.stdout.read()
    for line in (buffer + rest).splitlines():
        record = json.loads(line)
        phases[record.pop("phase")] = record
    stderr = proc.stderr.read().decode("utf-8", "replace")
    if status is None and "all_workers" not in phases:
        status = "out of memory (killed)" if proc.returncode == -signal.SIGKILL else f"failed (exit {proc.returncode})"
    reached = [p for p in PHASES if p in phases][-1] if phases else "start"
    return {"status": status or "ok", "reached": reached, "phases": phases, "peak_tree": peak_tree, "stderr": stderr}


def fmt_s(phases: dict[str, Any], a: str, b: str) -> str:
    if a in phases and b in phases:
        return f"{phases[b]['t'] - phases[a]['t']:.2f}"
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1e6,1e8,1e9", help="dataset sizes in samples (default 1e6,1e8,1e9)")
    parser.add_argument("--per-shard", type=int, default=10_000, help="samples per shard (default 10,000)")
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts (default 0,2)")
    parser.add_argument("--starts", default="fresh,resume", help="fresh and/or resume (at N // 2) (default both)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per subprocess (default 300)")
    parser.add_argument("--timeouts", default=None, help="per size, comma separated, overriding --timeout-s (e.g. 300,300,60)")
    parser.add_argument("--memory-limit-gb", type=float, default=4.0, help="RSS of a subprocess and its workers (default 4)")
    parser.add_argument("--reuse-index", action="store_true", help="one index_dir per size, shared by its runs")
    parser.add_argument("--no-prepare-data", action="store_true",
                        help="skip prepare_data: a start as on every rank but each node's first (Lightning calls it once per node)")
    parser.add_argument("--dm-kwargs", type=json.loads, default={}, help="extra WDSDataModule arguments as JSON")
    parser.add_argument("--workdir", default=None, help="where the tar and links go (default: a temporary folder)")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    sizes = [int(float(x)) for x in args.sizes.split(",")]
    timeouts = [float(x) for x in args.timeouts.split(",")] if args.timeouts else [args.timeout_s] * len(sizes)
    if len(timeouts) != len(sizes):
        parser.error(f"--timeouts has {len(timeouts)} values for {len(sizes)} sizes")
    for n in sizes:
        if n % args.per_shard:
            parser.error(f"size {n} is not a multiple of --per-shard {args.per_shard}")
    workers = [int(x) for x in args.workers.split(",")]
    starts = [s.strip() for s in args.starts.split(",")]
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, python {platform.python_version()}\n"
        f"         load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at start\n"
        f"dm:      WDSDataModule(shard_count_file=..., key_map={{'label': 'cls'}}, batch_size={args.batch_size}) + "
        f"{json.dumps(args.dm_kwargs)}; {args.per_shard} samples per shard (links to one tar)"
        + ("; prepare_data skipped" if args.no_prepare_data else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        base = write_base_tar(root / f"base-{args.per_shard}.tar", args.per_shard)
        print(f"data:    {base} ({base.stat().st_size / MB:.1f} MB)")
        header = (
            f"   {'samples':>13} {'workers':>7} {'start':>6}  {'status':<50} {'prepare s':>9} {'setup s':>8} "
            f"{'loader s':>8} {'first s':>8} {'all wk s':>8} {'import MB':>9} {'main MB':>8} {'worker MB':>9} {'tree MB':>8}"
        )
        print("\n" + header)
        rows: list[dict[str, Any]] = []
        for n, timeout_s in zip(sizes, timeouts):
            t = time.perf_counter()
            folder, count_file = link_folder(root, base, n, args.per_shard)
            made = time.perf_counter() - t
            for w in workers:
                for start in starts:
                    index_dir = root / (f"index-{n}" if args.reuse_index else f"index-{n}-{w}-{start}")
                    spec = {
                        "folder": str(folder), "count_file": str(count_file), "index_dir": str(index_dir),
                        "samples": n, "workers": w, "resume": start == "resume", "batch_size": args.batch_size,
                        "dm_kwargs": args.dm_kwargs, "prepare_data": not args.no_prepare_data,
                    }  # fmt: skip
                    r = run_one(spec, timeout_s, int(args.memory_limit_gb * 2**30))
                    r.update(samples=n, workers=w, start=start)
                    rows.append(r)
                    print_row(r)
                    if r["status"].startswith("failed"):
                        print("      " + "\n      ".join(r["stderr"].strip().splitlines()[-6:]))
            if made > 1:
                print(f"   (links for {n} samples made in {made:.0f} s)")
        print_ratios(rows, sizes[0])
    print(f"\nload average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at end")


def print_row(r: dict[str, Any]) -> None:
    p = r["phases"]
    status = r["status"] if r["status"] == "ok" else f"{r['status']} in {_next_phase(r['reached'])}"
    end = p.get("all_workers", {})
    main_mb = f"{end['main_hwm'] / MB:.0f}" if end else "-"
    import_mb = f"{p['start']['main_hwm'] / MB:.0f}" if "start" in p else "-"
    worker_mb = f"{max(end['worker_hwm']) / MB:.0f}" if end.get("worker_hwm") else "-"
    print(
        f"   {r['samples']:>13,} {r['workers']:>7} {r['start']:>6}  {status:<50} {fmt_s(p, 'constructed', 'prepare_data'):>9} "
        f"{fmt_s(p, 'prepare_data', 'setup'):>8} {fmt_s(p, 'setup', 'first_batch'):>8} {fmt_s(p, 'start', 'first_batch'):>8} "
        f"{fmt_s(p, 'start', 'all_workers'):>8} {import_mb:>9} {main_mb:>8} {worker_mb:>9} {r['peak_tree'] / MB:>8.0f}",
        flush=True,
    )


def _next_phase(reached: str) -> str:
    """The phase that was running: the one after the last reported."""
    names = {"start": "construction", "constructed": "prepare_data", "prepare_data": "setup", "setup": "loader/first batch",
             "first_batch": "other workers' first batch"}  # fmt: skip
    return names.get(reached, reached)


def _peak(r: dict[str, Any]) -> int | None:
    end = r["phases"].get("all_workers")
    if not end:
        return None
    return max([end["main_hwm"], *end["worker_hwm"]])


def print_ratios(rows: list[dict[str, Any]], reference: int) -> None:
    print(
        f"\n   against the {reference:,} row (target at 10^9: first batch <= 2x, peak RSS < 1.5 GB; "
        f"peak = max of the process and each worker)"
    )
    base = {(r["workers"], r["start"]): r for r in rows if r["samples"] == reference}
    for r in rows:
        ref = base.get((r["workers"], r["start"]))
        first = r["phases"].get("first_batch")
        ref_first = ref["phases"].get("first_batch") if ref else None
        ratio = f"{first['t'] / ref_first['t']:.2f}x" if first and ref_first else "-"
        peak = _peak(r)
        peak_text = f"{peak / MB:.0f} MB" + ("" if peak < 1.5 * 2**30 else " (above 1.5 GB)") if peak else "-"
        print(f"   {r['samples']:>13,} {r['workers']:>7} {r['start']:>6}  first batch {ratio:>8}   peak RSS {peak_text}")


if __name__ == "__main__":
    main()
