"""The bad-data policy: skip a corrupt sample, count it, log it once, stop when there are too many.

One object per reader (process). It never sleeps and never swallows silently: each skipped
sample is logged once with its source and key, kept for an ignore index, and the skipped
fraction is checked against a ceiling.
"""

from __future__ import annotations

import itertools

import json
import logging
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterable, Iterator, TypeVar

import torch

from fastgen_dm.storage import write_atomic

logger = logging.getLogger(__name__)


Batch = TypeVar("Batch")


class TooManyBadSamplesError(RuntimeError):
    """The skipped fraction passed ``max_skip_fraction``."""


#: Samples the ceiling assumes were seen before it is checked, so a bad first sample does not trip it.
GRACE_SAMPLES = 1000


def new_tally(readers: int) -> torch.Tensor:
    """A run's bad-data tally shared by a rank's processes: int64 (readers + 1, 2) of (seen, skipped).

    Row 0 holds what the main process counts (and what a checkpoint restored); row ``1 + w``
    what worker ``w`` counts. Each row has one writer, so no lock is needed, and the sum is the
    rank's whole run, across epochs, workers and resumes.
    """
    return torch.zeros((readers + 1, 2), dtype=torch.int64).share_memory_()


@dataclass
class BadDataPolicy:
    """Counts bad samples and enforces a ceiling on their share over the whole run of a rank.

    Args:
        max_skip_fraction: Largest tolerated share of skipped samples: skipping raises once the
            rank's run totals give ``skipped > max_skip_fraction * max(seen, grace_samples)``.
            0 makes any bad sample an error.
        grace_samples: Samples the ceiling assumes were seen before it is checked.
        tally: The rank's shared run totals (:func:`new_tally`); None counts this policy alone.
        slot: This policy's row of ``tally``.
    """

    max_skip_fraction: float = 0.0
    grace_samples: int = GRACE_SAMPLES
    tally: torch.Tensor | None = field(default=None, repr=False)
    slot: int = 0
    seen: int = 0
    skipped: int = 0
    causes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_keys: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        # numpy's view of the shared memory: a tensor's indexing costs ~100x more per sample
        self._row = None if self.tally is None else self.tally.numpy()[self.slot]

    def ok(self) -> None:
        """One sample was read and decoded."""
        self.seen += 1
        if self._row is not None:
            self._row[0] += 1

    def totals(self) -> tuple[int, int]:
        """``(seen, skipped)`` of the run so far (this policy's alone without a tally)."""
        if self.tally is None:
            return self.seen, self.skipped
        seen, skipped = self.tally.sum(dim=0).tolist()
        return seen, skipped

    def skip(self, source: str, key: str, error: BaseException) -> None:
        """One sample is bad: count it, log it once, and raise when the ceiling is passed."""
        self.seen += 1
        self.skipped += 1
        if self._row is not None:
            self._row += 1
        cause = type(error).__name__
        self.causes[cause] += 1
        self.skipped_keys[source].append(key)
        # ``bad_sample`` on the record: what tools (``fastgen verify``) read, rather than parsing the text
        bad_sample = {"source": str(source), "key": str(key), "cause": cause, "message": str(error)}
        logger.warning("skipping bad sample %s in %s: %s: %s", key, source, cause, error, extra={"bad_sample": bad_sample})
        seen, skipped = self.totals()
        if skipped > self.max_skip_fraction * max(seen, self.grace_samples):
            raise TooManyBadSamplesError(
                f"{skipped} of {seen} samples were bad (max_skip_fraction={self.max_skip_fraction}) over this GPU's "
                f"run so far; last: {key} in {source}: {cause}: {error}. Fix or drop the data (`fastgen verify` "
                "lists it), or raise max_skip_fraction"
            ) from error

    def write_skipped(self, folder: str | None, name: str) -> None:
        """Write the skipped keys as the ignore index ``<folder>/<name>.json``, which
        ``ignore_index_paths`` takes: ``{"<source file name>": ["<key>", ...]}``. Nothing without a
        folder or a skip."""
        if folder is None or not self.skipped_keys:
            return
        table = {posixpath.basename(source.rstrip("/")): sorted(set(keys)) for source, keys in self.skipped_keys.items()}
        write_atomic(Path(folder) / f"{name}.json", json.dumps(table, indent=1).encode())


