"""The planned stream and its loader: whole batches of a rank's plan, each iteration beginning at the cursor.

A family's stream (:class:`PlannedStream`, an ``IterableDataset``) yields whole batches of its
rank's plan, split among DataLoader workers; :class:`PlannedDataLoader` starts every iteration
where the DataModule's :class:`~fastgen_dm.plan.Cursor` stands.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fastgen_dm.batch.transport import BatchPacker, PackedBatch, unpack_batch
from fastgen_dm.plan import Cursor, EpochPlan
from fastgen_dm.plan.progress import steps_starting_at
from fastgen_dm.read import BadDataPolicy


class PlannedStream(IterableDataset):
    """Yields the batches of one rank's plan; each DataLoader worker yields its share.

    Subclasses implement :meth:`plan_for` and :meth:`iter_batches`. The placement (rank, world
    size) is set in the main process before the workers start. The position (epoch, start) is
    set before each iteration in a shared tensor, which persistent workers read when the next
    iteration begins.
    """

    rank: int = 0
    world_size: int = 1
    #: True for a stream without epochs (resampled mode without a declared epoch length).
    endless: bool = False
    _position: torch.Tensor | None = None  # shared [epoch, start]
    #: Shared buffers each worker cycles through: more than the batches it may have in flight.
    ring_slots: int = 4
    _packer: BatchPacker | None = None
    #: The rank's bad-data run totals, shared with the workers (``fastgen_dm.read.new_tally``).
    tally: torch.Tensor | None = None
    max_skip_fraction: float = 1.0

    def place(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def set_position(self, epoch: int, start: int) -> None:
        if self._position is None:
            self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._position[0], self._position[1] = epoch, start

    @property
    def epoch(self) -> int:
        return 0 if self._position is None else int(self._position[0])

    @property
    def start(self) -> int:
        return 0 if self._position is None else int(self._position[1])

    def plan_for(self, epoch: int, start: int) -> EpochPlan:
        raise NotImplementedError

    def bad_data_policy(self, worker_id: int) -> BadDataPolicy:
        """A reader's policy, counting into the rank's run totals (row ``1 + worker_id``)."""
        return BadDataPolicy(self.max_skip_fraction, tally=self.tally, slot=worker_id + 1)

    def iter_batches(self, plan: Any, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is None:
            return self.iter_batches(self.plan_for(self.epoch, self.start), 0, 0)
        if self._packer is None:  # one per worker process, kept by persistent workers
            self._packer = BatchPacker(self.ring_slots)
        batches = self.iter_batches(self.plan_for(self.epoch, self.start), info.id, info.num_workers)
        return map(self._packer.pack, batches)


class PlannedDataLoader(DataLoader):
    """A DataLoader over a :class:`PlannedStream` whose iterations begin at ``cursor``.

    Without a cursor (validation) every iteration replays the stream's own position.

    Its length is the rank's batches in the cursor's epoch on the current world size, so
    Lightning's ``estimated_stepping_batches``, fractional ``val_check_interval`` and
    ``limit_train_batches`` work; an endless stream has none. After a resume mid-epoch an
    iteration yields only the epoch's remaining batches (:meth:`remaining`). Its ``state_dict``
    is the cursor's (the same object the DataModule saves), which tells Lightning the loader
    resumes mid-epoch.
    """

    def __init__(self, stream: PlannedStream, cursor: Cursor | None = None, **kwargs: Any) -> None:
        super().__init__(stream, batch_size=None, **kwargs)
        self.cursor = cursor
        #: called with the loader as each iteration begins (the DataModule tells Lightning the epoch's length)
        self.on_iter: Callable[[PlannedDataLoader], None] | None = None

    def _epoch(self) -> tuple[int, int]:
        """(epoch, position) the next iteration begins at: the cursor's, or the next epoch once it is done."""
        epoch, position = (self.cursor.epoch, self.cursor.position) if self.cursor is not None else (self.dataset.epoch, self.dataset.start)
        if self.cursor is not None and position > 0 and self.dataset.plan_for(epoch, position).num_steps == 0:
            return epoch + 1, 0
        return epoch, position

    def _batches(self, epoch: int, start: int) -> int:
        """This rank's batches from ``start`` of ``epoch`` to its end, the skipped steps left out."""
        stream = self.dataset
        plan = stream.plan_for(epoch, start)
        batches = plan.rank_num_batches(stream.rank)
        skipped = {} if self.cursor is None else self.cursor.skipped
        return batches - sum(1 for step in steps_starting_at(plan, skipped.get(epoch, ())) if step < batches)

    def __len__(self) -> int:
        if self.dataset.endless:
            raise TypeError("an endless stream has no length; declare one (resampled mode: epoch_samples)")
        return self._batches(self._epoch()[0], 0)

    def remaining(self) -> int:
        """Batches the next iteration yields: the rest of the cursor's epoch."""
        return self._batches(*self._epoch())

    def __iter__(self):  # type: ignore[override]
        skipped: frozenset[int] = frozenset()
        if self.cursor is not None:
            self.cursor.begin(self.dataset.plan_for)
            self.dataset.set_position(*self.cursor.begun)
            skipped = self.cursor.skipped_steps
        if self.on_iter is not None:
            self.on_iter(self)
        return _unpacked(super().__iter__(), skipped)

    def state_dict(self) -> dict[str, int]:
        return {} if self.cursor is None else self.cursor.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if self.cursor is not None and state_dict:
            self.cursor.load_state_dict(state_dict)


def _unpacked(batches: Iterator[Any], skipped: frozenset[int]) -> Iterator[Any]:
    """The loader's batches, those of ``skipped`` steps left out (read, never trained)."""
    for step, batch in enumerate(batches):
        if step not in skipped:
            yield unpack_batch(batch) if isinstance(batch, PackedBatch) else batch
