"""Resampled mode over shards (FastGen's endless stream): shards drawn with replacement, a byte-bounded shuffle buffer."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from fastgen_dm.plan import SamplePlan
from fastgen_dm.read.shard_bytes import iter_shard
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.shard_source import SampleSource

_NO_END = 1 << 62  # resampled streams never end: Lightning stops them with max_steps


class ResampledWDSStream(PlannedStream):
    """An endless stream: shards drawn with replacement, whole-shard reads, a byte-bounded shuffle buffer.

    FastGen's training behaviour. Seeded by (seed, rank, worker, epoch, position): the position
    (samples drawn, in the DataModule's ``state_dict``) makes a run restarted from a checkpoint
    draw anew rather than replay its first batches. Not an exact resume: use epoch mode for that.
    """

    def __init__(self, source: SampleSource, shuffle_buffer_bytes: int) -> None:
        self.source = source
        self.max_skip_fraction = source.max_skip_fraction
        self.shuffle_buffer_bytes = shuffle_buffer_bytes

    def plan_for(self, epoch: int, start: int) -> SamplePlan:
        return SamplePlan(_NO_END, self.source.batch_size, self.world_size, seed=self.source.seed, epoch=epoch, shuffle=False, start=start)

    def iter_batches(self, plan: SamplePlan, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        src = self.source
        # the position joins the seed: a run restarted from a checkpoint draws anew instead of replaying
        rng = np.random.default_rng([src.seed, self.rank, worker_id, plan.epoch, plan.start])
        decoder = src.decoder(self.bad_data_policy(worker_id))
        buffer: list[tuple[str, str, Any]] = []
        buffered_bytes = 0
        pending: list[tuple[str, str, Any]] = []
        drawn = 0  # samples handed to the decoder: a sample drawn again gets another draw number
        while True:
            shard = src.shards[rng.integers(len(src.shards))]
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
