"""The cursor: steps consumed become a global (epoch, position) that resumes exactly."""

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.plan import Cursor, SamplePlan


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
