"""The sharded epoch order: a permutation, shard-contiguous without windows, windows bounded."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.plan import SamplePlan, locate, rank_batches, shard_epoch_order, shard_offsets

counts_st = st.lists(st.integers(0, 60), min_size=1, max_size=40).filter(lambda c: sum(c) > 0)


@settings(max_examples=150, deadline=None)
@given(counts=counts_st, seed=st.integers(0, 2**31), epoch=st.integers(0, 50), window=st.integers(1, 100))
def test_order_is_a_deterministic_permutation_with_bounded_windows(counts, seed, epoch, window):
    order = shard_epoch_order(counts, seed, epoch, True, window)
    assert np.array_equal(np.sort(order), np.arange(sum(counts)))
    assert np.array_equal(order, shard_epoch_order(counts, seed, epoch, True, window))
    # each window of the order holds the same ids as the same window of the unshuffled-within-window order
    base = shard_epoch_order(counts, seed, epoch, True, 1)
    for start in range(0, len(order), window):
        assert set(order[start : start + window]) == set(base[start : start + window])


@settings(max_examples=100, deadline=None)
@given(counts=counts_st, seed=st.integers(0, 2**31))
def test_without_windows_each_shard_is_read_front_to_back(counts, seed):
    offsets = shard_offsets(counts)
    shard, local = locate(shard_epoch_order(counts, seed, 0, True, 1), offsets)
    runs = np.flatnonzero(np.diff(shard)) + 1
    for segment_shard, segment_local in zip(np.split(shard, runs), np.split(local, runs)):
        assert len(set(segment_shard)) == 1
        assert np.array_equal(segment_local, np.arange(counts[segment_shard[0]]))


@settings(max_examples=100, deadline=None)
@given(
    counts=counts_st,
    batch=st.integers(1, 16),
    world=st.integers(1, 512),
    workers=st.integers(0, 16),
    seed=st.integers(0, 100),
    window=st.integers(1, 50),
)
def test_every_sample_once_and_each_shard_sample_read_by_one_reader(counts, batch, world, workers, seed, window):
    """Read once: across all (rank, worker) readers each (shard, sample) is read exactly once."""
    n = sum(counts)
    plan = SamplePlan(n, batch, world, seed=seed, tail="uneven")
    order = shard_epoch_order(counts, seed, 0, True, window)
    reads = [(int(g), rank, j % max(workers, 1)) for rank in range(world) for j, b in enumerate(rank_batches(plan, rank, order)) for g in b]
    assert sorted(g for g, _, _ in reads) == list(range(n))  # no sample is read by two readers, none is missed


def test_worked_example():
    assert locate(np.array([0, 2, 3, 4]), shard_offsets([3, 2]))[0].tolist() == [0, 0, 1, 1]
    assert shard_epoch_order([3, 2], 0, 0, False).tolist() == [0, 1, 2, 3, 4]
