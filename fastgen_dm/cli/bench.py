"""``fastgen bench``: how fast the configured DataModule's training loader delivers, on this machine.

For each ``--workers`` value, one loader run: the time to the first batch (worker start-up
included), then ``--batches`` batches timed as a training loop would consume them, each
followed by a simulated step of ``--step-ms``. Reported:

- samples/s and MB/s (the bytes of the batch tensors, 1 MB = 10^6 bytes) over those batches;
- data wait: the share of the loop spent in ``next()`` (100% when ``--step-ms 0``);
- peak worker RSS: the largest resident memory of one worker process, polled every 50 ms;
- raw ratio: loader MB/s over the raw read speed of the dataset's own files, read once,
  sequentially, before the loader runs (up to ``--raw-mb``). Loader bytes are decoded tensors,
  file bytes may be compressed, so the ratio can pass 1. The page cache is not dropped: after
  the first run both readings are from memory; run twice to compare warm with warm.

A DataModule that decodes after the transfer (``decode_jpeg_on_device``, ``decode_on_device``)
has that step timed with the loader, run here on the CPU as outside a Trainer.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from fastgen_dm.cli._datamodule import build_datamodule, fail, family_name, is_planned, tool_parser

DESCRIPTION = (
    "Measure the DataModule's training loader: time to first batch, samples/s, MB/s, share of time waiting "
    "for data against a simulated step, peak worker memory, and MB/s relative to a raw sequential read of "
    "the same files."
)
EXAMPLES = (
    "fastgen bench --config configs/quickstart.yaml --batches 20 --workers 0,2",
    "fastgen bench --config configs/image_latent.yaml --step-ms 50   # is a 50 ms step kept fed?",
    "fastgen bench --data DemoDataModule --data.batch_size 256 --data.normalize_on_device true",
)
MB = 1e6
READ_BYTES = 8 << 20  # bytes per read of the raw reference
POLL_S = 0.05


@dataclass(frozen=True)
class Result:
    """One loader run: ``batches`` timed after the first, which took ``first_batch_s``."""

    workers: int
    first_batch_s: float
    batches: int
    samples: int
    nbytes: int
    elapsed_s: float
    wait_s: float
    peak_worker_rss: int | None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


def parse_workers(text: str) -> list[int]:
    """``"0,2,4"`` -> ``[0, 2, 4]``; raises ValueError naming the bad entry."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"--workers {text!r}: {part!r} is not a whole number >= 0; e.g. --workers 0,2,4")
        out.append(int(part))
    return out


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor (and numpy array) in a batch, however nested; strings count 0."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


# -- worker memory ---------------------------------------------------------------------------------


def _children_rss_proc(pid: int) -> list[int] | None:
    """RSS in bytes of every descendant of ``pid``, from /proc (Linux without psutil)."""
    if not os.path.isdir("/proc"):
        return None
    try:
        found = _children_from_task_files(pid)
    except OSError:  # a kernel without /proc/<pid>/task/<tid>/children: scan every process's parent
        found = _children_by_scan(pid)
    page = os.sysconf("SC_PAGE_SIZE")
    rss = []
    for child in found:
        try:
            with open(f"/proc/{child}/statm") as f:
                rss.append(int(f.read().split()[1]) * page)
        except OSError:
            continue
    return rss


