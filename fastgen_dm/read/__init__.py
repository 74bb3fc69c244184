"""Read layer: stream exactly the planned members out of zips and tars; count what is bad."""

from fastgen_dm.read.bad_data import (
    GRACE_SAMPLES,
    BadDataPolicy,
    StandIn,
    TooManyBadSamplesError,
    keep_stepping,
    new_tally,
    read_skipped,
    skipped_name,
)
from fastgen_dm.read.shard_bytes import ByteCounter, ShardReadError, iter_shard, read_runs, split_sample
from fastgen_dm.read.zip_reader import EDMReader

__all__ = [
    "BadDataPolicy",
    "EDMReader",
    "StandIn",
    "TooManyBadSamplesError",
    "keep_stepping",
    "new_tally",
    "read_skipped",
    "skipped_name",
    "GRACE_SAMPLES",
    "ByteCounter",
    "ShardReadError",
    "iter_shard",
    "read_runs",
    "split_sample",
]
