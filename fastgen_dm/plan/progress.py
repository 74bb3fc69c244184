"""The training stream's position: an epoch and the global samples consumed in it.

This is the whole resumable state. It is global (the same on every rank, since ranks step in
lockstep), so the checkpoint that rank 0 writes resumes any number of ranks.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Protocol


class EpochPlan(Protocol):
    """What the cursor and the loader need from a plan (``SamplePlan``, ``MixPlan`` and the bucket plan provide it)."""

    @property
    def num_steps(self) -> int: ...

    def position_after(self, steps: int) -> int: ...

    def rank_num_batches(self, rank: int) -> int: ...


def steps_starting_at(plan: EpochPlan, positions: Collection[int]) -> frozenset[int]:
    """The steps of ``plan`` that begin at one of ``positions`` (epoch positions, as the ledger records them).

    A position that is no step boundary of ``plan`` (the ledger was written on another world
    size or batch size) matches no step. Example: a plan from position 0 in steps of 64:
    positions ``{128, 100}`` -> ``{2}``. O(log steps) per position.
    """
    found = set()
    for position in positions:
        low, high = 0, plan.num_steps
        while low < high:  # the first step that begins at or after ``position``
            middle = (low + high) // 2
            if plan.position_after(middle) < position:
                low = middle + 1
            else:
                high = middle
        if low < plan.num_steps and plan.position_after(low) == position:
            found.add(low)
    return frozenset(found)


class Cursor:
    """Counts consumed global steps and turns them into ``(epoch, position)``.

    ``begin`` is called when an epoch's iteration starts, ``step`` each time the training loop
    consumes a batch (not when a loader prefetches one), so a checkpoint taken between steps
    names exactly the next sample.

    ``skipped`` (epoch -> positions, from the ledger's ``skip_steps``) names steps that are never
    trained: the cursor passes over them as soon as the step before is consumed, and the loader
    drops their batches (:attr:`skipped_steps`), so the plan, and every other step, stay as they were.
    """

    def __init__(self, epoch: int = 0, position: int = 0) -> None:
        self.epoch = epoch
        self.position = position
        self.skipped: Mapping[int, Collection[int]] = {}
        #: the steps of the iteration begun last that are skipped, and where it began
        self.skipped_steps: frozenset[int] = frozenset()
        self.begun = (epoch, position)
        self._plan: EpochPlan | None = None
        self._steps = 0

    def begin(self, make_plan: Callable[[int, int], EpochPlan]) -> EpochPlan:
        """The plan for the iteration starting now, moving to the next epoch if this one is done."""
        plan = make_plan(self.epoch, self.position)
        if plan.num_steps == 0 and self.position > 0:
            self.epoch, self.position = self.epoch + 1, 0
            plan = make_plan(self.epoch, self.position)
        self._plan, self._steps = plan, 0
        self.begun = (self.epoch, self.position)
        self.skipped_steps = steps_starting_at(plan, self.skipped.get(self.epoch, ()))
        if 0 in self.skipped_steps:
            self._settle()
        return plan

    def step(self) -> None:
        """One global step of the current plan was consumed."""
        if self._plan is None:
            return  # batches pulled outside an iteration begun by this cursor: nothing to track
        self._steps += 1
        self._settle()

    def _settle(self) -> None:
        """Pass the skipped steps ahead, then take the position (or the next epoch) of the step reached."""
        assert self._plan is not None
        while self._steps in self.skipped_steps:
            self._steps += 1
        if self._steps >= self._plan.num_steps:
            self.epoch, self.position = self.epoch + 1, 0
            self._plan = None
        else:
            self.position = self._plan.position_after(self._steps)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._plan, self._steps = None, 0
