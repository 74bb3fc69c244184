"""Read chosen samples of tar shards by their byte ranges.

A worker asks for samples ``i, j, ...`` of one shard; the reader turns them into ascending
byte ranges, merges neighbours into single requests, and reads nothing else. A shard without
known offsets is indexed once per process by walking its member headers (seeks, not reads).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fastgen_dm.index.datatags import Shard
from fastgen_dm.format.tar import ShardReadError
from fastgen_dm.index.build import index_shard
from fastgen_dm.index.shard_index import ShardIndex
from fastgen_dm.read.tar import ByteCounter, read_runs, split_sample

Sample = tuple[str, "dict[str, bytes] | Exception"]


class ShardReader:
    """Per-process reader; holds the offsets it had to find itself, nothing else."""

    def __init__(self, storage_options: Mapping[str, Any] | None = None, counter: ByteCounter | None = None) -> None:
        self.storage_options = storage_options
        self.counter = counter
        self._walked: dict[str, ShardIndex] = {}

    def _offsets(self, shard: Shard) -> ShardIndex:
        if shard.index is not None:
            return shard.index
        if shard.url not in self._walked:
            self._walked[shard.url] = index_shard(shard.url, self.storage_options, partial_ok=True).without(shard.ignored)
        return self._walked[shard.url]

    def read(self, shard: Shard, samples: Sequence[int]) -> list[Sample]:
        """``(key, {suffix: bytes})`` for each requested sample index, in request order.

        A sample that cannot be read comes back as ``(key or "#<index>", exception)``; the
        caller counts it. Indices past the shard's real end (the shard shrank since it was
        counted) come back as errors too.
        """
        index = self._offsets(shard)
        wanted = np.asarray(samples, dtype=np.int64)
        out: list[Sample] = [("", ShardReadError(shard.url, 0, "not read"))] * len(wanted)
        present = wanted < index.count
        for k in np.flatnonzero(~present):
            out[k] = (f"#{wanted[k]}", ShardReadError(shard.url, 0, f"sample {wanted[k]} is past the shard's {index.count} samples"))
        positions = np.flatnonzero(present)
        by_offset = positions[np.argsort(index.starts[wanted[positions]], kind="stable")]
        runs = [(int(index.starts[wanted[k]]), int(index.ends[wanted[k]])) for k in by_offset]
        blobs: list[bytes] = []
        try:
            for blob in read_runs(shard.url, runs, self.storage_options, counter=self.counter):
                blobs.append(blob)
        except (ShardReadError, OSError) as err:  # the runs after a failure (e.g. a truncated tail) are lost
            for k in by_offset[len(blobs) :]:
                out[k] = (index.keys[wanted[k]], err)
        for k, blob, (start, _) in zip(by_offset, blobs, runs):
            try:
                out[k] = split_sample(blob, shard.url, start)
            except ShardReadError as err:
                out[k] = (index.keys[wanted[k]], err)
        return out
