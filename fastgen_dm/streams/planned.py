"""The planned stream and its loader: whole batches of a rank's plan, each iteration beginning at the cursor.

A family's stream (:class:`PlannedStream`, an ``IterableDataset``) yields whole batches of its
rank's plan, split among DataLoader workers; :class:`PlannedDataLoader` starts every iteration
where the DataModule's :class:`~fastgen_dm.plan.Cursor` stands.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fastgen_dm.plan import Cursor, EpochPlan
from fastgen_dm.read import BadDataPolicy


class PlannedStream(IterableDataset):
    """Yields the batches of one rank's plan; each DataLoader worker yields its share.

    Subclasses implement :meth:`plan_for` and :meth:`iter_batches`. The placement (rank, world
    size) and position (epoch, start) are set in the main process before each iteration and
    reach workers when they are started, since workers are not persistent.
    """

    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    start: int = 0
    #: The rank's bad-data run totals, shared with the workers (``fastgen_dm.read.new_tally``).
    tally: torch.Tensor | None = None
    max_skip_fraction: float = 1.0

    def place(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def plan_for(self, epoch: int, start: int) -> EpochPlan:
        raise NotImplementedError

    def bad_data_policy(self, worker_id: int) -> BadDataPolicy:
        """A reader's policy, counting into the rank's run totals (row ``1 + worker_id``)."""
        return BadDataPolicy(self.max_skip_fraction, tally=self.tally, slot=worker_id + 1)

    def iter_batches(self, plan: Any, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 0)
        return self.iter_batches(self.plan_for(self.epoch, self.start), worker_id, num_workers)


class PlannedDataLoader(DataLoader):
    """A DataLoader over a :class:`PlannedStream` whose iterations begin at ``cursor``.

    Without a cursor (validation) every iteration replays the stream's own position.

    It has no ``__len__``: after a resume on another number of GPUs the rank's remaining batches
    differ from a full epoch's, and a wrong length would end Lightning's epoch early. Its
    ``state_dict`` is the cursor's (the same object the DataModule saves), which tells
    Lightning the loader resumes mid-epoch.
    """

    def __init__(self, stream: PlannedStream, cursor: Cursor | None = None, **kwargs: Any) -> None:
        super().__init__(stream, batch_size=None, **kwargs)
        self.cursor = cursor

    def __iter__(self):  # type: ignore[override]
        if self.cursor is not None:
            self.cursor.begin(self.dataset.plan_for)
            self.dataset.set_position(self.cursor.epoch, self.cursor.position)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {} if self.cursor is None else self.cursor.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if self.cursor is not None and state_dict:
            self.cursor.load_state_dict(state_dict)
