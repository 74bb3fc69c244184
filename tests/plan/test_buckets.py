"""Buckets: nearest-target assignment, and steps whose every rank draws from one bucket, exactly once."""

import math
import pickle
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastgen_dm.index.bucket_store import load_assignment, save_assignment
from fastgen_dm.plan import BucketIndex, BucketPlan, BucketState, ShardOrder, aspect_buckets, assign_buckets, stream_seed

world_st = st.sampled_from([1, 2, 3, 4, 8, 16, 64, 512])
batch_st = st.integers(1, 16)
bucket_counts_st = st.lists(st.integers(0, 400), min_size=1, max_size=6).filter(lambda c: sum(c) > 0)
tails_st = st.sampled_from(["drop", "pad", "carry"])


def nearest(w: int, h: int, f: int | None, targets: list[tuple[int, ...]]) -> int:
    """The documented rule, one sample at a time: nearest log ratio, then fitting resolution, then fitting length."""
    distance = [abs(math.log(w / h) - math.log(t[1] / t[0])) for t in targets]
    best = [i for i, d in enumerate(distance) if d <= min(distance) + 1e-9]
    sizes = [(lambda t: t[0] * t[1], w * h)] + ([(lambda t: t[2], f)] if f is not None else [])
    for size, own in sizes:
        fitting = [i for i in best if size(targets[i]) <= own]
        pick = max(size(targets[i]) for i in fitting) if fitting else min(size(targets[i]) for i in best)
        best = [i for i in best if size(targets[i]) == pick]
    return best[0]


@settings(max_examples=100, deadline=None)
@given(
    targets=st.lists(st.tuples(st.integers(1, 64).map(lambda x: 16 * x), st.integers(1, 64).map(lambda x: 16 * x), st.integers(1, 128)), min_size=1, max_size=12),
    sizes=st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 4000), st.integers(1, 300)), min_size=1, max_size=60),
    video=st.booleans(),
)
def test_assignment_is_the_documented_nearest_target(targets, sizes, video):
    table = [t if video else t[:2] for t in targets]
    w, h, f = (np.array(column) for column in zip(*sizes))
    got = assign_buckets(w, h, f if video else None, targets=table)
    assert got.tolist() == [nearest(int(a), int(b), int(c) if video else None, table) for a, b, c in zip(w, h, f)]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 3000), st.integers(0, 300)), min_size=1, max_size=8), seed=st.integers(0, 2**31), video=st.booleans())
def test_a_shard_of_repeated_sizes_is_assigned_as_one_sample_at_a_time(sizes, seed, video):
    targets = aspect_buckets(5, 256 * 256, frames=[8, 16] if video else None)
    w, h, f = (np.array(c)[np.random.default_rng(seed).integers(0, len(sizes), 500)] for c in zip(*sizes))  # the distinct-size path
    got = assign_buckets(w, h, f if video else None, targets=targets)
    assert got.tolist() == [nearest(int(a), int(b), int(c) if video else None, targets.tolist()) for a, b, c in zip(w, h, f)]


def test_generated_targets_are_multiples_at_about_the_pixels_asked():
    targets = aspect_buckets(9, 512 * 512, max_ratio=3.0, multiple=64)
    assert (targets % 64 == 0).all()
    ratios = targets[:, 1] / targets[:, 0]
    assert (np.diff(ratios) > 0).all() and ratios.min() == pytest.approx(1 / 3, rel=0.15) and ratios.max() == pytest.approx(3, rel=0.15)
    assert np.allclose(targets.prod(axis=1), 512 * 512, rtol=0.2)
    assert aspect_buckets(5, 256 * 256).tolist() == [[384, 192], [320, 192], [256, 256], [192, 320], [192, 384]]
    video = aspect_buckets(1, 256 * 256, frames=[16, 32])
    assert video.tolist() == [[256, 256, 16], [256, 256, 32]]
    assert assign_buckets(np.array([100, 100]), np.array([100, 100]), np.array([20, 8]), targets=video).tolist() == [0, 0]
    assert assign_buckets(np.array([100]), np.array([100]), np.array([40]), targets=video).tolist() == [1]


def deliver(plan: BucketPlan) -> list[tuple[int, list[tuple[int, int, bool]]]]:
    """Every step as (bucket, [(rank, drawn since the run began, padded)]), checking the rank contract."""
    steps = []
    for step in range(plan.num_steps):
        batches = [plan.batch(rank, step) for rank in range(plan.world_size)]
        bucket = plan.step_bucket(step)
        assert {b.bucket for b in batches} == {bucket}  # one shape on every rank
        assert all(len(b.positions) == plan.batch_size for b in batches)  # full batches
        count = int(plan.counts[bucket])
        steps.append((bucket, [(r, int(p * count + q), bool(x)) for r, b in enumerate(batches) for p, q, x in zip(b.passes, b.positions, b.padded)]))
    return steps


