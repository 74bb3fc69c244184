"""What a shard stream reads (its shards and storage) and how it turns samples into batches."""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from fastgen_dm.batch.assemble import BatchDecoder, SampleTransform
from fastgen_dm.decode.sample import SampleSpec
from fastgen_dm.index.datatags import Shard
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

    def decoder(self, policy: BadDataPolicy) -> BatchDecoder:
        return BatchDecoder(self.spec, self.constants, policy, self.transform, self.check_finite)

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
        groups = iter(buckets) if buckets is not None else None
        try:
            batches = (
                decoder.batch(items, epoch, bucket=None if groups is None else next(groups))
                for items in reader.prefetch(self.shards, wanted, prefetch_batches)
            )
            yield from keep_stepping(batches, f"rank {rank} worker {worker_id}")
        finally:
            reader.close()
            if decoder.filtered:
                logger.info(
                    "rank %d worker %d epoch %d: %d samples filtered out (presets_filter, or a key_map member missing)",
                    rank, worker_id, epoch, decoder.filtered,
                )  # fmt: skip
            policy.write_skipped(skipped_index_dir, skipped_name(rank, f"worker{worker_id}", epoch))
