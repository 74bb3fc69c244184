"""The sharded epoch order: a bijection computed per position, blocks read as runs, O(shards) memory."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.plan import SamplePlan, ShardOrder, sample_runs, shard_offsets, worker_batch_ids

counts_st = st.lists(st.integers(0, 60), min_size=1, max_size=40).filter(lambda c: sum(c) > 0)
orders = st.builds(
    ShardOrder,
    counts=counts_st,
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
    shuffle=st.booleans(),
    block=st.integers(1, 20),
    interleave=st.integers(1, 70),
    mix=st.integers(1, 20),
)


def unmixed(order: ShardOrder, mix: int = 1) -> ShardOrder:
    """The same order with ``mix`` (1: blocks in place)."""
    return ShardOrder(order.counts, seed=order.seed, epoch=order.epoch, shuffle=order.shuffle, block=order.block, interleave=order.interleave, mix=mix)


def every_position(order: ShardOrder) -> tuple[np.ndarray, np.ndarray]:
    return order.locate(np.arange(order.num_samples))


@settings(max_examples=200, deadline=None)
@given(order=orders)
def test_the_order_is_a_deterministic_bijection_onto_every_sample(order):
    shard, local = every_position(order)
    ids = shard_offsets(order.counts)[shard] + local
    assert np.array_equal(np.sort(ids), np.arange(order.num_samples))
    again = unmixed(order, order.mix)
    assert all(np.array_equal(a, b) for a, b in zip((shard, local), every_position(again)))


@settings(max_examples=200, deadline=None)
@given(order=orders, data=st.data())
def test_any_positions_in_any_order_give_the_same_samples(order, data):
    """Random access (a resume anywhere, any worker's batches) agrees with the whole order."""
    shard, local = every_position(order)
    positions = np.array(data.draw(st.lists(st.integers(0, order.num_samples - 1), max_size=50)), dtype=np.int64)
    got = order.locate(positions)
    assert np.array_equal(got[0], shard[positions]) and np.array_equal(got[1], local[positions])


@settings(max_examples=150, deadline=None)
@given(order=orders)
def test_each_block_is_a_run_of_consecutive_positions(order):
    """A block (``block`` neighbouring samples of a shard; a whole shard without shuffle) is one read."""
    order = unmixed(order)
    shard, local = every_position(order)
    block = order.block if order.shuffle else max(order.counts)
    key = shard * (max(order.counts) + 1) + local // block
    for k in np.unique(key):
        at = np.flatnonzero(key == k)
        assert np.array_equal(at, np.arange(at[0], at[0] + at.size))
        assert np.array_equal(local[at], np.arange(local[at[0]], local[at[0]] + at.size))


def test_without_shuffle_the_order_is_the_file_order():
    shard, local = every_position(ShardOrder([3, 0, 2], shuffle=False))
    assert shard.tolist() == [0, 0, 0, 2, 2] and local.tolist() == [0, 1, 2, 0, 1]


def test_worked_example_of_the_module_docs():
    order = ShardOrder([5, 3, 4], seed=0, epoch=0, block=2, interleave=2)  # shard order [2, 0, 1] for this seed
    shard, local = every_position(order)
    assert [f"s{s}:{i}" for s, i in zip(shard, local)] == [
        "s2:0", "s2:1", "s0:0", "s0:1", "s2:2", "s2:3", "s0:2", "s0:3", "s0:4", "s1:0", "s1:1", "s1:2"
    ]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    order=orders,
    batch=st.integers(1, 16),
    world=st.integers(1, 512),
    workers=st.integers(0, 16),
    tail=st.sampled_from(["pad", "drop", "uneven"]),
)
def test_every_sample_once_equal_batches_and_each_sample_read_by_one_reader(order, batch, world, workers, tail):
    """Across all (rank, worker) readers each (shard, sample) is read once; ranks step together."""
    plan = SamplePlan(order.num_samples, batch, world, seed=order.seed, epoch=order.epoch, shuffle=order.shuffle, tail=tail)
    reads = []
    for rank in range(world):
        num = plan.rank_num_batches(rank)
        if tail != "uneven":
            assert num == plan.num_steps
        for worker in range(max(workers, 1)):
            for j in worker_batch_ids(num, workers, worker):
                shard, local = order.locate(plan.batch_positions(rank, j))
                reads += [(int(s), int(i)) for s, i in zip(shard, local)]
    everything = set(zip(*map(lambda a: a.tolist(), every_position(order))))
    if tail == "uneven":
        assert sorted(reads) == sorted(everything)
    elif tail == "pad":
        assert set(reads) == everything and len(reads) - len(everything) < world
    else:
        assert len(set(reads)) == len(reads) and len(everything) - len(reads) < world * batch


