"""What a shard stream reads (its shards and storage) and how it turns samples into batches."""

from __future__ import annotations

import itertools

import logging
from dataclasses import KW_ONLY, dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fastgen_dm.batch.assemble import BatchDecoder, SampleTransform
from fastgen_dm.decode.sample import SampleSpec
from fastgen_dm.index.datatags import Shard
from fastgen_dm.plan import ShardOrder
from fastgen_dm.plan.mixing import stream_seed
from fastgen_dm.read import BadDataPolicy, keep_stepping, skipped_name
from fastgen_dm.read.shard_reader import ShardReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSource:
    """What a stream reads and how it turns samples into batches (shared by both stream kinds)."""

    shards: tuple[Shard, ...]
    _: KW_ONLY
    spec: SampleSpec
    constants: Mapping[str, Any]
    batch_size: int
    seed: int
    max_skip_fraction: float
    storage_options: Mapping[str, Any] | None = None
    transform: SampleTransform | None = None
    offsets_dir: str | None = None
    check_finite: bool = False
    #: shard URL -> the spec of its stream, where a mixed stream has its own key_map
    specs_by_url: Mapping[str, SampleSpec] | None = None

    def decoder(self, policy: BadDataPolicy) -> BatchDecoder:
        return BatchDecoder(self.spec, self.constants, policy, self.transform, self.check_finite, self.specs_by_url)

    def read_batches(
        self,
        wanted: Iterable[tuple[np.ndarray, np.ndarray]],
        *,
        policy: BadDataPolicy,
        epoch: int,
        rank: int,
        worker_id: int,
        prefetch_batches: int,
        skipped_index_dir: str | None,
        buckets: Iterable[int] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The batches of ``wanted`` ``(shard ids, samples)``: read ahead, decoded, a lost one stood in for.

        ``buckets``: the bucket of each batch of ``wanted``, in order (see ``BatchDecoder.batch``).
        At the end the reader's filtered count is logged and its skipped keys written.
        """
        reader = ShardReader(self.storage_options, offsets_dir=self.offsets_dir)
        decoder = self.decoder(policy)
        # each batch's bucket is read by the decoder and, a few batches later, by the stand-ins
        groups, stand_in_groups = itertools.tee(buckets) if buckets is not None else (None, None)
        try:
            batches = (
                decoder.batch(items, epoch, bucket=None if groups is None else next(groups))
                for items in reader.prefetch(self.shards, wanted, prefetch_batches)
            )
            yield from keep_stepping(batches, f"rank {rank} worker {worker_id}", stand_in_groups)
        finally:
            reader.close()
            if decoder.filtered:
                logger.info(
                    "rank %d worker %d epoch %d: %d samples filtered out (presets_filter, or a key_map member missing)",
                    rank, worker_id, epoch, decoder.filtered,
                )  # fmt: skip
            policy.write_skipped(skipped_index_dir, skipped_name(rank, f"worker{worker_id}", epoch))


class PassOrders:
    """The order of each pass of each of several streams over shards, a few kept at a time.

    Pass ``P`` of stream ``k`` (a mixed dataset, or a bucket) is the :class:`ShardOrder` of the
    stream's per-shard ``counts[k]`` seeded by ``(stream_seed(seed, k), P)``: a stream that runs
    out starts its next pass in a new order. A batch touches one or two passes of each stream.
    """

    def __init__(self, counts: Sequence[np.ndarray] | np.ndarray, *, seed: int, shuffle: bool, block: int, interleave: int, mix: int) -> None:
        self.counts, self.seed = counts, seed
        self.shuffle, self.block, self.interleave, self.mix = shuffle, block, interleave, mix
        self._kept: dict[tuple[int, int], ShardOrder] = {}

    def __call__(self, stream: int, epoch_pass: int) -> ShardOrder:
        order = self._kept.get((stream, epoch_pass))
        if order is None:
            if len(self._kept) >= 16:
                self._kept.clear()
            order = self._kept[stream, epoch_pass] = ShardOrder(
                self.counts[stream], seed=stream_seed(self.seed, stream), epoch=epoch_pass,
                shuffle=self.shuffle, block=self.block, interleave=self.interleave, mix=self.mix,
            )  # fmt: skip
        return order
