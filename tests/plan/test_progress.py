"""The cursor: steps consumed become a global (epoch, position) that resumes exactly."""

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.plan import Cursor, SamplePlan
from fastgen_dm.plan.progress import steps_starting_at


def make(n, batch, world, tail="pad"):
    return lambda epoch, start: SamplePlan(n, batch, world, seed=0, epoch=epoch, start=start, tail=tail)


def test_cursor_counts_steps_and_rolls_over_epochs():
    cursor = Cursor()
    plan = cursor.begin(make(10, 2, 2))
    assert plan.num_steps == 3
    cursor.step()
    assert cursor.state_dict() == {"epoch": 0, "position": 4}
    cursor.step()
    cursor.step()
    assert cursor.state_dict() == {"epoch": 1, "position": 0}
    assert cursor.begin(make(10, 2, 2)).epoch == 1


def test_prefetched_but_unconsumed_batches_do_not_move_the_cursor():
    cursor = Cursor()
    cursor.begin(make(100, 2, 1))
    cursor.step()
    # an interrupted iteration (e.g. max_steps) resumes at the consumed position
    assert cursor.begin(make(100, 2, 1)).start == 2


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 500), batch=st.integers(1, 16), world=st.integers(1, 64), new_world=st.integers(1, 64), data=st.data())
def test_a_restored_cursor_continues_on_another_world_size(n, batch, world, new_world, data):
    cursor = Cursor()
    plan = cursor.begin(make(n, batch, world))
    k = data.draw(st.integers(0, plan.num_steps - 1))
    for _ in range(k):
        cursor.step()
    restored = Cursor()
    restored.load_state_dict(cursor.state_dict())
    resumed = restored.begin(make(n, batch, new_world))
    assert (resumed.epoch, resumed.start) == (0, plan.position_after(k))


def test_an_epoch_completed_before_the_checkpoint_starts_the_next():
    cursor = Cursor(epoch=3, position=10)
    assert cursor.begin(make(10, 2, 2)).epoch == 4


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 400), batch=st.integers(1, 8), world=st.integers(1, 8), data=st.data())
def test_skipped_steps_are_passed_over_and_every_checkpoint_between_resumes_past_them(n, batch, world, data):
    plan = make(n, batch, world, tail="uneven")(0, 0)
    positions = [plan.position_after(k) for k in range(plan.num_steps)]
    skipped = set(data.draw(st.lists(st.sampled_from(range(plan.num_steps)), max_size=plan.num_steps)))
    assert steps_starting_at(plan, {positions[k] for k in skipped} | {positions[-1] + 1}) == skipped  # a non-boundary matches nothing
    cursor = Cursor()
    cursor.skipped = {0: {positions[k] for k in skipped}}
    cursor.begin(make(n, batch, world, tail="uneven"))
    trained = []
    while cursor.epoch == 0:  # the position before each consumed batch is the next kept step's
        trained.append(positions.index(cursor.position))
        cursor.step()
    assert trained == [k for k in range(plan.num_steps) if k not in skipped]