def real_by_bucket(steps, num_buckets: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(num_buckets)]
    for bucket, slots in steps:
        out[bucket] += [d for _, d, padded in slots if not padded]
    return out


@settings(max_examples=120, deadline=None)
@given(counts=bucket_counts_st, world=world_st, batch=batch_st, tail=tails_st, seed=st.integers(0, 2**31))
def test_every_step_is_one_bucket_and_every_sample_comes_once_as_the_tail_declares(counts, world, batch, tail, seed):
    plan = BucketPlan(counts, batch_size=batch, world_size=world, seed=seed, tail=tail)
    counts = np.asarray(counts)
    drawn = np.zeros(len(counts), np.int64)
    for epoch in range(2 if tail == "carry" else 1):
        steps = deliver(plan)
        real = real_by_bucket(steps, len(counts))
        for b, seen in enumerate(real):
            assert seen == list(range(drawn[b], drawn[b] + len(seen)))  # each bucket's order, no gap, no repeat
        delivered = sum(len(s) for _, s in steps)
        padded = sum(p for _, s in steps for _, _, p in s)
        got = np.array([len(r) for r in real])
        assert padded == plan.padded_samples and plan.padded_share == pytest.approx(padded / max(delivered, 1))
        left = (epoch + 1) * counts - drawn - got  # samples of the passes so far not delivered
        if tail == "pad":
            assert (left == 0).all()
            for bucket, slots in steps:  # repeats come from the same bucket's pass
                assert all(0 <= d - epoch * counts[bucket] < counts[bucket] for _, d, _ in slots)
        else:
            assert (left < world * batch).all() and (left >= 0).all()
            assert left.sum() == (plan.dropped_samples if tail == "drop" else plan.carried_samples)
        assert plan.state_after(plan.num_steps).epoch == epoch + 1
        drawn += got
        plan = plan.resumed(plan.state_after(plan.num_steps))
        if tail != "carry":
            drawn = (epoch + 1) * counts


@settings(max_examples=120, deadline=None)
@given(counts=bucket_counts_st, world=world_st, batch=batch_st, tail=tails_st, other_world=world_st, other_batch=batch_st, data=st.data())
def test_resume_on_another_world_size_loses_and_repeats_nothing(counts, world, batch, tail, other_world, other_batch, data):
    plan = BucketPlan(counts, batch_size=batch, world_size=world, seed=3, tail=tail)
    steps = deliver(plan)
    assume(plan.num_steps > 0)
    cut = data.draw(st.integers(0, plan.num_steps - 1))  # inside the epoch (its end is the next epoch's start)
    state = BucketState.from_state_dict(plan.state_after(cut).state_dict())
    same = plan.resumed(state)
    assert deliver(same) == steps[cut:]  # same world size: the very same schedule
    other = plan.resumed(state, world_size=other_world, batch_size=other_batch)
    head = real_by_bucket(steps[:cut], len(counts))
    rest = real_by_bucket(deliver(other), len(counts))
    for b in range(len(counts)):
        joined = head[b] + rest[b]
        assert joined == list(range(len(joined)))
        left = counts[b] - len(joined)
        assert left == 0 if tail == "pad" else 0 <= left < max(world * batch, other_world * other_batch)


@settings(max_examples=60, deadline=None)
@given(
    assignment=st.lists(st.integers(0, 4), min_size=1, max_size=300),
    shards=st.integers(1, 12),
    world=world_st,
    batch=batch_st,
    seed=st.integers(0, 2**31),
)
def test_buckets_over_sharded_orders_give_every_sample_once(assignment, shards, world, batch, seed):
    assignment = np.asarray(assignment)
    cuts = np.sort(np.random.default_rng(seed).integers(0, assignment.size + 1, size=shards - 1))
    index = BucketIndex(assignment, num_buckets=5, shard_counts=np.diff(np.concatenate([[0], cuts, [assignment.size]])))
    assert np.array_equal(index.bucket_counts, np.bincount(assignment, minlength=5))
    plan = BucketPlan(index.bucket_counts, batch_size=batch, world_size=world, seed=seed, tail="pad")
    ids = []
    for step in range(plan.num_steps):
        for rank in range(world):
            b = plan.batch(rank, step)
            order = ShardOrder(index.counts[b.bucket], seed=stream_seed(seed, b.bucket), epoch=int(b.passes[0]), block=2, interleave=3)
            shard, local = order.locate(b.positions)
            samples = index.samples(b.bucket, shard, local)
            assert (assignment[samples] == b.bucket).all()
            ids += samples[~b.padded].tolist()
    assert sorted(ids) == list(range(assignment.size))


def mapped(folder, *, num_buckets, shard_counts):
    """The node's bucket file as the DataModule opens it."""
    assignment, counts = load_assignment(folder, num_buckets=num_buckets, shard_counts=shard_counts)
    return BucketIndex(assignment, num_buckets=num_buckets, shard_counts=shard_counts, counts=counts)


