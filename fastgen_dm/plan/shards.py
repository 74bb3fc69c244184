"""The epoch order of a sharded dataset: shards shuffled, samples shuffled within bounded windows.

Sample ``g`` of a dataset of shards with counts ``[c0, c1, ...]`` is sample ``g - offset[s]`` of
shard ``s``, where ``offset`` is the running sum of counts. Each epoch the order is built in two
steps, both seeded by ``(seed, epoch)`` and independent of the number of ranks and workers, so
a resumed run on any world size continues the same order:

1. the shards are permuted and their samples laid end to end, in file order;
2. that sequence is cut into consecutive windows of ``window`` samples and each window is
   permuted.

    counts [3, 2], shard order [1, 0]  ->  3 4 | 0 1 2        (global ids)
    window 2                            ->  4 3 | 1 0 | 2

The window replaces a streaming shuffle buffer: it mixes samples from within roughly
``window`` samples of each other like a buffer would, but as arithmetic, so no worker holds a
buffer in memory and the position stays one global integer that resumes exactly.
Readers fetch each sample by its byte range, so a shuffled window costs no extra bytes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def shard_offsets(counts: Sequence[int]) -> np.ndarray:
    """int64 (num_shards + 1,): where each shard's samples start in the global numbering."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def locate(global_ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard index, sample index within the shard) of each global sample id."""
    shard = np.searchsorted(offsets, global_ids, side="right") - 1
    return shard, global_ids - offsets[shard]


def shard_epoch_order(counts: Sequence[int], seed: int, epoch: int, shuffle: bool, window: int = 1) -> np.ndarray:
    """The epoch's order of global sample ids, int64 of shape (sum(counts),).

    Args:
        counts: Samples per shard.
        seed: Seed of the shuffle.
        epoch: Epoch; each epoch permutes differently.
        shuffle: Shuffle at all; without it the order is shard by shard, file order.
        window: Samples per shuffle window (1: shard-level shuffle only).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    offsets = shard_offsets(counts)
    if not shuffle:
        return np.arange(offsets[-1], dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    shard_order = rng.permutation(len(counts))
    order = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in shard_order] or [np.empty(0, np.int64)])
    if window > 1 and order.size > 1:
        # (n,) -> (n_windows, window) plus a shorter last window; permute inside each
        keys = rng.random(order.size) + np.arange(order.size) // window
        order = order[np.argsort(keys, kind="stable")]
    return order.astype(np.int64, copy=False)
