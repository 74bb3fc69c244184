"""Property tests of the sample plan: exactly once, equal batches per rank, resume equivalence."""

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.plan import SamplePlan, epoch_order, rank_batches, schedule, worker_batch_ids

plans = st.builds(
    SamplePlan,
    num_samples=st.integers(1, 3000),
    batch_size=st.integers(1, 64),
    world_size=st.integers(1, 512),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 1000),
    shuffle=st.booleans(),
    tail=st.sampled_from(["pad", "drop", "uneven"]),
)


def delivered(plan: SamplePlan, num_workers: int) -> dict[int, list[np.ndarray]]:
    """What each rank yields, assembled from its workers in DataLoader's round-robin order."""
    out = {}
    for rank in range(plan.world_size):
        batches = rank_batches(plan, rank)
        per_worker = [[batches[j] for j in worker_batch_ids(len(batches), num_workers, w)] for w in range(max(num_workers, 1))]
        merged = []
        for j in range(len(batches)):  # DataLoader asks worker j % K for its next batch
            merged.append(per_worker[j % max(num_workers, 1)].pop(0))
        assert all(not rest for rest in per_worker)
        out[rank] = merged
    return out


@settings(max_examples=200, deadline=None)
@given(plan=plans, num_workers=st.integers(0, 16))
def test_every_sample_once_and_equal_batches(plan, num_workers):
    per_rank = delivered(plan, num_workers)
    counts = {len(b) for b in per_rank.values()}
    if plan.tail == "uneven":
        assert counts <= {plan.num_steps, plan.num_steps - 1}
    else:
        assert counts == {plan.num_steps}
    ids = np.concatenate([np.concatenate(b) if b else np.empty(0, np.int64) for b in per_rank.values()])
    unique, reps = np.unique(ids, return_counts=True)
    if plan.tail == "uneven":
        assert np.array_equal(np.sort(ids), np.arange(plan.num_samples))  # exactly once, no padding
    elif plan.tail == "pad":
        assert len(unique) == plan.num_samples  # nothing missing
        assert len(ids) - plan.num_samples < plan.world_size  # declared padding: fewer than one per rank
    else:
        assert (reps == 1).all()
        assert plan.num_samples - len(ids) < plan.world_size * plan.batch_size  # only an incomplete step is dropped
    for batches in per_rank.values():
        for step, batch in enumerate(batches):
            assert 1 <= len(batch) <= plan.batch_size
            if plan.tail != "uneven":  # every rank's batch at a step has the same size
                assert len(batch) == len(per_rank[0][step])


@settings(max_examples=200, deadline=None)
@given(plan=plans, data=st.data())
def test_resume_on_any_world_size_continues_the_same_global_order(plan, data):
    """Consume k steps, resume with another world size: the union equals the uninterrupted epoch."""
    order = epoch_order(plan.num_samples, plan.seed, plan.epoch, plan.shuffle)
    k = data.draw(st.integers(0, plan.num_steps))
    consumed = plan.position_after(k)
    full, last = schedule(plan)
    first_part = np.concatenate([full[:k].reshape(-1), last.reshape(-1) if k > plan.full_steps else np.empty(0, np.int64)])
    # what was consumed is exactly the order's prefix (plus padding on the last step)
    assert np.array_equal(first_part[:consumed], order[:consumed])
    new_world = data.draw(st.integers(1, 512))
    resumed = SamplePlan(
        plan.num_samples, plan.batch_size, new_world, seed=plan.seed, epoch=plan.epoch, shuffle=plan.shuffle, start=consumed, tail=plan.tail
    )
    rest_full, rest_last = schedule(resumed)
    rest = np.concatenate([rest_full.reshape(-1), rest_last.reshape(-1)])
    # the global stream continues where it stopped: step-major order of the remaining samples
    n_real = min(len(rest), plan.num_samples - consumed)
    assert np.array_equal(rest[:n_real], order[consumed : consumed + n_real])
    if plan.tail != "drop":
        assert set(order[consumed:]) <= set(rest[rest >= 0])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31), epoch=st.integers(0, 100))
def test_epoch_order_is_a_deterministic_permutation(n, seed, epoch):
    a = epoch_order(n, seed, epoch, True)
    assert np.array_equal(np.sort(a), np.arange(n))
    assert np.array_equal(a, epoch_order(n, seed, epoch, True))


def test_epochs_differ_and_no_shuffle_is_identity():
    assert not np.array_equal(epoch_order(1000, 0, 0, True), epoch_order(1000, 0, 1, True))
    assert np.array_equal(epoch_order(7, 3, 5, False), np.arange(7))


def test_global_random_state_is_untouched():
    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), np.random.random())
    random.seed(1)
    np.random.seed(1)
    rank_batches(SamplePlan(100, 4, 3, seed=5, epoch=2), 1)
    assert (random.random(), np.random.random()) == expected


def test_small_worked_example():
    plan = SamplePlan(10, batch_size=2, world_size=2, shuffle=False)
    assert [b.tolist() for b in rank_batches(plan, 0)] == [[0, 1], [4, 5], [8]]
    assert [b.tolist() for b in rank_batches(plan, 1)] == [[2, 3], [6, 7], [9]]
    assert [plan.position_after(k) for k in range(4)] == [0, 4, 8, 10]
    drop = SamplePlan(10, batch_size=2, world_size=2, shuffle=False, tail="drop")
    assert [b.tolist() for b in rank_batches(drop, 1)] == [[2, 3], [6, 7]]
    assert drop.end == 8


def test_fewer_samples_than_ranks_pads_each_rank_to_one():
    plan = SamplePlan(3, batch_size=4, world_size=8, shuffle=False)
    batches = [rank_batches(plan, r) for r in range(8)]
    assert [b[0].tolist() for b in batches] == [[0], [1], [2], [0], [1], [2], [0], [1]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0, "batch_size": 1}, "num_samples must be at least 1, got 0"),
        ({"num_samples": 5, "batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"num_samples": 5, "batch_size": 1, "start": 6}, "start must be in [0, 5], got 6"),
        ({"num_samples": 5, "batch_size": 1, "tail": "wrap"}, "tail 'wrap' is unknown; use one of ('pad', 'drop', 'uneven')"),
    ],
)
def test_invalid_plans_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplePlan(**kwargs)


def test_worker_ids_are_checked():
    with pytest.raises(ValueError, match=re.escape("worker_id must be in [0, 2), got 2")):
        worker_batch_ids(10, 2, 2)
    assert list(worker_batch_ids(5, 0, 0)) == [0, 1, 2, 3, 4]