def build(folder, shard_assignments, *, num_buckets, shard_counts):
    save_assignment(folder, shard_assignments, num_buckets=num_buckets, shard_counts=shard_counts)
    return mapped(folder, num_buckets=num_buckets, shard_counts=shard_counts)


@settings(max_examples=40, deadline=None)
@given(assignment=st.lists(st.integers(0, 299), min_size=1, max_size=400), shards=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_a_built_index_is_mapped_from_its_files_and_groups_like_a_sort(tmp_path_factory, assignment, shards, seed):
    assignment = np.asarray(assignment)
    counts = np.diff(np.concatenate([[0], np.sort(np.random.default_rng(seed).integers(0, assignment.size + 1, size=shards - 1)), [assignment.size]]))
    first = np.concatenate([[0], np.cumsum(counts)])
    folder = tmp_path_factory.mktemp("buckets") / "index"
    built = build(folder, (assignment[a:b] for a, b in zip(first[:-1], first[1:])), num_buckets=300, shard_counts=counts)
    assert built.assignment.dtype == np.uint16 and isinstance(built.assignment.array, np.memmap)
    opened = mapped(folder, num_buckets=300, shard_counts=counts)
    opened.KEPT_SHARDS = 2  # evictions on the way: a regrouped shard gives the same ids
    for index in (built, opened, pickle.loads(pickle.dumps(opened))):
        assert np.array_equal(index.bucket_counts, np.bincount(assignment, minlength=300))
        for bucket in np.unique(assignment).tolist():
            members = np.flatnonzero(assignment == bucket)  # file order
            shard = np.searchsorted(first, members, side="right") - 1
            local = np.concatenate([np.arange(c) for c in index.counts[bucket] if c])
            assert index.samples(bucket, shard, local).tolist() == members.tolist()


def test_a_spawned_worker_maps_the_file_again_instead_of_receiving_every_samples_bucket(tmp_path):
    assignment = np.zeros(1_000_000, np.uint8)
    index = build(tmp_path / "b", [assignment], num_buckets=3, shard_counts=[assignment.size])
    assert len(pickle.dumps(index)) < 10_000
    assert len(pickle.dumps(BucketIndex(assignment, num_buckets=3))) > assignment.size  # in memory: carried whole
    with pytest.raises(FileNotFoundError, match="holds no bucket index"):
        mapped(tmp_path / "missing", num_buckets=3, shard_counts=[1])
    with pytest.raises(ValueError, match="other buckets or shards; remove the folder to rebuild it$"):
        mapped(tmp_path / "b", num_buckets=3, shard_counts=[10, 999_990])


def test_tail_shares_on_a_skewed_distribution():
    counts = (10_000 / np.arange(1, 11) ** 1.5).astype(int)  # Zipf-like: 10000, 3535, ..., 316
    shares = {tail: BucketPlan(counts, batch_size=16, world_size=8, tail=tail) for tail in ("drop", "pad", "carry")}
    rests = counts % 128
    assert shares["drop"].dropped_samples == rests.sum() == shares["carry"].carried_samples
    assert shares["drop"].dropped_share == pytest.approx(rests.sum() / counts.sum())
    assert shares["pad"].padded_samples == ((128 - rests) * (rests > 0)).sum()
    assert shares["drop"].dropped_share < 0.05 and shares["pad"].padded_share < 0.05


def test_the_schedule_is_deterministic_from_seed_and_epoch():
    first = BucketPlan([50, 30, 20], batch_size=2, world_size=2, seed=5)
    again = BucketPlan([50, 30, 20], batch_size=2, world_size=2, seed=5)
    assert [first.step_bucket(s) for s in range(first.num_steps)] == [again.step_bucket(s) for s in range(again.num_steps)]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: BucketPlan([3, -1], batch_size=2), "counts must be a non-empty list of samples per bucket >= 0, got [3, -1]"),
        (lambda: BucketPlan([3], batch_size=2, tail="uneven"), "tail 'uneven' is unknown for buckets; use one of ('drop', 'pad', 'carry')"),
        (lambda: BucketPlan([3, 4], batch_size=2, state=BucketState(0, (0,), (0,), 0, 1, 2)), "state has 1 buckets, the plan 2; resume with the same targets"),
        (lambda: assign_buckets(np.array([4]), np.array([4]), targets=[(4, 4, 8)]), "targets have 3 columns; give frames exactly when they have three (height, width, frames)"),
        (lambda: assign_buckets(np.array([4]), np.array([0]), targets=[(4, 4)]), "widths and heights must be positive and of one length, got 1 and 1"),
        (lambda: BucketIndex(np.array([0, 3]), num_buckets=2), "assignment holds buckets outside [0, 2); pass num_buckets=len(targets)"),
    ],
)
def test_bad_inputs_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()
