"""ImageLatentDataModule (epoch mode) against a plain webdataset pipeline over the same shards.

Measures, in one run, on demo shards written to a temporary folder:

1. Throughput: samples/s of ``ImageLatentDataModule`` (epoch mode, offset index built by
   ``prepare_data`` into a temporary ``index_dir``, batch 32) against
   ``webdataset.WebDataset(urls, shardshuffle=False).decode()`` in a
   ``DataLoader(batch_size=32)`` (shards split among workers by webdataset's default
   ``split_by_worker``), for each worker count, with the page cache warmed first so both read
   from memory. Printed as pairs and the ratio ours/plain (target >= 0.9).
2. Read amplification: bytes read per epoch / bytes of the shard files, at 1, 2 and 4
   workers, for ours, for the plain pipeline above, and for the plain pipeline the way many
   loaders are written (``nodesplitter=None, workersplitter=None``: every worker opens every
   shard and keeps sample ``i`` when ``i % N == worker_id``). Target for ours: <= 1.05.
3. Worker memory: peak RSS (and USS) of a DataLoader worker of ``VideoLatentDataModule`` over
   ~3 MB video latents [16, 21, 48, 48] float32, batch 2, 2 workers (target < 500 MB), beside
   the plain pipeline's workers and an idle worker (what a forked worker holds with no data).

How bytes are counted, from outside the library (only ``/proc``: Linux only, no psutil): the
read-amplification epochs run in one spawned subprocess (no threads or workers left over from
the throughput runs; its DataLoader workers are forked, as a plain script's are). Linux adds a
child's I/O counters to its parent's ``/proc/<pid>/io`` when the child is reaped, while
``/proc/<pid>/task/<tid>/io`` holds each thread's own. So once an epoch's workers have exited
and been joined, the workers' total ``rchar`` is (process total delta) - (own threads' delta):
exact, nothing lost between polls, and the main process's reads of the result pipes left out.
What idle workers read just by starting (Python sources, ``/proc``; measured with a loader
that yields one tiny batch per worker) is subtracted. As a cross-check a thread also polls each
worker's ``/proc/<pid>/io`` (max per pid, workers found by parent pid); it can miss the reads
after its last poll. Caveat: ``rchar`` counts the bytes returned by read syscalls on any file,
page-cache hits included. That is what read amplification means here: what the loader asks
the storage for, whatever serves it (a remote store would be asked for the same bytes).

Memory is polled the same way in another spawned subprocess: peak RSS is the kernel's own
high-water mark (``VmHWM`` of ``/proc/<pid>/status``), USS (memory unique to the worker) the
private pages of ``/proc/<pid>/smaps_rollup``. A forked worker's RSS includes pages it shares
with its parent, so an idle worker's is printed beside it.

Timings differ between machines; the ratios travel.

Example (the defaults, about 2-3 minutes on 2 cores):

    python benchmarks/bench_wds.py --samples 4096 --per-shard 256 --latent-shape 4,64,64 \\
        --workers 0,1,2 --repeats 3 --amp-workers 1,2,4

    python benchmarks/bench_wds.py --samples 512 --video-samples 16 --repeats 1   # a quick look
    python benchmarks/bench_wds.py --sections 1 --workers 0 --profile             # where the time goes
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing as mp
import os
import platform
import pstats
import queue as queue_module
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fastgen_dm.datamodules.latents import ImageLatentDataModule, VideoLatentDataModule
from fastgen_dm.prepare.demo_wds import write_demo_shards
from procs import descendants

BATCH = 32
MB = 1 << 20

warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 cores is the point


# -- the loaders --------------------------------------------------------------------------------


def ours_loader(
    folder: str, index_dir: str, workers: int, batch_size: int = BATCH, shuffle: bool = True, video: bool = False, counts_only: bool = False
):
    """The training loader of ``ImageLatentDataModule`` (``VideoLatentDataModule`` when ``video``) over ``folder``.

    ``counts_only``: FastGen's setting, a ``shard_count_file`` and no index: the readers walk each
    shard's headers once for the node (into ``index_dir/offsets``), inside the measured epoch.
    """
    cls = VideoLatentDataModule if video else ImageLatentDataModule
    dm = cls(
        [f"WDS:{folder}"], batch_size=batch_size, num_workers=workers, index_dir=index_dir, pin_memory=False, shuffle=shuffle,
        shard_count_file="shard_counts.json" if counts_only else None,
    )  # fmt: skip
    dm.prepare_data()  # a no-op once the index exists
    dm.setup("fit")
    return dm.train_dataloader()


def build_index(folder: Path, index_dir: str, video: bool = False) -> float:
    """``prepare_data`` once (the offset index), its progress bar kept out of the report; seconds taken."""
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        ours_loader(str(folder), index_dir, 0, video=video)
    return time.perf_counter() - t


def keep_worker_share(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every worker sees every sample and keeps its 1/N (before decoding, the cheap place)."""
    info = get_worker_info()
    worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
    for i, sample in enumerate(samples):
        if i % n == worker:
            yield sample


