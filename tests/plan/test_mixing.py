"""Property tests of the mixed epoch: each stream once per pass, proportions, resume anywhere, new weights."""

import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastgen_dm.plan import MixPlan, MixState, stream_seed

counts_st = st.lists(st.integers(1, 300), min_size=1, max_size=5)
world_st = st.sampled_from([1, 2, 3, 4, 7, 8, 16, 64, 512])
batch_st = st.integers(1, 24)


@st.composite
def mixes(draw, epoch_end=None):
    counts = draw(counts_st)
    weights = draw(st.lists(st.integers(0, 9), min_size=len(counts), max_size=len(counts)).filter(lambda w: sum(w) > 0))
    epoch_end = epoch_end or draw(st.sampled_from(["total", "first_exhausted"]))
    return dict(
        counts=counts,
        weights=weights,
        epoch_end=epoch_end,
        total_samples=draw(st.integers(100, 800)) if epoch_end == "total" else None,
        tail=draw(st.sampled_from(["pad", "drop"])),
    )


def make(mix: dict, **kwargs) -> MixPlan:
    """The plan, or no example when its epoch is shorter than one step under tail='drop' (an error, tested below)."""
    try:
        return MixPlan(**mix, **kwargs)
    except ValueError as error:
        assume("shorter than one step" not in str(error))
        raise


def resume(plan: MixPlan, state: MixState, **kwargs) -> MixPlan:
    try:
        return plan.resumed(state, **kwargs)
    except ValueError as error:
        assume("shorter than one step" not in str(error))
        raise


def real_draws(plan: MixPlan) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """The plan's draws in delivery order as (stream, drawn since the run began), pad slots left out.

    Also checks the rank contract on the way: every rank has every step, all of one size.
    """
    out, sizes = [], []
    for step in range(plan.num_steps):
        batches = [plan.batch(rank, step) for rank in range(plan.world_size)]
        sizes.append([len(b.streams) for b in batches])
        streams = np.concatenate([b.streams for b in batches])
        drawn = np.concatenate([b.passes * plan.counts[b.streams] + b.positions for b in batches])
        real = int(plan.step_counts(step).sum())
        # pad slots (fewer than world_size) repeat the tail's first samples
        assert streams.size - real < plan.world_size
        pads = np.arange(streams.size - real) % real
        assert np.array_equal(streams[real:], streams[pads]) and np.array_equal(drawn[real:], drawn[pads])
        assert np.array_equal(np.bincount(streams[:real], minlength=plan.counts.size), plan.step_counts(step))
        out += list(zip(streams[:real].tolist(), drawn[:real].tolist()))
    for step_sizes in sizes:
        assert len(set(step_sizes)) == 1  # equal batches on every rank at every step
    assert all(s == [plan.batch_size] * plan.world_size for s in sizes[:-1])
    return out, sizes


def assert_each_stream_runs_on(draws, first=None):
    """Every stream draws first[k], first[k] + 1, ... in order: no gap, no repeat."""
    streams = {k for k, _ in draws} | set(first or {})
    for k in streams:
        seen = [d for s, d in draws if s == k]
        start = (first or {}).get(k, seen[0] if seen else 0)
        assert seen == list(range(start, start + len(seen))), k


@settings(max_examples=120, deadline=None)
@given(mix=mixes(), world=world_st, batch=batch_st)
def test_each_stream_draws_every_pass_once_in_order_over_epochs(mix, world, batch):
    plan = make(mix, batch_size=batch, world_size=world)
    for _ in range(3):
        draws, _ = real_draws(plan)
        assert_each_stream_runs_on(draws, dict(enumerate(plan.state.drawn)))
        after = plan.state_after(plan.num_steps)
        if mix["epoch_end"] == "first_exhausted":
            # the epoch is pass e of every stream, ending at the first that would draw past it
            drawn = np.asarray(plan.state_after(plan.num_steps - 1).drawn) + np.asarray(plan.step_counts(plan.num_steps - 1))
            end = (plan.state.epoch + 1) * plan.counts
            assert (drawn <= end).all()
            if mix["tail"] == "pad":
                live = np.asarray(plan.weights) > 0
                assert (drawn == end)[live].any()
            assert after.drawn == tuple(end.tolist())
        plan = resume(plan, after)


@settings(max_examples=120, deadline=None)
@given(mix=mixes(epoch_end="total"), world=world_st, batch=batch_st)
def test_proportions_hold_at_every_step_and_in_every_batch(mix, world, batch):
    plan = make(mix, batch_size=batch, world_size=world)
    share, tolerance = plan.proportions, plan.tolerance + 1e-9
    for step in range(plan.num_steps):
        drawn = np.asarray(plan.state_after(step).drawn)
        assert (np.abs(drawn - share * drawn.sum()) <= tolerance).all()
        counts = plan.step_counts(step)
        assert (np.abs(counts - share * counts.sum()) <= 2 * tolerance).all()
        if step < plan.num_steps - 1:
            for rank in range(plan.world_size):
                per_rank = np.bincount(plan.batch(rank, step).streams, minlength=plan.counts.size)
                assert (np.abs(per_rank - share * batch) <= 2 * tolerance).all()


