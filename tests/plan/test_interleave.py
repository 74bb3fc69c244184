"""The weighted interleaving: the sorted events, counted in O(K log K), within the stated tolerance."""

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.plan.interleave import Interleave


@st.composite
def interleaves(draw):
    weights = draw(st.lists(st.integers(0, 50), min_size=1, max_size=6).filter(lambda w: sum(w) > 0))
    if draw(st.booleans()):
        return Interleave(weights)
    phases = draw(st.lists(st.integers(1, 997), min_size=len(weights), max_size=len(weights)))
    return Interleave(weights, [Fraction(p, 997) for p in phases])


def sorted_events(mix: Interleave, n: int) -> list[tuple[int, int]]:
    """The first n events, (stream, 0-based index), by sorting every event's exact time."""
    events = [((m - mix.phases[k]) * mix.total / w, k, m - 1) for k, w in enumerate(mix.weights) if w for m in range(1, n + 2)]
    return [(k, i) for _, k, i in sorted(events)[:n]]


@settings(max_examples=150, deadline=None)
@given(mix=interleaves(), n=st.integers(0, 300), data=st.data())
def test_counts_windows_and_ranks_are_the_sorted_events(mix, n, data):
    events = sorted_events(mix, n)
    g = data.draw(st.integers(0, n))
    expected = np.bincount([k for k, _ in events[:g]], minlength=len(mix.weights))
    assert mix.counts(g) == expected.tolist()
    start = data.draw(st.integers(0, g))
    stream, index = mix.window(start, g)
    assert list(zip(stream.tolist(), index.tolist())) == events[start:g]
    for position, (k, i) in enumerate(events[start:g], start):
        assert mix.rank(k, i + 1) == position


@settings(max_examples=150, deadline=None)
@given(mix=interleaves(), g=st.integers(0, 10**12))
def test_every_prefix_is_within_the_tolerance_and_longer_prefixes_never_count_less(mix, g):
    share = np.asarray(mix.weights) / mix.total
    counts, later = np.asarray(mix.counts(g)), np.asarray(mix.counts(g + 1))
    assert counts.sum() == g and later.sum() == g + 1
    assert ((later - counts) >= 0).all()
    assert (np.abs(counts - share * g) <= mix.tolerance() + 1e-6).all()


def test_webster_tolerance_is_a_half_for_two_streams_and_below_one_for_three():
    assert np.allclose(Interleave([3, 1]).tolerance(), 0.5)
    assert (Interleave([5, 3, 1]).tolerance() < 1).all()
    assert np.allclose(Interleave([1, 0]).tolerance(), 0)


def test_integer_quotas_are_met_exactly():
    mix = Interleave([6, 3, 1])
    assert mix.counts(30) == [18, 9, 3]
    bucketed = Interleave([4, 7, 2], [Fraction(1, 3), Fraction(9, 10), Fraction(1, 100)])
    assert bucketed.counts(13) == [4, 7, 2]
