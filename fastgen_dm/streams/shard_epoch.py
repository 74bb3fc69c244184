"""Epoch mode over shards: every sample once per epoch, read as merged byte runs, resumable anywhere."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

from fastgen_dm.plan import SamplePlan, ShardOrder, TailPolicy, worker_batch_ids
from fastgen_dm.read import keep_stepping, skipped_name
from fastgen_dm.read.shard_reader import ShardReader
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.shard_source import SampleSource

logger = logging.getLogger(__name__)


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
        reader = ShardReader(src.storage_options, offsets_dir=src.offsets_dir)
        decoder = src.decoder(self.bad_data_policy(worker_id))
        try:
            batches = (decoder.batch(items, plan.epoch) for items in reader.prefetch(src.shards, wanted, self.prefetch_batches))
            yield from keep_stepping(batches, f"rank {self.rank} worker {worker_id}")
        finally:
            reader.close()
            if decoder.filtered:
                logger.info(
                    "rank %d worker %d epoch %d: %d samples filtered out (presets_filter, or a key_map member missing)",
                    self.rank, worker_id, plan.epoch, decoder.filtered,
                )  # fmt: skip
            decoder.policy.write_skipped(self.skipped_index_dir, skipped_name(self.rank, f"worker{worker_id}", plan.epoch))