@settings(max_examples=100, deadline=None)
@given(order=orders, batch=st.integers(1, 16), world=st.integers(1, 64), data=st.data())
def test_resume_on_another_world_size_continues_the_same_stream(order, batch, world, data):
    plan = SamplePlan(order.num_samples, batch, world, seed=order.seed, shuffle=order.shuffle, tail="uneven")
    k = data.draw(st.integers(0, plan.num_steps))
    consumed = plan.position_after(k)
    resumed = SamplePlan(order.num_samples, batch, data.draw(st.integers(1, 512)), seed=order.seed, shuffle=order.shuffle, start=consumed, tail="uneven")
    first = [p for j in range(k) for r in range(world) if j < plan.rank_num_batches(r) for p in plan.batch_positions(r, j)]
    rest = [p for j in range(resumed.num_steps) for r in range(resumed.world_size) if j < resumed.rank_num_batches(r) for p in resumed.batch_positions(r, j)]
    assert first + rest == list(range(order.num_samples))


def test_memory_is_a_few_bytes_a_shard_and_independent_of_samples():
    small, large = (ShardOrder(np.full(10_000, n), seed=1, block=14, interleave=64) for n in (10, 10**6))
    for order in (small, large):
        order.locate(np.arange(0, order.num_samples, order.num_samples // 100))
        held = sum(a.nbytes for a in vars(order).values() if isinstance(a, np.ndarray))
        assert held <= 32 * 10_000
    assert large.num_samples == 10**10


@pytest.mark.parametrize("bad", [{"block": 0}, {"interleave": 0}, {"mix": 0}])
def test_block_interleave_and_mix_must_be_positive(bad):
    with pytest.raises(ValueError, match="block, interleave and mix must be at least 1"):
        ShardOrder([3], **bad)


def test_sample_runs_worked_example():
    runs = sample_runs(np.array([4, 1, 4]), np.array([8, 0, 7]))
    assert [(s, at.tolist()) for s, at in runs] == [(1, [1]), (4, [2, 0])]


@settings(max_examples=100, deadline=None)
@given(order=orders, batch=st.integers(1, 64), data=st.data())
def test_a_batch_reads_each_block_it_touches_as_one_run(order, batch, data):
    order = unmixed(order)
    start = data.draw(st.integers(0, order.num_samples - 1))
    shard, local = order.locate(np.arange(start, min(start + batch, order.num_samples)))
    runs = sample_runs(shard, local)
    assert sorted(k for _, at in runs for k in at.tolist()) == list(range(shard.size))
    for s, at in runs:
        assert (shard[at] == s).all() and np.array_equal(np.diff(local[at]), np.ones(at.size - 1, np.int64))
    block = order.block if order.shuffle else max(order.counts)
    assert len(runs) <= len({(int(s), int(i) // block) for s, i in zip(shard, local)})


@settings(max_examples=100, deadline=None)
@given(order=orders, data=st.data())
def test_mixing_permutes_each_aligned_window_and_nothing_across_windows(order, data):
    """A batch aligned to ``mix`` (every full batch) holds its window's samples, whatever the world size."""
    plain, mixed = every_position(unmixed(order)), every_position(order)
    w = data.draw(st.integers(0, (order.num_samples - 1) // order.mix))
    window = slice(w * order.mix, min((w + 1) * order.mix, order.num_samples))
    as_pairs = lambda located: sorted(zip(located[0][window].tolist(), located[1][window].tolist()))  # noqa: E731
    assert as_pairs(plain) == as_pairs(mixed)
