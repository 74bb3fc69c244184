"""Aspect-ratio buckets over shards: every global step takes every rank's batch from one bucket.

Each bucket is a stream with its own order, as in the mix: pass ``P`` of bucket ``b`` is the
:class:`ShardOrder` of the bucket's per-shard counts (:class:`BucketIndex`) seeded by
``(stream_seed(seed, b), P)``, and :class:`BucketPlan` says which bucket each step draws from
and which of its positions each rank takes. The cursor's ``(epoch, position)`` (position: the
slots of all ranks consumed in the epoch) determines the bucket state from the run's
:attr:`BucketedWDSStream.origin`: the start, or the state a checkpoint restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from fastgen_dm.plan import worker_batch_ids
from fastgen_dm.plan.buckets import BucketIndex, BucketPlan, BucketState, BucketTail
from fastgen_dm.plan.order import shard_offsets
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.shard_source import PassOrders, SampleSource


@dataclass(frozen=True)
class BucketEpoch:
    """A :class:`BucketPlan` from epoch position ``start``, as the cursor and the loader see it.

    ``before``: steps of the epoch taken before the plan's state on another world size; only a
    loader's length counts them (the plan itself starts at its state).
    Example: a resume at position 96 with 2 ranks of 16: ``position_after(1) == 128``.
    """

    plan: BucketPlan
    start: int
    before: int = 0

    @property
    def num_steps(self) -> int:
        return self.before + self.plan.num_steps

    def position_after(self, steps: int) -> int:
        return self.start + steps * self.plan.step_samples

    def rank_num_batches(self, rank: int) -> int:
        """Every rank takes every step."""
        return self.num_steps


class BucketedWDSStream(PlannedStream):
    """Batches of a sharded dataset in which each global step is one bucket (epoch mode).

    Args:
        source: What to read; its transform receives each sample's bucket in ``origin.bucket``.
        buckets: Each bucket's samples by shard (numbered in file order over ``source.shards``).
        tail: Each bucket's rest of fewer than a global step: ``"drop"``, ``"pad"`` or ``"carry"``.
        shuffle, block, interleave, prefetch_batches, skipped_index_dir: as for ``WDSStream``.

    Example: 2 ranks of batch 4 over buckets of 20 and 9 samples, tail ``"drop"``: 2 steps of
    bucket 0 and 1 of bucket 1 per epoch, 4 + 1 samples dropped.
    """

    def __init__(
        self,
        source: SampleSource,
        *,
        buckets: BucketIndex,
        tail: BucketTail,
        shuffle: bool,
        block: int = 1,
        interleave: int = 1,
        prefetch_batches: int = 2,
        skipped_index_dir: str | None = None,
    ) -> None:
        self.source, self.buckets, self.tail = source, buckets, tail
        self.max_skip_fraction = source.max_skip_fraction
        self.first = shard_offsets([s.count for s in source.shards])
        self.shuffle, self.block, self.interleave, self.prefetch_batches = shuffle, block, interleave, prefetch_batches
        self.skipped_index_dir = skipped_index_dir
        #: (epoch position, state) the run's buckets start from: the start, or a restored checkpoint's
        self.origin: tuple[int, BucketState] | None = None
        self._epoch_starts: dict[tuple[int, int], tuple[int, BucketState]] = {}

    @property
    def num_samples(self) -> int:
        return int(self.buckets.bucket_counts.sum())

    def _plan(self, state: BucketState | None) -> BucketPlan:
        src = self.source
        return BucketPlan(self.buckets.bucket_counts, batch_size=src.batch_size, world_size=self.world_size, seed=src.seed, tail=self.tail, state=state)

    def restore(self, position: int, state: BucketState) -> None:
        """Resume from a checkpoint's ``state``, taken at epoch position ``position``."""
        self.origin = (position, state)
        self._epoch_starts.clear()

    def _epoch_start(self, epoch: int) -> tuple[int, BucketState]:
        """(position, state) where ``epoch`` begins, or where the run resumed in it: walked from the origin, once."""
        key = (epoch, self.world_size)
        if key not in self._epoch_starts:
            position, state = self.origin if self.origin is not None else (0, self._plan(None).state)
            if epoch < state.epoch:
                raise ValueError(f"epoch {epoch} is before the buckets' origin (epoch {state.epoch})")
            while state.epoch < epoch:
                plan = self._plan(state)
                position, state = 0, plan.state_after(plan.num_steps)
            self._epoch_starts = {key: (position, state)}
        return self._epoch_starts[key]

    def state_at(self, epoch: int, position: int) -> BucketState:
        """The bucket state at the cursor's ``(epoch, position)``: what a checkpoint keeps."""
        origin, state = self._epoch_start(epoch)
        if position <= origin:
            return state
        return self._plan(state).state_after((position - origin) // (self.world_size * self.source.batch_size))

    def plan_for(self, epoch: int, start: int) -> BucketEpoch:
        origin, state = self._epoch_start(epoch)
        if start < origin:  # before a resume in its epoch (a loader's length asks): the steps before it count too
            return BucketEpoch(self._plan(state), start, math.ceil((origin - start) / (self.world_size * self.source.batch_size)))
        return BucketEpoch(self._plan(self.state_at(epoch, start)), start)

    def _orders(self) -> PassOrders:
        src = self.source
        return PassOrders(self.buckets.counts, seed=src.seed, shuffle=self.shuffle, block=self.block, interleave=self.interleave, mix=src.batch_size)

    def _locate(self, plan: BucketPlan, step: int, orders: PassOrders) -> tuple[np.ndarray, np.ndarray]:
        """(shard ids into ``source.shards``, sample in shard) of this rank's slots at ``step``."""
        batch = plan.batch(self.rank, step)
        shard_ids = np.empty(len(batch.positions), np.int64)
        samples = np.empty(len(batch.positions), np.int64)
        for epoch_pass in set(batch.passes.tolist()):
            chosen = batch.passes == epoch_pass
            shard, local = orders(batch.bucket, epoch_pass).locate(batch.positions[chosen])
            shard_ids[chosen] = shard
            samples[chosen] = self.buckets.samples(batch.bucket, shard, local) - self.first[shard]
        return shard_ids, samples

    def iter_batches(self, plan: BucketEpoch, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        bucket_plan = plan.plan
        orders = self._orders()
        steps = worker_batch_ids(bucket_plan.num_steps, num_workers, worker_id)
        yield from self.source.read_batches(
            (self._locate(bucket_plan, j, orders) for j in steps), policy=self.bad_data_policy(worker_id),
            epoch=bucket_plan.epoch, rank=self.rank, worker_id=worker_id, prefetch_batches=self.prefetch_batches,
            skipped_index_dir=self.skipped_index_dir, buckets=(bucket_plan.step_bucket(j) for j in steps),
        )  # fmt: skip