def plain_loader(urls: list[str], workers: int, every_worker_every_shard: bool = False) -> DataLoader:
    if every_worker_every_shard:
        dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None)
        dataset = dataset.compose(keep_worker_share).decode()
    else:
        dataset = wds.WebDataset(urls, shardshuffle=False).decode()  # split_by_worker: the default
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers)


def count_samples(loader) -> int:
    n = 0
    for batch in loader:
        n += len(batch["fname"] if "fname" in batch else batch["__key__"])
    return n


# -- measuring from outside -------------------------------------------------------------------


def _rchar(path: str) -> int:
    with open(path) as f:
        return int(re.search(r"^rchar: (\d+)$", f.read(), re.M).group(1))


def _own_threads_rchar() -> dict[int, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = _rchar(f"/proc/self/task/{tid}/io")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB$", f.read(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def _uss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        text = f.read()
    return sum(int(v) * 1024 for v in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+) kB$", text, re.M))


class ChildPoller:
    """Polls this process's descendants in a thread; keeps the max of each counter per pid.

    ``rchar`` from ``/proc/<pid>/io``, peak RSS from ``VmHWM`` in ``/proc/<pid>/status`` (the
    kernel's own high-water mark, so a peak between polls is not lost), USS from ``smaps_rollup``.
    """

    def __init__(self, interval: float = 0.01, uss: bool = False) -> None:
        self.interval, self.uss = interval, uss
        self.rchar: dict[int, int] = {}
        self.rss: dict[int, int] = {}
        self.uss_peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self, pid: int) -> None:
        self.rchar[pid] = max(self.rchar.get(pid, 0), _rchar(f"/proc/{pid}/io"))
        self.rss[pid] = max(self.rss.get(pid, 0), _status_kb(pid, "VmHWM"))
        if self.uss:
            self.uss_peak[pid] = max(self.uss_peak.get(pid, 0), _uss(pid))

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for pid in descendants(me):
                try:
                    self._poll(pid)
                except (OSError, AttributeError):  # gone, or a zombie whose files are empty
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> ChildPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _wait_reaped(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while descendants(os.getpid()) and time.monotonic() < deadline:
        mp.active_children()  # joins (reaps) finished multiprocessing children
        time.sleep(0.02)


class _Idle(IterableDataset):
    """One tiny batch per worker: what a DataLoader worker reads and holds just by starting.

    Each worker then lives a moment longer, so that the pollers see it before it exits.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield {"fname": ["idle"]}
        time.sleep(0.25)


def _workers_rchar(make: Callable[[], Any]) -> tuple[int, int, int]:
    """(samples, exact rchar of the workers, polled rchar) of one pass over ``make()``."""
    loader = make()
    whole0, threads0 = _rchar("/proc/self/io"), _own_threads_rchar()
    with ChildPoller() as poller:
        n = count_samples(loader)
        del loader
        _wait_reaped()
        # Read while the poller thread lives: a thread that exits hands its own reads (of /proc)
        # to the process total, where they would look like the workers'.
        whole1, threads1 = _rchar("/proc/self/io"), _own_threads_rchar()
    own = sum(v - threads0.get(t, 0) for t, v in threads1.items())
    return n, (whole1 - whole0) - own, sum(poller.rchar.values())


def amplification_cases(
    cases: list[tuple[str, int]], folder: str, index_dir: str, urls: list[str], shuffle: bool
) -> list[dict[str, int]]:
    """In a spawned subprocess: one epoch per (pipeline, workers); the workers' exact and polled rchar, less idle workers'."""
    idle: dict[int, int] = {}
    out = []
    for kind, workers in cases:
        if workers not in idle:
            idle[workers] = _workers_rchar(lambda: DataLoader(_Idle(), batch_size=None, num_workers=workers))[1]
        if kind == "ours":
            make = lambda: ours_loader(folder, index_dir, workers, shuffle=shuffle)  # noqa: E731
        elif kind == "ours-counts":  # a fresh offsets folder each time: the header walk is measured too
            fresh = tempfile.mkdtemp(dir=index_dir)
            make = lambda: ours_loader(folder, fresh, workers, shuffle=shuffle, counts_only=True)  # noqa: E731
        else:
            make = lambda: plain_loader(urls, workers, every_worker_every_shard=kind == "plain-all")  # noqa: E731
        n, exact, polled = _workers_rchar(make)
        base = idle[workers]
        out.append({"samples": n, "workers_rchar": exact - base, "polled_rchar": polled - base, "idle_rchar": base})
    return out


def _peak_memory(make: Callable[[], Any]) -> tuple[int, int, int, int]:
    """(samples, peak RSS, peak USS, workers seen) of the workers of one pass over ``make()``."""
    loader = make()
    with ChildPoller(interval=0.02, uss=True) as poller:
        n = count_samples(loader)
        del loader
        _wait_reaped()
    return n, max(poller.rss.values(), default=0), max(poller.uss_peak.values(), default=0), len(poller.rss)


def memory_case(folder: str, index_dir: str, urls: list[str], workers: int, batch_size: int) -> dict[str, Any]:
    """In a spawned subprocess: peak worker RSS/USS of one epoch of ours, of plain webdataset and of idle workers."""
    ours = ours_loader(folder, index_dir, workers, batch_size=batch_size, video=True)
    plain = DataLoader(wds.WebDataset(urls, shardshuffle=False).decode(), batch_size=batch_size, num_workers=workers)
    out: dict[str, Any] = {"parent_rss": _status_kb(os.getpid(), "VmRSS")}
    idle = DataLoader(_Idle(), batch_size=None, num_workers=workers)
    for name, loader in (("idle", idle), ("ours", ours), ("plain", plain)):
        out[name] = _peak_memory(lambda: loader)  # noqa: B023
    return out


def _call(queue, start_method: str, fn: Callable[..., Any], args: tuple) -> None:
    # A spawned process inherits "spawn" as its default; give its DataLoader workers the start
    # method a plain script's workers get (fork on Linux), or they would re-import everything.
    mp.set_start_method(start_method, force=True)
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as err:  # report it in the parent rather than hang
        import traceback

        queue.put(("error", f"{err!r}\n{traceback.format_exc()}"))


def in_subprocess(fn: Callable[..., Any], *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call, args=(queue, mp.get_start_method(), fn, args))
    proc.start()
    while True:
        try:
            status, value = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__}: its subprocess died with exit code {proc.exitcode}") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its subprocess: {value}")
    return value


# -- the report --------------------------------------------------------------------------------


def warm_page_cache(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(8 * MB):
                total += len(chunk)
    return total


def rate(make: Callable[[], Any]) -> tuple[float, float, int]:
    """(samples/s of wall time, samples per CPU second of this process and its reaped workers, samples): one epoch."""
    loader = make()
    t0, c0 = time.perf_counter(), os.times()
    n = count_samples(loader)
    del loader
    _wait_reaped()
    t1, c1 = time.perf_counter(), os.times()
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    return n / (t1 - t0), n / max(cpu, 1e-9), n


def best_rates(makers: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float, int]]:
    """Best wall rate and best CPU rate of each loader over ``repeats`` epochs, interleaved (AB, BA, AB, ...)."""
    best: dict[str, tuple[float, float, int]] = {}
    names = list(makers)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            wall, cpu, n = rate(makers[name])
            old = best.get(name, (0.0, 0.0, n))
            best[name] = (max(old[0], wall), max(old[1], cpu), n)
    return best


def profile(label: str, make: Callable[[], Any], top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    count_samples(make())
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    body = text[text.index("ncalls") :] if "ncalls" in text else text
    print(f"\n--- cProfile, {label}, one epoch, 0 workers, top {top} by tottime ---\n{body.rstrip()}")


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4096, help="image latent samples (default 4096)")
    parser.add_argument("--per-shard", type=int, default=256, help="samples per shard (default 256)")
    parser.add_argument("--latent-shape", default="4,64,64", help="image latent C,H,W (default 4,64,64: 64 KB of float32)")
    parser.add_argument("--workers", default="0,1,2", help="worker counts for throughput (default 0,1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per loader, interleaved; best counts (default 3)")
    parser.add_argument("--amp-workers", default="1,2,4", help="worker counts for read amplification (default 1,2,4)")
    parser.add_argument("--no-amp-all", action="store_true", help="skip the every-worker-reads-every-shard plain pipeline")
    parser.add_argument("--video-samples", type=int, default=128, help="video latents for the memory check (default 128)")
    parser.add_argument("--video-shape", default="16,21,48,48", help="video latent shape C,T,H,W (default 16,21,48,48: ~3 MB)")
    parser.add_argument("--video-workers", type=int, default=2)
    parser.add_argument("--video-batch", type=int, default=2)
    parser.add_argument("--no-shuffle", action="store_true", help="ours unshuffled (default: shuffled, as in training)")
    parser.add_argument("--sections", default="1,2,3", help="which measurements to run (default 1,2,3)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one 0-worker epoch of each pipeline")
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument("--workdir", default=None, help="where to write shards and index (default: a temporary folder)")
    args = parser.parse_args()
    shuffle = not args.no_shuffle
    latent_shape = tuple(parse_ints(args.latent_shape))
    video_shape = tuple(parse_ints(args.video_shape))

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(
        f"machine: {os.cpu_count()} CPUs ({affinity} usable), {ram:.1f} GiB RAM, {platform.platform()}\n"
        f"         load average {load} at start (timings share the CPUs with whatever else runs)\n"
        f"         python {platform.python_version()}, torch {torch.__version__}, webdataset {getattr(wds, '__version__', '?')}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        image_dir, video_dir, index_dir = work / "image_latent", work / "video_latent", str(work / "index")
        t = time.perf_counter()
        shards = write_demo_shards(
            image_dir, "image_latent", num_samples=args.samples, samples_per_shard=args.per_shard, latent_shape=latent_shape
        )
        urls = [str(p) for p in shards]
        shard_bytes = sum(p.stat().st_size for p in shards)
        t_write = time.perf_counter() - t
        t_index = build_index(image_dir, index_dir)
        print(
            f"data:    {args.samples} image latents {list(latent_shape)} float32 + txt_emb/txt/json, {args.per_shard} per shard, "
            f"{len(shards)} shards, {shard_bytes / MB:.1f} MB ({shard_bytes / args.samples / 1024:.1f} KB/sample); "
            f"written in {t_write:.1f} s, indexed in {t_index:.2f} s"
        )
        warm_page_cache(shards)
        order = "shuffled (default)" if shuffle else "plan order"
        print(
            f"ours:    ImageLatentDataModule epoch mode, {order}; decodes latent.pth + txt_emb.pth (torch.load weights_only=True)\n"
            f"plain:   WebDataset(urls, shardshuffle=False).decode() + DataLoader(batch_size={BATCH}); decodes every member "
            f"(torch.load weights_only={wds.autodecode.pytorch_weights_only}, webdataset's default)"
        )

        sections = set(parse_ints(args.sections))

        # 1. throughput ----------------------------------------------------------------------
        if 1 in sections:
            print(
                f"\n1. throughput, batch {BATCH}, page cache warm, best of {args.repeats} interleaved epochs per loader "
                f"(target ours/plain >= 0.90)\n"
                f"   wall: samples/s; cpu: samples per CPU second of the main process and its workers (less sensitive to other load)"
            )
            print(
                f"   {'workers':>7}  {'ours wall':>10}  {'plain wall':>10}  {'ours/plain':>10}   "
                f"{'ours cpu':>9}  {'plain cpu':>9}  {'ours/plain':>10}"
            )
            for w in parse_ints(args.workers):
                makers = {
                    "ours": lambda: ours_loader(str(image_dir), index_dir, w, shuffle=shuffle),
                    "plain": lambda: plain_loader(urls, w),
                }
                best = best_rates(makers, args.repeats)
                (ow, oc, on), (pw, pc, pn) = best["ours"], best["plain"]
                flag = "" if ow / pw >= 0.9 else "  < 0.90"
                note = "" if on == pn == args.samples else f"  (samples: ours {on}, plain {pn})"
                print(
                    f"   {w:>7}  {ow:>10.0f}  {pw:>10.0f}  {ow / pw:>9.2f}x   {oc:>9.0f}  {pc:>9.0f}  {oc / pc:>9.2f}x{flag}{note}"
                )

        # 2. read amplification ----------------------------------------------------------------
        if 2 in sections:
            kinds = ["ours", "ours-counts", "plain-split"] + ([] if args.no_amp_all else ["plain-all"])
            print(
                "\n2. read amplification = workers' rchar per epoch / shard bytes (exact: counted at reap; "
                "polled per pid in brackets) (target ours <= 1.05)"
            )
            header = {
                "ours": "ours (index)", "ours-counts": "ours (shard_count_file only)",
                "plain-split": "plain split_by_worker", "plain-all": "plain every worker, every shard",
            }  # fmt: skip
            print(f"   {'workers':>7}  " + "  ".join(f"{header[k]:>31}" for k in kinds))
            cases = [(kind, w) for w in parse_ints(args.amp_workers) for kind in kinds]
            results = dict(zip(cases, in_subprocess(amplification_cases, cases, str(image_dir), index_dir, urls, shuffle)))
            for w in parse_ints(args.amp_workers):
                cells = []
                for kind in kinds:
                    r = results[kind, w]
                    cell = f"{r['workers_rchar'] / shard_bytes:.3f} [{r['polled_rchar'] / shard_bytes:.3f}]"
                    if r["samples"] != args.samples:
                        cell += f" n={r['samples']}"
                    cells.append(f"{cell:>31}")
                print(f"   {w:>7}  " + "  ".join(cells))
            idle = {w: results["ours", w]["idle_rchar"] for w in parse_ints(args.amp_workers)}
            started = ", ".join(f"{v / 1024:.0f} KB for {w}" for w, v in idle.items())
            print(f"   (less what idle workers read just by starting: {started}; with shard_count_file only, the main "
                  "process walks 3 shards' headers at setup to check key_map, about 4% of those shards, not counted here)")

        # 3. worker memory ---------------------------------------------------------------------
        if 3 in sections:
            vshards = write_demo_shards(
                video_dir, "video_latent", num_samples=args.video_samples, samples_per_shard=16, latent_shape=video_shape
            )
            vbytes = sum(p.stat().st_size for p in vshards)
            build_index(video_dir, index_dir, video=True)
            vurls = [str(p) for p in vshards]
            m = in_subprocess(memory_case, str(video_dir), index_dir, vurls, args.video_workers, args.video_batch)
            flag = "ok" if m["ours"][1] < 500 * MB else "ABOVE TARGET"
            per_worker = args.video_samples // args.video_batch // max(args.video_workers, 1)
            print(
                f"\n3. worker memory: {args.video_samples} video latents {list(video_shape)} float32 "
                f"({vbytes / args.video_samples / MB:.1f} MB/sample), batch {args.video_batch}, {args.video_workers} workers, "
                f"one epoch (~{per_worker} batches per worker) (target ours < 500 MB)\n"
                f"   {'':34}{'peak RSS':>10}{'peak USS':>10}{'RSS - idle':>12}"
            )
            rows = (
                ("ours (VideoLatentDataModule)", "ours"),
                ("plain (WebDataset.decode())", "plain"),
                ("idle worker (no data, same fork)", "idle"),
            )
            for label, key in rows:
                n, rss, uss, seen = m[key]
                extra = f"   <- target: {flag}" if key == "ours" else ""
                extra += f"  ({seen} workers, {n} samples)" if key != "idle" else ""
                print(f"   {label:34}{rss / MB:>7.0f} MB{uss / MB:>7.0f} MB{(rss - m['idle'][1]) / MB:>9.0f} MB{extra}")
            print(
                f"   (a forked worker's RSS includes pages it shares with its parent, whose RSS at fork was "
                f"{m['parent_rss'] / MB:.0f} MB; USS is its own)"
            )

        if args.profile:
            profile("ours", lambda: ours_loader(str(image_dir), index_dir, 0, shuffle=shuffle), args.profile_top)
            profile("plain", lambda: plain_loader(urls, 0), args.profile_top)


if __name__ == "__main__":
    main()
