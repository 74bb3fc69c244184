"""The epoch order of a sharded dataset, computed per position: nothing per sample is materialised.

A *block* is ``block`` consecutive samples of one shard (the last block of a shard may be
shorter); it is what a reader fetches with one request. Each epoch, seeded by ``(seed, epoch)``
and independent of the number of ranks and workers:

1. the shards are permuted and cut into *groups* of ``interleave`` consecutive shards;
2. the groups are laid end to end; inside a group the shards' blocks are taken round-robin:
   block 0 of every shard of the group, then block 1 of every shard that has one, and so on.

Example: counts [5, 3, 4], shard order [2, 0, 1], interleave 2, block 2 (``sX:i`` = sample i of
shard X)::

    group 0 = shards (2, 0)   round 0: s2:0 s2:1 | s0:0 s0:1      round 1: s2:2 s2:3 | s0:2 s0:3
                              round 2: s0:4
    group 1 = shard (1,)      round 0: s1:0 s1:1                  round 1: s1:2
    positions 0 .. 11  ->  s2:0 s2:1 s0:0 s0:1 s2:2 s2:3 s0:2 s0:3 s0:4 s1:0 s1:1 s1:2

So a run of ``b`` consecutive positions (one rank's batch) draws from about ``b / block`` shards
and reads each of them as one contiguous byte run, whatever the number of ranks. The memory held
is O(shards): the shard permutation and the groups' sample offsets (about 24 bytes a shard).
:meth:`ShardOrder.locate` maps any positions to ``(shard, sample)`` in O(interleave) per
position, so an epoch starts, and resumes at any position, in the same time.

The trade-off between mixing and requests is ``block``: smaller blocks put more shards in a
batch and cost more (smaller) requests; ``interleave`` mixes the shards a rank sees over
consecutive batches and costs no request at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def shard_offsets(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 (num_shards + 1,): where each shard's samples start in the file-order numbering."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


@dataclass(frozen=True)
class _Group:
    """One group's shards (in lane order), their counts, and samples before each round."""

    shards: np.ndarray  # int64 (m,)
    counts: np.ndarray  # int64 (m,)
    round_starts: np.ndarray  # int64 (rounds + 1,): samples of the group before round r


