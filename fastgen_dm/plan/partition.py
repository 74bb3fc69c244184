"""Which samples each (rank, worker) reads in one epoch: pure arithmetic on integers.

The global order of an epoch is a permutation of ``range(num_samples)`` seeded by
``(seed, epoch)``. It is consumed in *global steps*: step ``k`` takes the next
``world_size * batch_size`` samples of the order and rank ``r`` gets the ``r``-th slice of
``batch_size``. Position is therefore one global integer (samples of the order consumed), and a
run resumed on another number of ranks continues the same order from that integer.

Example, 10 samples, 2 ranks, batch 2, no shuffle, policy "pad":

    order      0 1 2 3 | 4 5 6 7 | 8 9
    step 0     rank0 [0 1]  rank1 [2 3]
    step 1     rank0 [4 5]  rank1 [6 7]
    step 2     rank0 [8]    rank1 [9]        <- last step: smaller batches, same count per rank

When the last step does not divide evenly among ranks, policy "pad" repeats samples from the
start of the order (fewer than ``world_size`` of them) so that every rank still gets one batch;
policy "drop" leaves the incomplete last step out of the epoch; policy "uneven" (for evaluation,
where every sample must count once and ranks need not step together) splits the rest without
padding, so the last ranks may get a smaller batch or none.

Within a rank, batch ``j`` goes to DataLoader worker ``j % num_workers``, which is the order in
which ``torch.utils.data.DataLoader`` collects batches from workers, so the rank sees its
batches in plan order.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import KW_ONLY, dataclass
from typing import Literal

import numpy as np

TailPolicy = Literal["pad", "drop", "uneven"]
TAIL_POLICIES: tuple[str, ...] = ("pad", "drop", "uneven")


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The global sample order of one epoch, int64 of shape (num_samples,).

    A local generator seeded by ``(seed, epoch)`` makes each epoch a new permutation and every
    run identical, without touching any global random state.
    """
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_samples).astype(np.int64, copy=False)


