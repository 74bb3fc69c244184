"""keep_stepping: a reader yields one batch per planned batch, whatever it loses."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgen_dm.read import TooManyBadSamplesError, keep_stepping


def test_worked_example():
    assert list(keep_stepping([None, "a", None, "b"], "r0")) == ["a", "a", "a", "b"]


@given(st.lists(st.one_of(st.none(), st.integers(0, 9)), min_size=1).filter(lambda b: any(x is not None for x in b)))
def test_one_batch_for_each_planned_batch(batches):
    out = list(keep_stepping(batches, "r0"))
    assert len(out) == len(batches)
    first_good = next(b for b in batches if b is not None)
    for j, (planned, got) in enumerate(zip(batches, out)):
        if planned is not None:
            assert got == planned
        elif all(b is None for b in batches[:j]):
            assert got == first_good
        else:
            assert got == out[j - 1]


def test_a_reader_that_loses_everything_raises_naming_itself():
    with pytest.raises(TooManyBadSamplesError, match=r"^rank 1 worker 0: every sample of its 2 batches was bad or filtered out$"):
        list(keep_stepping([None, None], "rank 1 worker 0"))


def test_a_lost_batch_takes_the_stand_in_of_its_own_group_so_the_step_keeps_its_shape():
    assert list(keep_stepping(["a", None, "c", None, None], "r0", groups=[0, 0, 1, 1, 0])) == ["a", "a", "c", "c", "a"]
    # a group without a good batch yet: the last of any group (its shape differs; logged)
    assert list(keep_stepping(["a", None, "c"], "r0", groups=[0, 1, 1])) == ["a", "a", "c"]
