"""Plan layer: pure functions deciding which samples each (rank, worker) reads, and when."""

from fastgen_dm.plan.partition import (
    TAIL_POLICIES,
    SamplePlan,
    TailPolicy,
    epoch_order,
    rank_batches,
    schedule,
    worker_batch_ids,
)
from fastgen_dm.plan.progress import Cursor, EpochPlan
from fastgen_dm.plan.order import ShardOrder, sample_runs, shard_offsets
from fastgen_dm.plan.interleave import Interleave
from fastgen_dm.plan.buckets import (
    BUCKET_TAILS,
    BucketBatch,
    BucketIndex,
    BucketPlan,
    BucketState,
    BucketTail,
    aspect_buckets,
    assign_buckets,
)
from fastgen_dm.plan.mixing import EPOCH_ENDS, MIX_TAILS, EpochEnd, MixBatch, MixPlan, MixState, MixTail, stream_seed

__all__ = [
    "BUCKET_TAILS",
    "EPOCH_ENDS",
    "MIX_TAILS",
    "TAIL_POLICIES",
    "BucketBatch",
    "BucketIndex",
    "BucketPlan",
    "BucketState",
    "BucketTail",
    "Cursor",
    "EpochEnd",
    "EpochPlan",
    "Interleave",
    "MixBatch",
    "MixPlan",
    "MixState",
    "MixTail",
    "SamplePlan",
    "ShardOrder",
    "TailPolicy",
    "aspect_buckets",
    "assign_buckets",
    "epoch_order",
    "rank_batches",
    "sample_runs",
    "schedule",
    "shard_offsets",
    "stream_seed",
    "worker_batch_ids",
]