def skipped_name(rank: int, reader: str, epoch: int | None = None) -> str:
    """The name (before ``.json``) of one reader's skipped keys in ``skipped_index_dir``.

    ``skipped_name(1, "worker2", epoch=0)`` -> ``"skipped-epoch0-rank1-worker2"``;
    ``skipped_name(0, "device")`` -> ``"skipped-rank0-device"`` (what failed after the transfer).
    """
    return f"skipped-rank{rank}-{reader}" if epoch is None else f"skipped-epoch{epoch}-rank{rank}-{reader}"


def read_skipped(folder: str | Path) -> dict[str, set[str]]:
    """Merge every reader's skipped keys (the files :func:`skipped_name` names) in ``folder``: source file name -> keys."""
    merged: dict[str, set[str]] = defaultdict(set)
    for path in sorted(Path(folder).glob("skipped-*.json")):
        for source, keys in json.loads(path.read_text()).items():
            merged[source].update(keys)
    return dict(merged)


class StandIn(Generic[Batch]):
    """A reader's last good batch, which stands in for a batch that lost every sample.

    A reader that yields nothing for a lost batch leaves its rank a step short of the others, and
    DDP hangs; repeating the previous batch keeps every rank stepping.
    """

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.last: Batch | None = None

    def good(self, batch: Batch) -> Batch:
        self.last = batch
        return batch

    def lost(self, what: str) -> Batch | None:
        """The batch to deliver instead (logged, naming ``what`` was lost); None before any good one."""
        if self.last is not None:
            logger.warning("%s: %s; repeating the previous batch", self.reader, what)
        return self.last


def keep_stepping(batches: Iterable[Batch | None], reader: str, groups: Iterable[int] | None = None) -> Iterator[Batch]:
    """Yield one batch for every element of ``batches``, standing in for the lost ones (None).

    A reader that loses every sample of a batch must still yield one, or its rank takes fewer
    steps than the others and DDP hangs. A lost batch is replaced by the previous good one; lost
    batches before the first good one are replaced by that first good one. Only a reader that
    loses every batch it has raises.

    Args:
        batches: A reader's batches in plan order; None for a batch whose samples were all bad.
        reader: Names the reader in logs and errors, e.g. ``"rank 0 worker 1"``.
        groups: Each batch's group (its bucket), in order: a lost batch is replaced by the last
            good one of its own group, so the step keeps its shape; only when its group has
            none yet, by the last good one of any group (logged).

    Example: ``[None, a, None, b]`` -> ``[a, a, a, b]``; with groups ``[0, 0, 1, 1]``,
    ``[a, None, c, None]`` -> ``[a, a, c, c]``.
    """
    stand_in: StandIn[Batch] = StandIn(reader)
    by_group: dict[int, StandIn[Batch]] = {}
    lost_before_first = 0
    for j, (batch, group) in enumerate(zip(batches, itertools.repeat(None) if groups is None else groups)):
        if batch is None:
            own = by_group.get(group) if group is not None else None
            if own is not None and own.last is not None:
                batch = own.lost(f"batch {j} lost every sample")
            else:
                if group is not None and stand_in.last is not None:
                    logger.warning("%s: batch %d (group %d) lost every sample before any good batch of its group; its stand-in has another shape", reader, j, group)
                batch = stand_in.lost(f"batch {j} lost every sample")
            if batch is None:
                lost_before_first += 1
                continue
        elif group is not None:
            by_group.setdefault(group, StandIn(reader)).good(batch)
        for _ in range(lost_before_first):
            logger.warning("%s: a batch before its first good one lost every sample; repeating the first good one", reader)
            yield batch
        lost_before_first = 0
        yield stand_in.good(batch)
    if lost_before_first:
        raise TooManyBadSamplesError(f"{reader}: every sample of its {lost_before_first} batches was bad or filtered out")