class ShardOrder:
    """The epoch's order of the samples of shards with ``counts`` (see the module docs).

    Args:
        counts: Samples per shard, in the dataset's shard order.
        seed: Seed of the shuffle.
        epoch: Epoch; each epoch permutes the shards anew.
        shuffle: Without it the order is every shard front to back, in file order
            (``interleave`` and ``block`` are then ignored).
        block: Consecutive samples of one shard read as one run.
        interleave: Shards whose blocks are taken round-robin.
        mix: Positions are permuted within aligned windows of this many (the batch size), so
            a batch holds its blocks' samples in a shuffled order; 1 leaves them in place.
    """

    def __init__(
        self,
        counts: Sequence[int] | np.ndarray,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        block: int = 1,
        interleave: int = 1,
        mix: int = 1,
    ) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or (counts < 0).any():
            raise ValueError("counts must be a 1-d sequence of non-negative sample counts")
        if block < 1 or interleave < 1 or mix < 1:
            raise ValueError(f"block, interleave and mix must be at least 1, got {block}, {interleave} and {mix}")
        self.counts = counts
        self.seed, self.epoch, self.shuffle, self.block, self.interleave = seed, epoch, shuffle, block, interleave
        self.mix = mix if shuffle else 1
        if shuffle:
            self._order = np.random.default_rng([seed, epoch]).permutation(counts.size).astype(np.int64)
            self._width, self._block = interleave, block
        else:  # every shard is one group of one block: file order
            self._order = np.arange(counts.size, dtype=np.int64)
            self._width, self._block = 1, max(1, int(counts.max(initial=1)))
        num_groups = -(-counts.size // self._width)
        per_group = np.zeros(num_groups * self._width, np.int64)
        per_group[: counts.size] = counts[self._order]
        # (num_groups + 1,): samples before each group
        self._group_starts = shard_offsets(per_group.reshape(num_groups, self._width).sum(axis=1))
        self._groups: dict[int, _Group] = {}

    @property
    def num_samples(self) -> int:
        return int(self._group_starts[-1])

    def _group(self, g: int) -> _Group:
        group = self._groups.get(g)
        if group is None:
            if len(self._groups) >= 8:  # a batch touches one or two groups: keep a few, not all
                self._groups.clear()
            shards = self._order[g * self._width : (g + 1) * self._width]
            counts = self.counts[shards]
            rounds = -(-int(counts.max(initial=0)) // self._block)
            # samples before round r: each shard gives min(count, r * block)
            round_starts = np.minimum(counts[None, :], np.arange(rounds + 1)[:, None] * self._block).sum(axis=1)
            group = self._groups[g] = _Group(shards, counts, round_starts)
        return group

    def _mixed(self, positions: np.ndarray) -> np.ndarray:
        """Positions permuted within aligned windows of ``mix``, each by ``(seed, epoch, window)``.

        A batch of ``mix`` aligned positions reads the same runs in another order, so the
        neighbours of a block are spread through it for anything that slices a batch
        (micro-batches, gradient accumulation). The windows do not depend on the number of
        ranks, so neither does the order.
        """
        out = positions.copy()
        windows = positions // self.mix
        for w in np.unique(windows):
            at = np.flatnonzero(windows == w)
            first = int(w) * self.mix
            size = min(self.mix, self.num_samples - first)
            permutation = np.random.default_rng([self.seed, self.epoch, int(w)]).permutation(size)
            out[at] = first + permutation[positions[at] - first]
        return out

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(shard, sample within the shard)`` of each position in ``[0, num_samples)``, both int64."""
        positions = np.asarray(positions, dtype=np.int64)
        shard = np.empty_like(positions)
        local = np.empty_like(positions)
        if positions.size == 0:
            return shard, local
        if positions.min() < 0 or positions.max() >= self.num_samples:
            raise ValueError(f"positions must be in [0, {self.num_samples}), got [{positions.min()}, {positions.max()}]")
        if self.mix > 1:
            positions = self._mixed(positions)
        groups = np.searchsorted(self._group_starts, positions, side="right") - 1
        for g in np.unique(groups):
            at = np.flatnonzero(groups == g)
            group = self._group(int(g))
            within = positions[at] - self._group_starts[g]
            rounds = np.searchsorted(group.round_starts, within, side="right") - 1
            # (len(at), m): samples each shard gives to that round, in lane order
            sizes = np.clip(group.counts[None, :] - rounds[:, None] * self._block, 0, self._block)
            before = np.cumsum(sizes, axis=1)
            offset = within - group.round_starts[rounds]
            lane = (before <= offset[:, None]).sum(axis=1)
            rows = np.arange(at.size)
            shard[at] = group.shards[lane]
            local[at] = rounds * self._block + offset - (before[rows, lane] - sizes[rows, lane])
        return shard, local


def sample_runs(shard: np.ndarray, local: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """A batch's samples as runs of neighbours, one request each: ``[(shard, positions in the batch)]``.

    Positions within a run are in the shard's sample order. Example: shards ``[4, 1, 4]``,
    samples ``[8, 0, 7]`` -> ``[(1, [1]), (4, [2, 0])]`` (samples 7 and 8 of shard 4 are one run).
    """
    by_shard = np.lexsort((local, shard))
    s, i = shard[by_shard], local[by_shard]
    breaks = np.flatnonzero((np.diff(s) != 0) | (np.diff(i) != 1)) + 1
    return [(int(s[part[0]]), by_shard[part]) for part in np.split(np.arange(by_shard.size), breaks) if part.size]
