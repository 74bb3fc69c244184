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

__all__ = [
    "TAIL_POLICIES",
    "Cursor",
    "EpochPlan",
    "SamplePlan",
    "ShardOrder",
    "TailPolicy",
    "epoch_order",
    "rank_batches",
    "sample_runs",
    "schedule",
    "shard_offsets",
    "worker_batch_ids",
]