@settings(max_examples=120, deadline=None)
@given(mix=mixes(epoch_end="total"), world=world_st, batch=batch_st, other_world=world_st, other_batch=batch_st, data=st.data())
def test_resume_on_another_world_size_continues_the_same_sequence(mix, world, batch, other_world, other_batch, data):
    plan = make(mix, batch_size=batch, world_size=world)
    one = MixPlan(**{**mix, "tail": "pad"}, batch_size=1, world_size=1)
    reference = real_draws(one)[0] + real_draws(one.resumed(one.state_after(one.num_steps)))[0]  # two epochs, one sample a step
    step = data.draw(st.integers(0, plan.num_steps))
    state = MixState.from_state_dict(plan.state_after(step).state_dict())
    head = real_draws(plan)[0][: state.position] if state.epoch == 0 else real_draws(plan)[0]
    resumed = resume(plan, state, world_size=other_world, batch_size=other_batch)
    joined = head + real_draws(resumed)[0]
    assert joined == reference[: len(joined)]  # the same samples in the same order, into the next epoch too
    assert resumed.state_after(resumed.num_steps).epoch == state.epoch + 1


@settings(max_examples=120, deadline=None)
@given(mix=mixes(), world=world_st, batch=batch_st, other_world=world_st, data=st.data())
def test_new_weights_on_resume_keep_every_position_and_apply_from_the_next_step(mix, world, batch, other_world, data):
    plan = make(mix, batch_size=batch, world_size=world)
    step = data.draw(st.integers(0, max(plan.num_steps - 1, 0)))
    state = plan.state_after(step)
    weights = data.draw(st.lists(st.integers(0, 9), min_size=len(mix["counts"]), max_size=len(mix["counts"])).filter(lambda w: sum(w) > 0))
    resumed = make({**mix, "weights": weights}, batch_size=batch, world_size=other_world, state=state)
    assert resumed.state.drawn == state.drawn and resumed.state.position == state.position
    draws, _ = real_draws(resumed)
    assert_each_stream_runs_on(real_draws(plan)[0][: state.position] + draws, dict.fromkeys(range(len(mix["counts"])), 0))
    if resumed.weights != plan.weights:
        assert resumed.state.anchor == state.drawn  # the new weights are measured from the resume
    for later in range(resumed.num_steps):
        since = np.asarray(resumed.state_after(later).drawn) - np.asarray(resumed.state.anchor)
        assert (np.abs(since - resumed.proportions * since.sum()) <= resumed.tolerance + 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(counts=counts_st, data=st.data(), world=world_st, batch=batch_st)
def test_repeat_epochs_draw_repeat_times_count_exactly(counts, data, world, batch):
    repeat = data.draw(st.lists(st.sampled_from([0, 0.5, 1, 1.5, 2, 3]), min_size=len(counts), max_size=len(counts)).filter(lambda r: sum(r) > 0))
    per_epoch = np.floor(np.asarray(repeat) * counts + 0.5).astype(np.int64)
    if per_epoch.sum() == 0:
        return
    plan = MixPlan(counts, repeat=repeat, batch_size=batch, world_size=world)
    assert plan.epoch_samples == per_epoch.sum()
    for epoch in range(2):
        after = plan.state_after(plan.num_steps)
        assert np.array_equal(np.asarray(after.drawn), (epoch + 1) * per_epoch)
        plan = plan.resumed(after)


def test_a_worked_example():
    plan = MixPlan([4, 3], weights=[2, 1], batch_size=3, world_size=2, total_samples=12)
    assert [plan.batch(r, 0).streams.tolist() for r in range(2)] == [[0, 1, 0], [0, 1, 0]]
    step1 = plan.batch(0, 1)
    assert step1.positions.tolist() == [0, 2, 1] and step1.passes.tolist() == [1, 0, 1]
    assert plan.state_after(2) == MixState(1, 0, (8, 4), (0, 0), (2, 1))
    assert MixPlan([4, 3], proportions=[0.5, 0.5], batch_size=1, total_samples=1).weights == (1, 1)


def test_stream_seed_is_deterministic_and_differs_between_streams():
    assert stream_seed(7, 0) == stream_seed(7, 0) != stream_seed(7, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weights=[1, 1], proportions=[0.5, 0.5], total_samples=8), "declare exactly one of weights, proportions or repeat per mix, got ['proportions', 'weights']"),
        (dict(weights=[1], total_samples=8), "weights has 1 entries for 2 streams; give one per stream"),
        (dict(weights=[1, -1], total_samples=8), "weights[1] must be a finite number >= 0, got -1"),
        (dict(proportions=[0.5, 0.4], total_samples=8), "proportions sum to 0.9, not 1; pass weights= for relative shares"),
        (dict(weights=[0, 0], total_samples=8), "weights are all 0; give at least one stream a share"),
        (dict(weights=[1, 1]), "total_samples=None goes with epoch_end='total' (and only with it); set both or use epoch_end='first_exhausted'"),
        (dict(repeat=[1, 1], total_samples=8), "repeat declares the epoch (repeat * count samples of each stream); leave epoch_end='total' and total_samples=None"),
        (dict(weights=[1, 1], total_samples=3, tail="drop"), "an epoch of 3 samples is shorter than one step of world_size * batch_size = 4 with tail='drop'; use tail='pad' or a longer epoch"),
        (dict(weights=[1, 1], total_samples=8, tail="uneven"), "tail 'uneven' is unknown for a mix; use one of ('pad', 'drop')"),
    ],
)
def test_bad_declarations_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MixPlan([5, 3], batch_size=2, world_size=2, **kwargs)


def test_a_state_of_other_streams_or_not_written_by_a_plan_is_refused():
    plan = MixPlan([5, 3], weights=[1, 1], batch_size=2, total_samples=8)
    with pytest.raises(ValueError, match=r"^state has 3 streams, the plan 2; resume the same streams in the same order$"):
        plan.resumed(MixState(0, 0, (0, 0, 0), (0, 0, 0), (1, 1)))
    with pytest.raises(ValueError, match=r"does not follow its weights from its anchor \[0, 0\]"):
        plan.resumed(MixState(0, 2, (2, 0), (0, 0), (1, 1)))
