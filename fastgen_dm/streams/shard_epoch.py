"""Epoch mode over shards: every sample once per epoch, read as merged byte runs, resumable anywhere."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from fastgen_dm.plan import SamplePlan, ShardOrder, TailPolicy, worker_batch_ids
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.shard_source import SampleSource


class WDSStream(PlannedStream):
    """Batches of a sharded dataset following the sample plan (epoch mode).

    Args:
        source: What to read and how to turn samples into batches.
        shuffle: Shuffle shards and blocks each epoch (see :class:`fastgen_dm.plan.ShardOrder`).
        tail: The plan's tail policy.
        block: Consecutive samples of a shard read with one request.
        interleave: Shards whose blocks alternate in the order.
        prefetch_batches: Batches a reader keeps in flight ahead of the one being decoded.
        skipped_index_dir: Where readers write the keys they skipped.
    """

    def __init__(
        self,
        source: SampleSource,
        *,
        shuffle: bool,
        tail: TailPolicy,
        block: int = 1,
        interleave: int = 1,
        prefetch_batches: int = 2,
        skipped_index_dir: str | None = None,
    ) -> None:
        self.source = source
        self.max_skip_fraction = source.max_skip_fraction
        self.counts = np.array([s.count for s in source.shards], dtype=np.int64)
        self.shuffle, self.tail = shuffle, tail
        self.block, self.interleave, self.prefetch_batches = block, interleave, prefetch_batches
        self.skipped_index_dir = skipped_index_dir

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def plan_for(self, epoch: int, start: int) -> SamplePlan:
        src = self.source
        return SamplePlan(
            self.num_samples, src.batch_size, self.world_size, seed=src.seed, epoch=epoch, shuffle=self.shuffle, start=start, tail=self.tail
        )

    def order_for(self, epoch: int) -> ShardOrder:
        """The epoch's order of (shard, sample) pairs, computed per position."""
        return ShardOrder(
            self.counts, seed=self.source.seed, epoch=epoch, shuffle=self.shuffle, block=self.block,
            interleave=self.interleave, mix=self.source.batch_size,
        )  # fmt: skip

    def iter_batches(self, plan: SamplePlan, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        src = self.source
        order = self.order_for(plan.epoch)
        steps = worker_batch_ids(plan.rank_num_batches(self.rank), num_workers, worker_id)
        wanted = (order.locate(plan.batch_positions(self.rank, j)) for j in steps)
        yield from src.read_batches(
            wanted, policy=self.bad_data_policy(worker_id), epoch=plan.epoch, rank=self.rank, worker_id=worker_id,
            prefetch_batches=self.prefetch_batches, skipped_index_dir=self.skipped_index_dir,
        )  # fmt: skip
