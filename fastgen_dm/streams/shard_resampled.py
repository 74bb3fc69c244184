"""Resampled mode over shards (FastGen's endless stream): shards drawn with replacement, a byte-bounded shuffle buffer."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np

from fastgen_dm.index.datatags import Shard
from fastgen_dm.plan import SamplePlan, worker_batch_ids
from fastgen_dm.read.shard_bytes import iter_shard
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.shard_source import SampleSource

NO_END = 1 << 62  # samples of an endless stream's epoch: Lightning stops it with max_steps


class ResampledWDSStream(PlannedStream):
    """Shards drawn with replacement (webdataset's ``ResampledShards``), whole-shard reads, a byte-bounded shuffle buffer.

    FastGen's training behaviour. Seeded by (seed, rank, worker, epoch, position): the position
    (samples drawn, in the DataModule's ``state_dict``) makes a run restarted from a checkpoint
    draw anew rather than replay its first batches. Not an exact resume: use epoch mode for that.
    Endless unless ``epoch_samples`` declares an epoch (global samples, rounded down to whole
    steps), which gives the loader a length.
    """

    def __init__(self, source: SampleSource, shuffle_buffer_bytes: int, epoch_samples: int | None = None) -> None:
        self.source = source
        self.max_skip_fraction = source.max_skip_fraction
        self.shuffle_buffer_bytes = shuffle_buffer_bytes
        self.epoch_samples = epoch_samples
        self.endless = epoch_samples is None

    def plan_for(self, epoch: int, start: int) -> SamplePlan:
        step = self.source.batch_size * self.world_size
        if self.epoch_samples is not None and self.epoch_samples < step:
            raise ValueError(
                f"epoch_samples={self.epoch_samples} is less than one step ({self.world_size} GPUs x batch_size "
                f"{self.source.batch_size}); declare at least {step}"
            )
        total = NO_END if self.epoch_samples is None else self.epoch_samples
        return SamplePlan(total, self.source.batch_size, self.world_size, seed=self.source.seed, epoch=epoch, shuffle=False, start=start, tail="drop")

    def iter_batches(self, plan: SamplePlan, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        from webdataset import ResampledShards

        src = self.source
        # the position joins the seed: a run restarted from a checkpoint draws anew instead of replaying
        seed = np.random.SeedSequence([src.seed, self.rank, worker_id, plan.epoch, plan.start]).generate_state(1)[0]
        rng = np.random.default_rng(seed)
        by_url = {shard.url: shard for shard in src.shards}
        draws = ResampledShards(list(by_url), seed=src.seed, worker_seed=lambda: int(seed), deterministic=True, empty_check=False)
        wanted = len(worker_batch_ids(plan.rank_num_batches(self.rank), num_workers, worker_id))
        yield from itertools.islice(self._batches(plan, worker_id, rng, (by_url[d["url"]] for d in draws)), wanted)

    def _batches(self, plan: SamplePlan, worker_id: int, rng: np.random.Generator, shards: Iterator[Shard]) -> Iterator[dict[str, Any]]:
        src = self.source
        decoder = src.decoder(self.bad_data_policy(worker_id))
        buffer: list[tuple[str, str, Any]] = []
        buffered_bytes = 0
        pending: list[tuple[str, str, Any]] = []
        drawn = 0  # samples handed to the decoder: a sample drawn again gets another draw number
        for shard in shards:
            for key, members in iter_shard(shard.url, src.storage_options):
                if key in shard.ignored:
                    continue
                buffer.append((shard.url, key, members))
                buffered_bytes += sum(map(len, members.values())) if isinstance(members, dict) else 0
                while buffer and buffered_bytes >= self.shuffle_buffer_bytes:
                    item = buffer.pop(int(rng.integers(len(buffer))))
                    buffered_bytes -= sum(map(len, item[2].values())) if isinstance(item[2], dict) else 0
                    pending.append(item)
                    if len(pending) == src.batch_size:
                        batch = decoder.batch(pending, plan.epoch, first_draw=drawn)
                        drawn += len(pending)
                        pending = []
                        if batch is not None:
                            yield batch
