"""What a shard stream reads (its shards and storage) and how it turns samples into batches."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Mapping

from fastgen_dm.batch.assemble import BatchDecoder, SampleTransform
from fastgen_dm.decode.sample import SampleSpec
from fastgen_dm.index.datatags import Shard
from fastgen_dm.read import BadDataPolicy


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
