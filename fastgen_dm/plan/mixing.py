"""A mixed epoch over several streams: which stream, and which of its positions, fills each slot.

Each stream ``k`` (a dataset with ``counts[k]`` samples) keeps its own order; the mix only says
which of its positions are drawn, as one cumulative integer per stream: draw ``d`` of stream
``k`` is position ``d % counts[k]`` of its pass ``d // counts[k]``. Pass ``P`` of stream ``k`` is
ordered by ``(stream_seed(seed, k), P)``, so a stream that runs out starts its next pass with a
new permutation and is never repeated within a pass.

The mixed sequence is the interleaving of :mod:`fastgen_dm.plan.interleave` with the streams'
weights (Webster phases): a world-size independent sequence of stream ids, which global steps
cut into ``world_size * batch_size`` consecutive samples and ranks into ``batch_size``
consecutive samples, exactly as :class:`SamplePlan` cuts an order. Example, weights (2, 1),
counts (4, 3), two ranks, batch 3::

    sequence   0 1 0 0 1 0 | 0 1 0 0 1 0 | ...
    step 0     rank 0: stream 0 pos 0, stream 1 pos 0, stream 0 pos 1
               rank 1: stream 0 pos 2, stream 1 pos 1, stream 0 pos 3
    step 1     rank 0: stream 0 pass 1 pos 0, stream 1 pos 2, stream 0 pass 1 pos 1   ...

Guarantees:

- Exactly once per pass: every stream draws its positions ``0, 1, 2, ...`` in order across
  steps, ranks and slots, with no gap or repeat (pad slots, declared, repeat a few).
- Proportions: after ``g`` samples under one set of weights, stream ``k`` has drawn
  ``pi_k g`` within :attr:`MixPlan.tolerance` (``1/2 + pi_k (K - 2) / 2`` for ``K`` streams of
  non-zero weight: 1/2 for two streams, below 1 for three), at every ``g``, with no drift. A
  global step, or one rank's batch, of ``n`` samples holds ``pi_k n`` within twice that.
- Equal steps on every rank, with :class:`SamplePlan`'s tail: ``pad`` splits the last step
  evenly and fills the fewer than ``world_size`` missing slots with the tail's first samples
  again; ``drop`` leaves the incomplete last step out and its samples open the next epoch
  (under ``"first_exhausted"``, whose next epoch is the next pass, they are skipped).
- Resume: the state (:class:`MixState`) is the epoch, the global samples consumed in it and
  a few integers per stream, the same on every rank and world size. Resuming on any world size
  or batch size with the same weights continues the very same sequence; with other weights, every
  stream keeps its position and the new weights apply from the first step after the resume (the
  tolerance then holds from there).

Epochs (``epoch_end``):

- ``"total"``: an epoch is ``total_samples`` samples; streams run on across epochs (a stream
  that runs out starts its next pass), and the sequence runs on too, so the tolerance holds
  over the whole run.
- ``"first_exhausted"``: epoch ``e`` is pass ``e`` of every stream and ends when the first
  stream would draw past its pass; the rest of the other streams' passes is skipped.
- ``repeat=[r_k]`` declares the epoch: stream ``k`` draws ``round(r_k * counts[k])`` samples
  (``r_k = 2`` is two passes, 0.5 half of one), exactly, in every epoch that starts with these
  declarations and ends by ``pad``; its share of each step is proportional to that.

Cost: a step's counts and a batch's slots are O(K log K) plus O(batch_size), for any step and
any dataset size; nothing per sample of a stream is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np

from fastgen_dm.plan.interleave import Interleave
from fastgen_dm.plan.partition import SamplePlan

EpochEnd = Literal["total", "first_exhausted"]
EPOCH_ENDS: tuple[str, ...] = ("total", "first_exhausted")
MixTail = Literal["pad", "drop"]
MIX_TAILS: tuple[str, ...] = ("pad", "drop")


def stream_seed(seed: int, stream: int) -> int:
    """The seed of stream ``stream``'s own order: its pass ``P`` is ordered by ``(stream_seed(seed, stream), P)``.

    For example ``ShardOrder(counts_k, seed=stream_seed(seed, k), epoch=P)``; streams of equal
    size under one seed still get unrelated permutations.
    """
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


@dataclass(frozen=True)
class MixState:
    """Where a mixed run stands: all it needs to resume, on any world size.

    Attributes:
        epoch: The epoch.
        position: Samples of this epoch consumed, globally (over all ranks).
        drawn: Per stream, samples drawn since the run began: position ``drawn % count`` of
            pass ``drawn // count`` comes next.
        anchor: Per stream, ``drawn`` where ``weights`` began to apply; the sequence is a
            function of the samples drawn since then.
        weights: The weights in force, as integers in lowest terms (``[0.25, 0.75]`` -> ``(1, 3)``).
    """

    epoch: int
    position: int
    drawn: tuple[int, ...]
    anchor: tuple[int, ...]
    weights: tuple[int, ...]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "drawn": list(self.drawn), "anchor": list(self.anchor), "weights": list(self.weights)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "MixState":
        return cls(
            int(state["epoch"]),
            int(state["position"]),
            tuple(int(d) for d in state["drawn"]),
            tuple(int(a) for a in state["anchor"]),
            tuple(int(w) for w in state["weights"]),
        )


class MixBatch(NamedTuple):
    """One rank's batch of a mixed step, slot by slot (each int64 of shape (batch,))."""

    streams: np.ndarray  # which stream fills the slot
    positions: np.ndarray  # the position in that stream's pass
    passes: np.ndarray  # the pass of that stream (its permutation is seeded by it)