@dataclass(frozen=True)
class SamplePlan:
    """One epoch's schedule over a map of ``num_samples`` samples.

    Args:
        num_samples: Samples in the epoch's order (after any ``max_size`` or flip expansion).
        batch_size: Samples per rank per step.
        world_size: Number of ranks (data-parallel processes).
        seed: Seed of the shuffle.
        epoch: Epoch number; with ``shuffle`` each epoch is a new permutation.
        shuffle: Permute the order; otherwise ``0, 1, 2, ...``.
        start: Samples of this epoch's order already consumed, globally (the resume position).
        tail: What to do with a last step that does not fill every rank (see module docs).
    """

    num_samples: int
    batch_size: int
    world_size: int = 1
    _: KW_ONLY  # the options after the sizes are named at every call
    seed: int = 0
    epoch: int = 0
    shuffle: bool = True
    start: int = 0
    tail: TailPolicy = "pad"

    def __post_init__(self) -> None:
        for name in ("num_samples", "batch_size", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {self.epoch}")
        if not 0 <= self.start <= self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {self.start}")
        if self.tail not in TAIL_POLICIES:
            raise ValueError(f"tail {self.tail!r} is unknown; use one of {TAIL_POLICIES}")

    @property
    def step_samples(self) -> int:
        """Samples consumed by one full global step."""
        return self.world_size * self.batch_size

    @property
    def remaining(self) -> int:
        return self.num_samples - self.start

    @property
    def full_steps(self) -> int:
        return self.remaining // self.step_samples

    @property
    def tail_samples(self) -> int:
        """Samples of the order left after the full steps (0 <= tail < step_samples)."""
        return self.remaining - self.full_steps * self.step_samples

    @property
    def tail_batch(self) -> int:
        """Per-rank batch size of the last step, 0 when there is no such step."""
        if self.tail == "drop":
            return 0
        return math.ceil(self.tail_samples / self.world_size)

    @property
    def num_steps(self) -> int:
        """Global steps (= batches on every rank) from ``start`` to the end of the epoch."""
        return self.full_steps + (1 if self.tail_batch else 0)

    @property
    def end(self) -> int:
        """Position of the order once the epoch is complete."""
        return self.start + self.full_steps * self.step_samples if self.tail == "drop" else self.num_samples

    def position_after(self, steps: int) -> int:
        """Global position after ``steps`` steps of this plan have been consumed."""
        assert 0 <= steps <= self.num_steps, (steps, self.num_steps)
        return min(self.start + steps * self.step_samples, self.end)

    def rank_num_batches(self, rank: int) -> int:
        """Batches rank ``rank`` yields: ``num_steps``, or one fewer for the last ranks under "uneven"."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        if self.tail == "uneven" and self.tail_batch and self.end - self.tail_samples + rank * self.tail_batch >= self.num_samples:
            return self.num_steps - 1
        return self.num_steps

    def batch_positions(self, rank: int, step: int) -> np.ndarray:
        """Positions in the epoch's order (int64) that rank ``rank`` takes at ``step`` of this plan.

        ``step`` counts from ``start``. Positions of the tail step past the order's end wrap
        around to its start under "pad" and are left out under "uneven". Example: 10 samples,
        2 ranks, batch 2, "pad": step 2 gives rank 0 ``[8]`` and rank 1 ``[9]``.
        """
        assert 0 <= step < self.rank_num_batches(rank), (rank, step)
        if step < self.full_steps:
            first, size = self.start + step * self.step_samples + rank * self.batch_size, self.batch_size
        else:
            first, size = self.start + self.full_steps * self.step_samples + rank * self.tail_batch, self.tail_batch
        positions = np.arange(first, first + size, dtype=np.int64)
        if self.tail == "uneven":
            return positions[positions < self.num_samples]
        return positions % self.num_samples

    def resumed(self, start: int) -> "SamplePlan":
        """The same epoch, resumed at global position ``start``."""
        return dataclasses.replace(self, start=start)


def schedule(plan: SamplePlan, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All global steps of ``plan`` as sample indices.

    Args:
        plan: The epoch's plan.
        order: The epoch's full order (shape (num_samples,)); None uses :func:`epoch_order`.
            Shard-based families pass theirs (see ``fastgen_dm.plan.shards``).

    Returns:
        ``(full, last)``: ``full`` int64 of shape (full_steps, world_size, batch_size) and
        ``last`` int64 of shape (world_size, tail_batch), empty when there is no tail step.
        Entries of ``last`` past the order's end wrap around to its start (policy "pad") or
        are -1 (policy "uneven").
    """
    if order is None:
        order = epoch_order(plan.num_samples, plan.seed, plan.epoch, plan.shuffle)
    assert order.shape == (plan.num_samples,), (order.shape, plan.num_samples)
    whole, order = order, order[plan.start :]
    n_full = plan.full_steps * plan.step_samples
    # (full_steps * world * batch,) -> (full_steps, world, batch)
    full = order[:n_full].reshape(plan.full_steps, plan.world_size, plan.batch_size)
    tail = order[n_full:]
    if plan.tail_batch == 0:
        return full, np.empty((plan.world_size, 0), dtype=np.int64)
    padded = plan.tail_batch * plan.world_size
    if padded > tail.size:
        filler = np.full(padded - tail.size, -1, np.int64) if plan.tail == "uneven" else np.resize(whole, padded - tail.size)
        tail = np.concatenate([tail, filler])
    # (world * tail_batch,) -> (world, tail_batch)
    return full, tail.reshape(plan.world_size, plan.tail_batch)


def rank_batches(plan: SamplePlan, rank: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """The batches rank ``rank`` yields, in order, as sample ids of ``order`` (None: :func:`epoch_order`).

    Every rank gets ``plan.num_steps`` of them, except under policy "uneven", where the last
    ranks may get one fewer. This materialises the epoch's order: for map-style datasets of
    modest size; sharded datasets look positions up with :meth:`SamplePlan.batch_positions`.
    """
    if order is None:
        order = epoch_order(plan.num_samples, plan.seed, plan.epoch, plan.shuffle)
    return [order[plan.batch_positions(rank, j)] for j in range(plan.rank_num_batches(rank))]


def worker_batch_ids(num_batches: int, num_workers: int, worker_id: int) -> range:
    """Which of a rank's batches worker ``worker_id`` produces (0 workers = the main process).

    DataLoader asks its workers for batches round-robin and yields them in request order, so
    giving worker ``w`` the batches ``w, w + K, w + 2K, ...`` keeps the rank's plan order.
    """
    workers = max(num_workers, 1)
    if not 0 <= worker_id < workers:
        raise ValueError(f"worker_id must be in [0, {workers}), got {worker_id}")
    return range(worker_id, num_batches, workers)
