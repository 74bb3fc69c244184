"""``fastgen verify``: decode every training sample once, list the bad ones, write an ignore index.

How bad samples are found (decided per family, by what it offers):

- Every reader logs each sample it skips through ``fastgen_dm.read.bad_data``, the record
  carrying ``bad_sample`` (source, key, cause, message). A handler writes those as JSON lines,
  one file per process. Workers started by fork inherit it, so with fork (Linux) the
  causes of every worker are kept; with spawn or forkserver they are not.
- Families with ``skipped_index_dir`` (every family of this package) also write the keys each
  reader skipped to ``skipped-epoch*-rank*-worker*.json``; those files are the authoritative key
  lists, the log records give the causes. A DataModule without it is read with
  ``num_workers=0`` where workers would not inherit the handler.
- A DataModule that decodes on the device (``decode_jpeg_on_device``, ``decode_on_device``) has
  each batch decoded here as a Trainer would after the transfer (on the CPU), so samples that
  fail there are found too (``skipped-rank0-device.json``).
- A damaged WebDataset shard (cut or corrupt in the middle) is indexed only up to the damage, so
  the samples after it are never planned and never fail: each shard's member headers are walked
  (seeks, a few percent of the bytes), and a sample whose headers precede the damage but that
  the plan leaves out is reported (cause ``ShardReadError``) and goes to the ignore index.
  Samples after the damage have no readable header, so no key: the shard is listed as damaged.

Verify reads one unshuffled epoch from the start with every bad sample tolerated: it sets
``shuffle=False``, ``max_skip_fraction=1.0``, ``sampler_start_idx=0``, ``xflip=False``,
``cache=False`` (the source files are what is checked) and ``resampled=False`` where the
DataModule has them, and says which it changed.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tqdm import tqdm

from fastgen_dm.cli._datamodule import build_datamodule, fail, family_name, is_planned, override, tool_parser, workers_inherit_handlers

DESCRIPTION = (
    "Decode every sample of the DataModule's training set once (one unshuffled epoch, every bad sample "
    "tolerated), list the bad ones grouped by cause with their shard and key, and write them as an ignore "
    "index (the JSON that ignore_index_paths takes). Exit status 0 when every sample is good, 1 when some "
    "are bad (a damaged shard counts unless its lost samples are in the ignore index), 2 on a usage error.\n\n"
    "It sets shuffle=False, max_skip_fraction=1.0, sampler_start_idx=0, xflip=False, cache=False and "
    "resampled=False where the DataModule has them. Workers are kept: readers write the keys they skip to "
    "files, and workers started by fork (Linux) also pass on their logged causes. Damaged shards are found by "
    "walking every shard's member headers."
)
EXAMPLES = (
    "fastgen verify --config configs/image_latent.yaml --out ignore.json",
    "fastgen verify --config configs/image_latent.yaml --data.ignore_index_paths '[\"ignore.json\"]'   # now exits 0",
    "fastgen verify --data DemoDataModule --data.batch_size 256 --max-report 5",
    "fastgen verify --config configs/cifar10.yaml --out bad.json   # then --data.ignore_index_paths '[\"bad.json\"]'",
)
MESSAGE_CHARS = 160  # a bad sample's message is cut to this many characters in the report


@dataclass(frozen=True)
class BadSample:
    """One bad sample: its shard (file name), key, cause (exception type) and message."""

    shard: str
    key: str
    cause: str
    message: str


@dataclass(frozen=True)
class DamagedShard:
    """A shard whose member headers stop being readable at ``offset``.

    ``lost_keys``: keys whose headers precede the damage but that the plan does not read
    (and that no ignore index lists yet).
    """

    url: str
    offset: int
    message: str  # names the shard
    lost_keys: tuple[str, ...]


# -- recording skips in every process --------------------------------------------------------------


class SkipRecorder(logging.Handler):
    """Writes each bad sample that ``BadDataPolicy`` logs (its record's ``bad_sample``) as a JSON
    line to ``folder/skips-<pid>.jsonl``.

    One file per process, opened on the first record in that process (a forked worker reopens
    rather than sharing the parent's file object).
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(logging.WARNING)
        self.folder = folder
        self._file: Any = None
        self._pid: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        entry = getattr(record, "bad_sample", None)  # set by BadDataPolicy.skip
        if entry is None:
            entry = {"source": "", "key": "", "cause": "unparsed", "message": record.getMessage()}
        if self._pid != os.getpid():
            self._file = open(self.folder / f"skips-{os.getpid()}.jsonl", "a", encoding="utf-8")
            self._pid = os.getpid()
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        super().close()


def read_recorded(folder: Path) -> list[dict[str, str]]:
    return [json.loads(line) for path in sorted(folder.glob("skips-*.jsonl")) for line in path.read_text().splitlines() if line]


def merge_bad(recorded: Iterable[Mapping[str, str]], skip_files: Mapping[str, set[str]] | None) -> list[BadSample]:
    """Bad samples from the log records, plus keys only the skip files name (cause ``unknown``).

    Example: records ``[{"source": "s/0.tar", "key": "a", "cause": "KeyError", ...}]`` and skip files
    ``{"0.tar": {"a", "b"}}`` give ``a`` (KeyError) and ``b`` (unknown: logged by a process
    whose records were not kept).
    """
    found: dict[tuple[str, str], BadSample] = {}
    for r in recorded:
        shard = posixpath.basename(r["source"].rstrip("/"))
        found.setdefault((shard, r["key"]), BadSample(shard, r["key"], r["cause"], r["message"]))
    for shard, keys in (skip_files or {}).items():
        for key in keys:
            found.setdefault((shard, key), BadSample(shard, key, "unknown", "logged by a worker whose log records were not kept"))
    return sorted(found.values(), key=lambda b: (b.cause, b.shard, b.key))


# -- damaged shards --------------------------------------------------------------------------------


def walk_keys(url: str, storage_options: Mapping[str, Any] | None) -> tuple[list[str], Exception | None]:
    """The sample keys whose headers are readable, in order, and the damage that stopped the walk."""
    from fastgen_dm.format.tar import INDEX_BLOCK_BYTES, ShardReadError, sample_members, scan_members
    from fastgen_dm.storage import BlockReader, RangeSource

    keys: list[str] = []
    with RangeSource(url, storage_options) as source:
        try:
            walk = scan_members(BlockReader(source, INDEX_BLOCK_BYTES), url, source.size, warn_missing_end=False)
            for key, _, _ in sample_members(walk):
                if not keys or keys[-1] != key:
                    keys.append(key)
        except ShardReadError as err:
            return keys, err
    return keys, None


def damaged_shards(shards: Sequence[Any], storage_options: Mapping[str, Any] | None, threads: int = 8) -> list[DamagedShard]:
    """Walk each shard's headers (in threads); report the damaged ones and the keys the plan lost."""

    def check(shard: Any) -> DamagedShard | None:
        keys, error = walk_keys(shard.url, storage_options)
        if error is None:
            return None
        planned = set(shard.index.keys) if shard.index is not None else set(keys)
        lost = tuple(k for k in keys if k not in planned and k not in shard.ignored)
        return DamagedShard(shard.url, int(getattr(error, "offset", -1)), str(error), lost)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return [d for d in pool.map(check, shards) if d is not None]


# -- the run ---------------------------------------------------------------------------------------


#: What verify changes, where the DataModule takes the argument: one unshuffled epoch, every bad sample tolerated.
ONE_EPOCH = {"shuffle": False, "max_skip_fraction": 1.0, "sampler_start_idx": 0, "xflip": False, "cache": False, "resampled": False}


def _configure(dm: Any, skipped_dir: Path) -> tuple[Any, list[str]]:
    """The DataModule verify reads, and the changes to say (``["shuffle=False", ...]``)."""
    if is_planned(dm):
        changes = {name: value for name, value in ONE_EPOCH.items() if dm.takes(name) and dm.hparams[name] != value}
        # the readers' (and the device decode's) skipped keys land in skipped_dir
        return dm.with_overrides(**changes, skipped_index_dir=str(skipped_dir)), [f"{k}={v!r}" for k, v in changes.items()]
    changed: list[str] = []
    for name, value in ONE_EPOCH.items():
        override(dm, name, value, changed)
    if not workers_inherit_handlers():
        override(dm, "num_workers", 0, changed)  # its skips reach us only as log records of this process
    return dm, changed


def _decode_epoch(dm: Any, show_progress: bool) -> tuple[int, int | None, str | None]:
    """(samples delivered, samples planned or None, the error that stopped the epoch or None)."""
    from fastgen_dm.models.probe import batch_ids_of

    loader = dm.train_dataloader()
    planned = dm.samples_per_epoch() if is_planned(dm) else None
    decodes_later = is_planned(dm) and dm.decode_on_device
    seen: set[Any] = set()  # ids, not counts: a batch that lost every sample repeats the previous one
    error = None
    with tqdm(total=planned, unit="sample", desc="verify", disable=not show_progress) as bar:
        try:
            for batch in loader:
                if decodes_later:  # what a Trainer decodes after the transfer, here on the CPU
                    batch = dm.on_after_batch_transfer(batch, 0)
                before = len(seen)
                seen.update(batch_ids_of(batch))
                bar.update(len(seen) - before)
        except Exception as err:  # report what was found so far, and why the epoch stopped
            error = f"{type(err).__name__}: {err}"
    return len(seen), planned, error


def _ignore_table(bad: Sequence[BadSample], damaged: Sequence[DamagedShard], dm: Any) -> dict[str, list[str]]:
    """Ignore index of the bad and lost samples, plus what the DataModule's ``ignore_index_paths`` already list."""
    table: dict[str, set[str]] = defaultdict(set)
    for b in bad:
        table[b.shard].add(b.key)
    for d in damaged:
        table[posixpath.basename(d.url)].update(d.lost_keys)
    if is_planned(dm):
        for shard, keys in dm.ignored_keys().items():
            table[posixpath.basename(shard)].update(keys)
    return {shard: sorted(keys) for shard, keys in sorted(table.items()) if keys}


def _shorten(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _report(
    name: str, ok: int, planned: int | None, bad: Sequence[BadSample], damaged: Sequence[DamagedShard], max_report: int
) -> None:
    lost = [(d, k) for d in damaged for k in d.lost_keys]
    # ok + bad add up to planned; samples a damaged shard cut off were never planned, so they
    # are counted apart.
    summary = f"{name}: {ok} samples ok, {len(bad)} bad" + (f", {planned} planned" if planned is not None else "")
    if lost:
        summary += f"; {len(lost)} more lost to damaged shards (never planned)"
    print(summary)
    if planned is not None and ok + len(bad) < planned:
        print(f"  {planned - ok - len(bad)} planned samples were not delivered (filtered out by presets_filter, or lost in a stopped epoch)")
    by_cause: dict[str, list[BadSample]] = defaultdict(list)
    for b in bad:
        by_cause[b.cause].append(b)
    for d, key in lost:
        by_cause["ShardReadError"].append(BadSample(posixpath.basename(d.url), key, "ShardReadError", f"cut by the damage at byte {d.offset}"))
    if by_cause:
        print("bad samples by cause:")
    for cause, items in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        print(f"  {cause}: {len(items)}")
        for b in items[:max_report]:
            print(f"    {b.shard}  {b.key}  {_shorten(b.message)}")
        if len(items) > max_report:
            print(f"    ... and {len(items) - max_report} more (--max-report; all are in --out)")
    if damaged:
        print("damaged shards (samples after the damage have no readable header and are not read):")
        for d in damaged:
            print(f"  {d.message}")


def main(argv: list[str]) -> int:
    parser = tool_parser("fastgen verify", DESCRIPTION, EXAMPLES)
    parser.add_argument("--out", metavar="FILE", help="write the ignore index here: {\"<shard file name>\": [keys]} (also when empty)")
    parser.add_argument("--max-report", type=int, default=20, metavar="N", help="bad samples listed per cause (default: 20)")
    parser.add_argument("--shard-threads", type=int, default=8, metavar="N", help="shards whose headers are walked at once (default: 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, rest = parser.parse_known_args(argv)
    if args.max_report < 0:
        fail(parser, f"--max-report must be >= 0, got {args.max_report}")
    if args.shard_threads < 1:
        fail(parser, f"--shard-threads must be >= 1, got {args.shard_threads}")
    dm = build_datamodule(parser, args.config, rest)

    from fastgen_dm.read import bad_data

    skip_log = bad_data.logger
    with tempfile.TemporaryDirectory(prefix="fastgen-verify-") as tmp:
        work = Path(tmp)
        dm, changed = _configure(dm, work)
        if changed:
            print(f"verify reads one unshuffled epoch: set {', '.join(changed)}")
        recorder = SkipRecorder(work)
        saved = skip_log.level, skip_log.propagate
        skip_log.addHandler(recorder)
        skip_log.setLevel(logging.WARNING)
        skip_log.propagate = False  # the summary lists them; one line per bad sample would drown it
        try:
            dm.prepare_data()
            dm.setup("fit")
            ok, planned, stopped = _decode_epoch(dm, not args.no_progress)
        except (FileNotFoundError, ValueError) as err:
            fail(parser, str(err))
        finally:
            skip_log.removeHandler(recorder)
            recorder.close()
            skip_log.setLevel(saved[0])
            skip_log.propagate = saved[1]
        skip_files = bad_data.read_skipped(work) if is_planned(dm) else None
        bad = merge_bad(read_recorded(work), skip_files)

    shards = dm.shards() if is_planned(dm) else ()
    damaged = damaged_shards(shards, dm.storage_options, args.shard_threads) if shards else []
    _report(family_name(dm), ok, planned, bad, damaged, args.max_report)
    if stopped:
        print(f"the epoch stopped early: {stopped}")
    if args.out:
        table = _ignore_table(bad, damaged, dm)
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
        keys = sum(map(len, table.values()))
        print(f"wrote the ignore index ({keys} key{'s' * (keys != 1)} in {len(table)} shard{'s' * (len(table) != 1)}) to {args.out}")
    failed = bool(bad) or any(d.lost_keys for d in damaged) or stopped is not None
    return 1 if failed else 0