def _exact(value: float | int | Fraction, name: str) -> Fraction:
    if isinstance(value, np.generic):  # numpy scalars from an array of weights
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return Fraction(value)


def _lowest_terms(values: Sequence[Fraction]) -> tuple[int, ...]:
    """Non-negative rationals as integers of the same ratios, in lowest terms: [1/4, 3/4] -> (1, 3)."""
    common = math.lcm(*(v.denominator for v in values))
    ints = [int(v * common) for v in values]
    divisor = math.gcd(*ints)
    return tuple(i // divisor for i in ints)


def _declared_weights(
    counts: np.ndarray, weights: Sequence[float] | None, proportions: Sequence[float] | None, repeat: Sequence[float] | None
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(integer weights in lowest terms, samples per stream per epoch for ``repeat`` else None)."""
    given = {name: v for name, v in (("weights", weights), ("proportions", proportions), ("repeat", repeat)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"declare exactly one of weights, proportions or repeat per mix, got {sorted(given) or 'none'}")
    (name, values), = given.items()
    exact = [_exact(v, f"{name}[{k}]") for k, v in enumerate(values)]
    if len(exact) != counts.size:
        raise ValueError(f"{name} has {len(exact)} entries for {counts.size} streams; give one per stream")
    if sum(exact) == 0:
        raise ValueError(f"{name} are all 0; give at least one stream a share")
    if name == "proportions" and abs(float(sum(exact)) - 1) > 1e-9:
        raise ValueError(f"proportions sum to {float(sum(exact))}, not 1; pass weights= for relative shares")
    if name != "repeat":
        return _lowest_terms(exact), None
    per_epoch = tuple(math.floor(r * int(n) + Fraction(1, 2)) for r, n in zip(exact, counts))
    if sum(per_epoch) == 0:
        raise ValueError(f"repeat {list(values)} rounds to no sample per epoch for counts {counts.tolist()}; raise a repeat")
    return _lowest_terms([Fraction(n) for n in per_epoch]), per_epoch


class MixPlan:
    """One epoch (from a state on) of a mix of streams of ``counts`` samples (see the module docs).

    Args:
        counts: Samples in each stream (each at least 1).
        weights: Each stream's relative share of every step, e.g. ``[3, 1]``.
        proportions: The same, normalized: they sum to 1, e.g. ``[0.75, 0.25]``.
        repeat: Passes of each stream per epoch, e.g. ``[1, 3]``: the epoch is
            ``sum(round(repeat[k] * counts[k]))`` samples, shared in that ratio.
        batch_size: Samples per rank per step.
        world_size: Ranks.
        epoch_end: ``"total"`` (``total_samples`` per epoch) or ``"first_exhausted"``; with
            ``repeat`` the epoch is declared, so leave it ``"total"`` and ``total_samples`` None.
        total_samples: Samples per epoch under ``epoch_end="total"`` with weights or proportions.
        tail: ``"pad"`` or ``"drop"`` (see the module docs).
        state: Where to start: a :meth:`state_after` of this or another plan (any world size,
            batch size or weights); None starts the run.

    Example::

        >>> plan = MixPlan([4, 3], weights=[2, 1], batch_size=3, world_size=2, total_samples=12)
        >>> plan.num_steps, plan.step_counts(0).tolist()
        (2, [4, 2])
        >>> plan.batch(1, 0).streams.tolist(), plan.batch(1, 0).positions.tolist()
        ([0, 1, 0], [2, 1, 3])
    """

    def __init__(
        self,
        counts: Sequence[int] | np.ndarray,
        *,
        weights: Sequence[float] | None = None,
        proportions: Sequence[float] | None = None,
        repeat: Sequence[float] | None = None,
        batch_size: int,
        world_size: int = 1,
        epoch_end: EpochEnd = "total",
        total_samples: int | None = None,
        tail: MixTail = "pad",
        state: MixState | None = None,
    ) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.ndim != 1 or self.counts.size == 0 or (self.counts < 1).any():
            raise ValueError(f"counts must be a non-empty list of sample counts >= 1, got {np.asarray(counts).tolist()}")
        self._declaration = {"weights": weights, "proportions": proportions, "repeat": repeat, "epoch_end": epoch_end, "total_samples": total_samples, "tail": tail}
        self.weights, self._repeat_samples = _declared_weights(self.counts, weights, proportions, repeat)
        if epoch_end not in EPOCH_ENDS:
            raise ValueError(f"epoch_end {epoch_end!r} is unknown; use one of {EPOCH_ENDS}")
        if tail not in MIX_TAILS:
            raise ValueError(f"tail {tail!r} is unknown for a mix; use one of {MIX_TAILS}")
        if repeat is not None and (epoch_end != "total" or total_samples is not None):
            raise ValueError("repeat declares the epoch (repeat * count samples of each stream); leave epoch_end='total' and total_samples=None")
        if repeat is None and (epoch_end == "total") != (total_samples is not None):
            raise ValueError(f"total_samples={total_samples} goes with epoch_end='total' (and only with it); set both or use epoch_end='first_exhausted'")
        if total_samples is not None and total_samples < 1:
            raise ValueError(f"total_samples must be at least 1, got {total_samples}")
        self.batch_size, self.world_size, self.epoch_end, self.tail = batch_size, world_size, epoch_end, tail
        self._mix = Interleave(self.weights)
        self.state = self._start(state)
        anchor = np.asarray(self.state.anchor, dtype=np.int64)
        self._anchor = anchor
        # sequence index (events since the anchor) of the state's position
        self._at = int(np.asarray(self.state.drawn, dtype=np.int64).sum() - anchor.sum())
        self.epoch_samples = self._epoch_samples(total_samples)
        # the step arithmetic of SamplePlan over this epoch's positions (an epoch whose new
        # declaration is shorter than its position has no step left)
        self._steps = SamplePlan(
            num_samples=max(self.epoch_samples, self.state.position), batch_size=batch_size, world_size=world_size,
            shuffle=False, start=self.state.position, tail=tail,
        )
        if self.state.position == 0 and self._steps.num_steps == 0:
            raise ValueError(f"an epoch of {self.epoch_samples} samples is shorter than one step of world_size * batch_size = {world_size * batch_size} with tail='drop'; use tail='pad' or a longer epoch")

    def _start(self, state: MixState | None) -> MixState:
        K = self.counts.size
        if state is None:
            return MixState(0, 0, (0,) * K, (0,) * K, self.weights)
        if not len(state.drawn) == len(state.anchor) == K:
            raise ValueError(f"state has {len(state.drawn)} streams, the plan {K}; resume the same streams in the same order")
        if state.epoch < 0 or state.position < 0 or any(d < a for d, a in zip(state.drawn, state.anchor)) or min(state.anchor) < 0:
            raise ValueError(f"state {state} is not one a MixPlan wrote (negative, or drawn below its anchor)")
        if self.epoch_end == "first_exhausted":
            low, high = state.epoch * self.counts, (state.epoch + 1) * self.counts
            if ((np.asarray(state.drawn) < low) | (np.asarray(state.drawn) > high)).any():
                raise ValueError(f"state.drawn {list(state.drawn)} is outside pass {state.epoch} of counts {self.counts.tolist()}; epoch_end='first_exhausted' resumes only its own states")
        if state.weights != self.weights:  # new weights apply from here: every stream keeps its position
            return MixState(state.epoch, state.position, state.drawn, state.drawn, self.weights)
        since = self._mix.counts(sum(state.drawn) - sum(state.anchor))
        if any(a + s != d for a, s, d in zip(state.anchor, since, state.drawn)):
            raise ValueError(f"state.drawn {list(state.drawn)} does not follow its weights from its anchor {list(state.anchor)}; pass a state that MixPlan.state_after wrote")
        return state

    def _epoch_samples(self, total_samples: int | None) -> int:
        if self._repeat_samples is not None:
            return sum(self._repeat_samples)
        if total_samples is not None:
            return total_samples
        # first_exhausted: the epoch ends just before the first draw past a stream's pass end
        room = (self.state.epoch + 1) * self.counts - self._anchor
        end = min(self._mix.rank(k, int(room[k]) + 1) for k in range(self.counts.size) if self.weights[k] > 0)
        return self.state.position + end - self._at

    @property
    def proportions(self) -> np.ndarray:
        """float64 (K,): each stream's share of the sequence."""
        return np.asarray(self.weights, dtype=np.float64) / sum(self.weights)

    @property
    def tolerance(self) -> np.ndarray:
        """float64 (K,): the bound on ``|drawn_k - proportion_k * g|`` after any ``g`` samples under these weights."""
        return self._mix.tolerance()

    @property
    def num_steps(self) -> int:
        """Global steps (= batches on every rank) from the state to the end of the epoch."""
        return self._steps.num_steps

    def _index(self, position: int) -> int:
        """Sequence index of an epoch position at or after the state's."""
        return self._at + position - self.state.position

    def _check(self, rank: int, step: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step must be in [0, {self.num_steps}), got {step}")

    def _slots(self, rank: int, step: int) -> np.ndarray:
        """Epoch positions (int64) filling rank ``rank``'s slots at ``step``; pad slots repeat the tail's first."""
        plan = self._steps
        if step < plan.full_steps:
            first = plan.start + step * plan.step_samples + rank * self.batch_size
            return np.arange(first, first + self.batch_size, dtype=np.int64)
        rest = plan.tail_samples
        slot = np.arange(rank * plan.tail_batch, (rank + 1) * plan.tail_batch, dtype=np.int64)
        return plan.start + plan.full_steps * plan.step_samples + np.where(slot < rest, slot, (slot - rest) % rest)

    def step_counts(self, step: int) -> np.ndarray:
        """int64 (K,): samples each stream draws at ``step`` (over all ranks; pad slots not counted)."""
        self._check(0, step)
        first = self._steps.position_after(step)
        last = self._steps.position_after(step + 1)
        return np.subtract(self._mix.counts(self._index(last)), self._mix.counts(self._index(first)))

    def batch(self, rank: int, step: int) -> MixBatch:
        """Rank ``rank``'s batch at ``step`` of this plan (counted from the state)."""
        self._check(rank, step)
        slots = self._slots(rank, step)
        low, high = int(slots.min()), int(slots.max()) + 1
        stream, index = self._mix.window(self._index(low), self._index(high))
        stream, index = stream[slots - low], index[slots - low]
        drawn = self._anchor[stream] + index
        count = self.counts[stream]
        return MixBatch(stream, drawn % count, drawn // count)

    def position_after(self, steps: int) -> int:
        """The epoch position once ``steps`` steps of this plan are consumed (the cursor's view)."""
        return self._steps.position_after(steps)

    def rank_num_batches(self, rank: int) -> int:
        """Batches rank ``rank`` takes: every rank takes :attr:`num_steps`."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        return self.num_steps

    def state_at(self, position: int) -> MixState:
        """The state at epoch ``position`` (at or after this plan's), e.g. a cursor's after a resume elsewhere."""
        if not self.state.position <= position <= self._steps.end:
            raise ValueError(f"position must be in [{self.state.position}, {self._steps.end}], got {position}")
        drawn = tuple(int(a + s) for a, s in zip(self._anchor, self._mix.counts(self._index(position))))
        return MixState(self.state.epoch, position, drawn, self.state.anchor, self.weights)

    def state_after(self, steps: int) -> MixState:
        """The state once ``steps`` steps of this plan are consumed; after the last, the next epoch's start."""
        if not 0 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in [0, {self.num_steps}], got {steps}")
        position = self._steps.position_after(steps)
        drawn = tuple(int(a + s) for a, s in zip(self._anchor, self._mix.counts(self._index(position))))
        if steps < self.num_steps:
            return MixState(self.state.epoch, position, drawn, self.state.anchor, self.weights)
        epoch = self.state.epoch + 1
        if self.epoch_end == "first_exhausted":  # the next epoch is the next pass of every stream
            start = tuple(int(n) * epoch for n in self.counts)
            return MixState(epoch, 0, start, start, self.weights)
        if self._repeat_samples is not None:  # each repeat epoch starts its sequence anew, so it ends exactly
            return MixState(epoch, 0, drawn, drawn, self.weights)
        return MixState(epoch, 0, drawn, self.state.anchor, self.weights)

    def resumed(self, state: MixState, *, world_size: int | None = None, batch_size: int | None = None) -> "MixPlan":
        """The same declarations from ``state``, on ``world_size`` ranks of ``batch_size`` (default: this plan's)."""
        return MixPlan(
            self.counts,
            batch_size=self.batch_size if batch_size is None else batch_size,
            world_size=self.world_size if world_size is None else world_size,
            state=state,
            **self._declaration,  # type: ignore[arg-type]
        )
