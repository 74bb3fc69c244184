"""Several shard datasets mixed by weight, proportion or repeat: the mix plan over each stream's own epoch order."""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np

from fastgen_dm.plan import worker_batch_ids
from fastgen_dm.plan.mixing import EpochEnd, MixPlan, MixState
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.shard_source import PassOrders, SampleSource

logger = logging.getLogger(__name__)


class MixedWDSStream(PlannedStream):
    """Batches mixing ``K`` shard datasets; each keeps its own order and is read exactly once per pass.

    ``source`` holds the shards of every stream, stream after stream; ``shards_per_stream`` says
    how many belong to each. Pass ``P`` of stream ``k`` is the :class:`ShardOrder` of its shards
    seeded by ``(stream_seed(seed, k), P)``; :class:`MixPlan` says which stream and position fill
    each slot. The cursor's ``(epoch, position)`` determines the mix state as long as the
    declarations stay; :attr:`origin` is where a resume with other weights starts.

    Args:
        source: Shards of all streams, and how to make batches.
        shards_per_stream: Shards of stream 0, stream 1, ...
        weights / proportions / repeat: One declaration per stream (see :class:`MixPlan`).
        epoch_end: ``"total"`` (``total_samples`` per epoch) or ``"first_exhausted"``.
        total_samples: Samples per epoch under ``"total"``.
        shuffle, tail, block, interleave, prefetch_batches, skipped_index_dir: as for ``WDSStream``.
    """

    def __init__(
        self,
        source: SampleSource,
        *,
        shards_per_stream: Sequence[int],
        weights: Sequence[float] | None = None,
        proportions: Sequence[float] | None = None,
        repeat: Sequence[float] | None = None,
        epoch_end: EpochEnd = "first_exhausted",
        total_samples: int | None = None,
        shuffle: bool,
        tail: str,
        block: int = 1,
        interleave: int = 1,
        prefetch_batches: int = 2,
        skipped_index_dir: str | None = None,
    ) -> None:
        self.source = source
        self.max_skip_fraction = source.max_skip_fraction
        counts = np.array([s.count for s in source.shards], dtype=np.int64)
        self.first_shard = np.concatenate([[0], np.cumsum(shards_per_stream)]).astype(np.int64)
        self.shard_counts = [counts[a:b] for a, b in zip(self.first_shard[:-1], self.first_shard[1:])]
        self.stream_samples = np.array([c.sum() for c in self.shard_counts], dtype=np.int64)
        empty = [k for k, n in enumerate(self.stream_samples) if n == 0]
        if empty:
            raise ValueError(f"streams {empty} hold no samples (after ignore_index_paths); remove them from streams")
        self.declaration = {"weights": weights, "proportions": proportions, "repeat": repeat, "epoch_end": epoch_end, "total_samples": total_samples, "tail": tail}
        self.shuffle, self.block, self.interleave, self.prefetch_batches = shuffle, block, interleave, prefetch_batches
        self.skipped_index_dir = skipped_index_dir
        self.origin: MixState | None = None  # a resume with other weights starts the mix here (restore)
        self._epoch_starts: dict[tuple[int, int], MixState] = {}

    @property
    def num_samples(self) -> int:
        return int(self.stream_samples.sum())

    def restore(self, saved: MixState) -> None:
        """Resume from a checkpoint's mix state. With the same weights the cursor's position
        determines everything; with other weights the saved state becomes the origin: every
        stream keeps its position and the new weights apply from there."""
        weights = self._plan(None).state.weights
        if saved.weights != weights:
            logger.info("resuming the mix with weights %s (the checkpoint's were %s): every stream keeps its position", weights, saved.weights)
            self.origin = MixPlan(self.stream_samples, batch_size=self.source.batch_size, state=saved, **self.declaration).state  # type: ignore[arg-type]
            self._epoch_starts.clear()

    def _plan(self, state: MixState | None) -> MixPlan:
        return MixPlan(
            self.stream_samples, batch_size=self.source.batch_size, world_size=self.world_size, state=state,
            **self.declaration,  # type: ignore[arg-type]
        )  # fmt: skip

    def _epoch_start(self, epoch: int) -> MixState:
        """The mix state where ``epoch`` begins: epochs are walked from the origin, a few integers each."""
        key = (epoch, self.world_size)
        if key not in self._epoch_starts:
            state = self.origin if self.origin is not None else self._plan(None).state
            if epoch < state.epoch:
                raise ValueError(f"epoch {epoch} is before the mix's origin (epoch {state.epoch})")
            while state.epoch < epoch:
                plan = self._plan(state)
                state = plan.state_after(plan.num_steps)
            self._epoch_starts = {key: state}
        return self._epoch_starts[key]

    def state_at(self, epoch: int, position: int) -> MixState:
        """The mix state at the cursor's ``(epoch, position)``: what a checkpoint keeps for a resume with other weights."""
        start = self._epoch_start(epoch)
        if position < start.position:
            # before a resume with other weights, in its epoch (a loader's length asks): the
            # mix as if it began there, drawing from the resumed positions
            return MixState(start.epoch, position, start.drawn, start.drawn, start.weights)
        return start if position == start.position else self._plan(start).state_at(position)

    def plan_for(self, epoch: int, start: int) -> MixPlan:
        return self._plan(self.state_at(epoch, start))

    def _orders(self) -> PassOrders:
        src = self.source
        return PassOrders(self.shard_counts, seed=src.seed, shuffle=self.shuffle, block=self.block, interleave=self.interleave, mix=src.batch_size)

    def _locate(self, plan: MixPlan, step: int, orders: PassOrders) -> tuple[np.ndarray, np.ndarray]:
        """(shard ids into ``source.shards``, sample in shard) of this rank's slots at ``step``."""
        batch = plan.batch(self.rank, step)
        shard_ids = np.empty(len(batch.streams), np.int64)
        samples = np.empty(len(batch.streams), np.int64)
        for stream, epoch_pass in set(zip(batch.streams.tolist(), batch.passes.tolist())):
            chosen = (batch.streams == stream) & (batch.passes == epoch_pass)
            shard, local = orders(stream, epoch_pass).locate(batch.positions[chosen])
            shard_ids[chosen], samples[chosen] = shard + self.first_shard[stream], local
        return shard_ids, samples

    def iter_batches(self, plan: MixPlan, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        src = self.source
        epoch = plan.state.epoch
        orders = self._orders()
        steps = worker_batch_ids(plan.num_steps, num_workers, worker_id)
        wanted = (self._locate(plan, j, orders) for j in steps)
        yield from src.read_batches(
            wanted, policy=self.bad_data_policy(worker_id), epoch=epoch, rank=self.rank, worker_id=worker_id,
            prefetch_batches=self.prefetch_batches, skipped_index_dir=self.skipped_index_dir,
        )  # fmt: skip
