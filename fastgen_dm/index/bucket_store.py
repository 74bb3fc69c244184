"""The node's file of each sample's bucket: written once, memory-mapped by every process.

A folder of two ``.npy`` files: ``assignment.npy``, one unsigned integer a sample (uint8 up to
256 buckets, else uint16) in file order over the shards, and ``counts.npy``, int64 (buckets,
shards). Each appears complete or not at all (:class:`AtomicPath`), the counts last, so a reader
never sees half of it; writers racing on one folder write the same bytes.

Example: ``save_assignment(folder, ([1, 0], [1, 1]), num_buckets=2, shard_counts=[2, 2])`` ->
``load_assignment(folder, num_buckets=2, shard_counts=[2, 2])`` maps ``[1, 0, 1, 1]`` with
counts ``[[1, 0], [1, 2]]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fastgen_dm.storage import AtomicPath

_ASSIGNMENT, _COUNTS = "assignment.npy", "counts.npy"


def assignment_dtype(num_buckets: int) -> np.dtype:
    """The smallest unsigned integer that holds ``num_buckets`` bucket numbers (uint8 up to 256)."""
    if not 1 <= num_buckets <= 1 << 16:
        raise ValueError(f"num_buckets must be in [1, 65536], got {num_buckets}")
    return np.dtype(np.uint8 if num_buckets <= 256 else np.uint16)


class MappedAssignment:
    """``assignment.npy`` memory-mapped: pickled as its path, so a spawned worker maps the file
    again instead of receiving every sample's bucket. Sliced like the array it maps."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.array: np.ndarray = np.load(self.path, mmap_mode="r")

    @property
    def size(self) -> int:
        return int(self.array.size)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]

    def __getstate__(self) -> dict[str, str]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


def save_assignment(
    folder: str | os.PathLike[str], shard_assignments: Iterable[Sequence[int] | np.ndarray], *, num_buckets: int, shard_counts: Sequence[int] | np.ndarray
) -> None:
    """Write each shard's buckets (given one shard at a time, in order) into ``folder``; memory is one shard's.

    Raises:
        ValueError: A shard's assignment of another length than its count, a bucket outside
            ``[0, num_buckets)``, or fewer shards than ``shard_counts``.
    """
    folder = Path(folder)
    first = np.concatenate([[0], np.cumsum(np.asarray(shard_counts, dtype=np.int64))])
    counts = np.zeros((num_buckets, first.size - 1), np.int64)
    with AtomicPath(folder / _ASSIGNMENT) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=assignment_dtype(num_buckets), shape=(int(first[-1]),))
        shards = 0
        for s, values in enumerate(shard_assignments):
            values = np.asarray(values, dtype=np.int64)
            if s >= first.size - 1 or values.size != first[s + 1] - first[s]:
                raise ValueError(f"shard {s} gave {values.size} assignments, its count is {first[s + 1] - first[s] if s < first.size - 1 else 0}")
            if values.size and (values.min() < 0 or values.max() >= num_buckets):
                raise ValueError(f"assignment holds buckets outside [0, {num_buckets}); pass num_buckets=len(targets)")
            out[first[s] : first[s + 1]] = values
            counts[:, s] = np.bincount(values, minlength=num_buckets)
            shards = s + 1
        if shards != first.size - 1:
            raise ValueError(f"got the assignments of {shards} shards for {first.size - 1}")
        out.flush()
        del out
    with AtomicPath(folder / _COUNTS) as tmp, open(tmp, "wb") as f:
        np.save(f, counts)


def load_assignment(folder: str | os.PathLike[str], *, num_buckets: int, shard_counts: Sequence[int] | np.ndarray) -> tuple[MappedAssignment, np.ndarray]:
    """The assignment :func:`save_assignment` wrote to ``folder`` (mapped) and its (buckets, shards) counts.

    Raises:
        FileNotFoundError: ``folder`` holds no complete assignment.
        ValueError: It holds one of other buckets or shard counts.
    """
    folder = Path(folder)
    if not (folder / _COUNTS).exists():
        raise FileNotFoundError(f"{folder} holds no bucket index")
    counts = np.load(folder / _COUNTS)
    if counts.shape[0] != num_buckets or not np.array_equal(counts.sum(axis=0), np.asarray(shard_counts, dtype=np.int64)):
        raise ValueError(f"{folder}: the bucket index is of other buckets or shards; remove the folder to rebuild it")
    return MappedAssignment(folder / _ASSIGNMENT), counts