def _children_from_task_files(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids: list[int] = []
        for tid in os.listdir(f"/proc/{p}/task"):
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids += [int(c) for c in f.read().split()]
            except FileNotFoundError:
                if p == pid:
                    raise
        found += kids
        frontier += kids
    return found


def _children_by_scan(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        parent[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def children_rss(pid: int) -> list[int] | None:
    """RSS in bytes of each descendant process of ``pid`` (psutil, else /proc); None when neither works."""
    try:
        import psutil
    except ImportError:
        return _children_rss_proc(pid)
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out.append(child.memory_info().rss)
        except psutil.Error:
            continue
    return out


class PeakRSS:
    """Polls the largest RSS of one child process in a thread, between ``start()`` and ``stop()``."""

    def __init__(self, interval_s: float = POLL_S) -> None:
        self.interval_s = interval_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> bool:
        """Read the children's RSS now; False when this platform cannot tell."""
        rss = children_rss(os.getpid())
        if rss:
            self.peak = max(self.peak or 0, max(rss))
        return rss is not None

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample():
            self._stop.wait(self.interval_s)

    def start(self) -> PeakRSS:
        self._thread.start()
        return self

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- the raw reference -----------------------------------------------------------------------------


def raw_read(files: Iterable[tuple[str, int]], max_bytes: int, options: Mapping[str, Any] | None) -> tuple[int, float]:
    """(bytes, seconds) to read the files' bytes in order, sequentially, up to ``max_bytes``."""
    from fastgen_dm.storage import open_url

    total, start = 0, time.perf_counter()
    for url, _ in files:
        with open_url(url, "rb", options) as f:
            while total < max_bytes:
                block = f.read(min(READ_BYTES, max_bytes - total))
                if not block:
                    break
                total += len(block)
        if total >= max_bytes:
            break
    return total, time.perf_counter() - start


# -- the loader ------------------------------------------------------------------------------------


def measure(loader: Iterable[Any], workers: int, batches: int, step_s: float) -> Result:
    """Time the first batch, then ``batches`` more, each followed by ``step_s`` of simulated compute."""
    from fastgen_dm.models.probe import batch_size_of

    monitor = PeakRSS().start()
    try:
        start = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - start
        samples = nbytes = count = 0
        wait = 0.0
        loop_start = time.perf_counter()
        for _ in range(batches):
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - t
            samples += batch_size_of(batch)
            nbytes += tensor_bytes(batch)
            count += 1
            if count <= 3:
                monitor.sample()  # a reading while workers surely live: short runs end between two polls
            if step_s:
                time.sleep(step_s)
        elapsed = time.perf_counter() - loop_start
        del it  # shuts the workers down
    finally:
        peak = monitor.stop()
    return Result(workers, first, count, samples, nbytes, elapsed, wait, peak if workers else None)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as right-aligned columns, the first row a header."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def format_results(results: Sequence[Result], raw_mb_per_s: float | None) -> str:
    rows = [["workers", "first batch s", "batches", "samples/s", "MB/s", "raw ratio", "data wait", "peak worker RSS MiB"]]
    for r in results:
        rows.append([
            str(r.workers),
            f"{r.first_batch_s:.2f}",
            str(r.batches),
            f"{r.samples_per_s:.1f}",
            f"{r.mb_per_s:.1f}",
            f"{r.mb_per_s / raw_mb_per_s:.2f}x" if raw_mb_per_s else "-",
            f"{r.wait_share:.0%}",
            f"{r.peak_worker_rss / 2**20:.0f}" if r.peak_worker_rss is not None else "-",
        ])  # fmt: skip
    return table(rows)


def _with_workers(dm: Any, workers: int, planned: bool) -> Any:
    """``dm`` with ``num_workers=workers``, set up: a rebuilt DataModule, or (another package's) ``dm`` itself changed."""
    if not planned:
        dm.num_workers = workers
        return dm
    if workers == dm.num_workers:
        return dm
    rebuilt = dm.with_overrides(num_workers=workers)
    rebuilt.setup("fit")
    return rebuilt


def main(argv: list[str]) -> int:
    parser = tool_parser("fastgen bench", DESCRIPTION, EXAMPLES)
    parser.add_argument("--batches", type=int, default=50, metavar="N", help="batches timed after the first (default: 50; fewer if the epoch ends)")
    parser.add_argument("--workers", metavar="LIST", help="num_workers values to sweep, e.g. 0,2,4 (default: the DataModule's)")
    parser.add_argument("--step-ms", type=float, default=0.0, metavar="MS", help="simulated training step after each batch, in ms (default: 0)")
    parser.add_argument("--raw-mb", type=float, default=1024.0, metavar="MB", help="read at most this many MB of the files for the raw reference; 0 skips it (default: 1024)")
    args, rest = parser.parse_known_args(argv)
    if args.batches < 1:
        fail(parser, f"--batches must be >= 1, got {args.batches}")
    if args.step_ms < 0:
        fail(parser, f"--step-ms must be >= 0, got {args.step_ms}")
    if args.raw_mb < 0:
        fail(parser, f"--raw-mb must be >= 0, got {args.raw_mb}")
    try:
        sweep = parse_workers(args.workers) if args.workers is not None else None
    except ValueError as err:
        fail(parser, str(err))
    dm = build_datamodule(parser, args.config, rest)
    try:
        dm.prepare_data()
        dm.setup("fit")
        print(f"fastgen bench: {family_name(dm)}, batch_size {dm.batch_size}, up to {args.batches} batches after the first, step {args.step_ms:g} ms")
        raw_mb_per_s = None
        planned = is_planned(dm)
        files = dm.data_files() if planned else []  # another package's DataModule names no files
        if args.raw_mb and files:
            nbytes, seconds = raw_read(files, int(args.raw_mb * MB), dm.storage_options)
            raw_mb_per_s = nbytes / MB / seconds if seconds > 0 else None
            print(f"raw read: {nbytes / MB:.1f} MB of {len(files)} file(s) in {seconds:.3f} s = {raw_mb_per_s or 0:.1f} MB/s")
        decodes_later = planned and dm.decode_on_device
        if decodes_later:
            print("the DataModule decodes after the transfer: each batch is decoded here, on the CPU, and timed with the loader")
        results = []
        for workers in sweep if sweep is not None else [dm.num_workers]:
            run_dm = _with_workers(dm, workers, planned)
            loader = run_dm.train_dataloader()
            if decodes_later:
                loader = (run_dm.on_after_batch_transfer(batch, 0) for batch in loader)
            results.append(measure(loader, workers, args.batches, args.step_ms / 1000))
    except (FileNotFoundError, ValueError) as err:
        fail(parser, str(err))
    print(format_results(results, raw_mb_per_s))
    short = sorted({r.batches for r in results if r.batches < args.batches})
    if short:  # the table's "batches" column says how many were timed; say why it is fewer
        print(f"the epoch ended after {', '.join(map(str, short))} of the {args.batches} batches asked for (--batches)")
    return 0
