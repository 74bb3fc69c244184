"""Lightning glue shared by every family: placement, the position cursor, loaders, state.

A family provides a :class:`~fastgen_dm.streams.PlannedStream`; this module turns it into a
:class:`~fastgen_dm.streams.PlannedDataLoader` whose every iteration starts where the cursor
stands, counts the steps the training loop consumes, and stores the cursor in the DataModule's
``state_dict`` (which Lightning puts in checkpoints).
"""

from __future__ import annotations

import inspect
import logging
import os
import types
import warnings
from typing import Any, Literal, Sequence, TypeVar

import lightning
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from fastgen_dm.index.datatags import Shard, load_ignore_index
from fastgen_dm.ledger import LedgerWriter, positions_of
from fastgen_dm.plan import Cursor
from fastgen_dm.read import new_tally
from fastgen_dm.storage import redact_storage_options
from fastgen_dm.streams.planned import PlannedDataLoader, PlannedStream
from fastgen_dm.transform import scale_to_unit

logger = logging.getLogger(__name__)

# Lightning warns that an IterableDataset's length "could be inaccurate" with several workers,
# because workers usually all iterate the same data; here each worker yields its own batches of
# the plan and the loader's length counts them exactly, so the warning would only mislead.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=PossibleUserWarning)

_Self = TypeVar("_Self", bound="PlannedDataModule")

#: The plan's tail policies a training run may use: "uneven" (for evaluation) gives ranks
#: different numbers of steps, and DDP hangs on the rank that waits.
TrainingTail = Literal["pad", "drop"]


def validate_training_tail(tail: str) -> None:
    if tail == "uneven":
        raise ValueError("tail 'uneven' is for evaluation only: ranks would take different numbers of steps; use 'pad' or 'drop'")
    if tail not in ("pad", "drop"):
        raise ValueError(f"tail {tail!r} is unknown; use 'pad' or 'drop'")


def global_seed() -> int:
    """The seed ``lightning.seed_everything`` set for this process (it exports it), else 0."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None and value.lstrip("-").isdigit() else 0


def default_num_workers() -> int:
    """Every core this process may use, capped at 8 (decoding rarely scales further per GPU)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class PlannedDataModule(lightning.LightningDataModule):
    """Base of every fastgen-dm DataModule (not used directly).

    Args:
        batch_size: Samples per rank per step.
        seed: Seed of the shuffle; the order depends on ``(seed, epoch)`` only. None: the seed
            given to ``seed_everything`` (``--seed_everything`` in the CLI), else 0.
        shuffle: Shuffle the training order each epoch.
        num_workers: DataLoader worker processes per rank; None uses every core, up to 8.
        pin_memory: Pin host batches for faster, asynchronous copies to the GPU.
        persistent_workers: Keep the DataLoader workers from one epoch to the next (each new
            iteration still starts exactly at the saved position).
        prefetch_factor: Batches each worker prepares ahead; None: the DataLoader's default (2).
        multiprocessing_context: How workers start: "fork", "spawn" or "forkserver"; None: the
            platform's default.
        replicas: Consecutive ranks that receive identical batches (a context- or
            sequence-parallel group); the plan splits over the groups, and a checkpoint resumes
            on any number of groups. None: the tensor-parallel size of a ``ModelParallelStrategy``,
            else 1. Each rank of a group reads the batch itself (no broadcast per step).
        ledger_dir: Folder of the data ledger: each rank appends, per training batch, the step,
            the stream's position and the samples it trained on (``fastgen ledger STEP`` names
            them). None: no ledger.
        skip_steps: Training steps of an earlier run (as its ledger numbers them) whose batches
            are never trained again: on a resume, those batches are read and dropped, and every
            other batch is where the plan had it (an ignore index instead changes the order).
            Needs ``ledger_dir``, and the world size and batch size the ledger was written with:
            elsewhere the steps begin at other positions and match none.
        normalize_on_device: Deliver pixels as uint8 and scale them to [-1, 1] after the
            transfer to the device (4x less host-to-device traffic, same values). Outside a
            Trainer, call :meth:`on_after_batch_transfer` yourself to get the scaled batch.
    """

    #: Batch keys that hold uint8 pixels to scale when ``normalize_on_device``.
    device_scaled_keys: tuple[str, ...] = ("real",)

    def __init__(
        self,
        batch_size: int,
        seed: int | None = None,
        shuffle: bool = True,
        num_workers: int | None = None,
        pin_memory: bool = True,
        normalize_on_device: bool = False,
        *,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        multiprocessing_context: Literal["fork", "spawn", "forkserver"] | None = None,
        replicas: int | None = None,
        ledger_dir: str | None = None,
        skip_steps: list[int] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None (every core), got {num_workers}")
        self.batch_size = batch_size
        self.seed = global_seed() if seed is None else seed
        self.shuffle = shuffle
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        if prefetch_factor is not None and prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be at least 1 or None (the DataLoader's default), got {prefetch_factor}")
        self.pin_memory = pin_memory
        if replicas is not None and replicas < 1:
            raise ValueError(f"replicas must be at least 1 or None (from the strategy), got {replicas}")
        self.replicas = replicas
        if skip_steps and ledger_dir is None:
            raise ValueError(f"skip_steps={list(skip_steps)} names steps of the data ledger; pass the ledger_dir it was written to")
        if skip_steps and not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in skip_steps):
            raise ValueError(f"skip_steps must list training steps (integers >= 0), got {skip_steps!r}")
        self.ledger_dir = ledger_dir
        self.skip_steps = sorted(set(skip_steps or ()))
        self._skipped_positions: dict[int, frozenset[int]] | None = None
        self._ledger: LedgerWriter | None = None
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.normalize_on_device = normalize_on_device
        self.cursor: Cursor | None = None
        self._restored_tally = (0, 0)
        self._train_tally: torch.Tensor | None = None

    def save_hyperparameters(
        self, *args: Any, ignore: Sequence[str] | str | None = None, frame: types.FrameType | None = None, logger: bool = True
    ) -> None:
        """Lightning's ``save_hyperparameters``, with the credentials of ``storage_options`` redacted.

        Lightning writes ``hparams`` into every checkpoint and ``hparams_initial`` into the
        loggers' ``hparams.yaml``; both hold ``"<redacted>"`` in place of each credential
        (:func:`~fastgen_dm.storage.redact_storage_options`). The DataModule keeps the real
        values in its ``storage_options`` attribute, which nothing writes.
        """
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)
        self._init_args = dict(self._hparams)  # unredacted, for with_overrides; never written
        for hparams in (self._hparams, self._hparams_initial):
            if hparams.get("storage_options"):
                hparams["storage_options"] = redact_storage_options(hparams["storage_options"])

    # -- placement -------------------------------------------------------------------------
    def placement(self) -> tuple[int, int]:
        """(data-parallel rank, data-parallel size) of this process.

        From the Trainer, else a single process. With ``replicas`` > 1, consecutive ranks form a
        group (ranks ``g * replicas ... (g + 1) * replicas - 1``) that receives identical batches,
        and the plan splits over the groups: group ``g`` is data-parallel rank ``g``.
        """
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        replicas = self.group_size()
        if trainer.world_size % replicas:
            raise ValueError(f"replicas={replicas} does not divide the {trainer.world_size} GPUs into whole groups; use a divisor of {trainer.world_size}")
        return trainer.global_rank // replicas, trainer.world_size // replicas

    def group_size(self) -> int:
        """Ranks per replica group: ``replicas``, else the Trainer strategy's tensor-parallel size, else 1."""
        if self.replicas is not None:
            return self.replicas
        trainer = self.trainer
        if trainer is not None and isinstance(trainer.strategy, ModelParallelStrategy):
            # its device mesh is (data_parallel, tensor_parallel): consecutive ranks share the data
            try:
                return int(trainer.strategy.device_mesh["tensor_parallel"].size())
            except (AssertionError, AttributeError, KeyError, RuntimeError) as err:
                raise ValueError(f"replicas: the ModelParallelStrategy's device mesh is not set up yet ({err}); pass replicas=<tensor_parallel_size>") from err
        return 1

    def make_loader(self, stream: PlannedStream, cursor: Cursor | None) -> PlannedDataLoader:
        stream.place(*self.placement())
        if stream.tally is None or len(stream.tally) != max(self.num_workers, 1) + 1:
            stream.tally = new_tally(max(self.num_workers, 1))
            if cursor is not None:  # the training stream carries the run's totals, restored ones included
                stream.tally[0] += torch.tensor(self._restored_tally)
                self._train_tally = stream.tally
        worker_options: dict[str, Any] = {}
        # a worker has at most prefetch_factor batches in flight and builds one more
        stream.ring_slots = (self.prefetch_factor or 2) + 2
        if self.num_workers > 0:
            worker_options = {
                "persistent_workers": self.persistent_workers,
                "prefetch_factor": self.prefetch_factor,
                "multiprocessing_context": self.multiprocessing_context,
            }
        loader = PlannedDataLoader(
            stream,
            cursor,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            **worker_options,
        )
        if cursor is not None:
            self._align_fit_progress(loader)
            loader.on_iter = self._follow_epoch_length
        return loader

    def _follow_epoch_length(self, loader: PlannedDataLoader) -> None:
        """Tell Lightning the length of the epoch this iteration begins.

        Lightning takes the training loader's length once, when it first makes it; an epoch can
        be longer or shorter than the first (a bucket tail carried over, a resume with new mix
        weights), and Lightning would end it at the first one's length. ``limit_train_batches``
        applies to each epoch's own length, as Lightning applies it to the first.
        """
        trainer = self.trainer
        combined = None if trainer is None else trainer.fit_loop._combined_loader
        if trainer is None or combined is None or loader.dataset.endless or loader not in combined.flattened:
            return
        length = len(loader)
        limit = trainer.limit_train_batches
        batches = min(length, limit) if isinstance(limit, int) else int(length * limit) if length else 0
        if combined.limits is not None:  # in place: the iterator being made holds this list
            combined.limits[combined.flattened.index(loader)] = batches
        trainer.fit_loop.max_batches = batches

    def _align_fit_progress(self, loader: PlannedDataLoader) -> None:
        """Re-express Lightning's count of the resumed epoch's batches on this world size.

        Lightning restores how many batches the epoch had taken, counted on the world size that
        saved the checkpoint, and ends the epoch when the count reaches the loader's length.
        Here the count becomes ``len(loader) - loader.remaining()``, so the epoch ends exactly
        when the stream does, and the next epoch has its full length.
        """
        trainer = self.trainer
        if trainer is None or not trainer.fit_loop.restarting or loader.dataset.endless:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress
        # a checkpoint saved in on_train_batch_end has that batch processed but not completed;
        # Lightning completes it when it resets the loop (after this, in fit_loop.reset)
        total = progress.total
        saved_in_batch_end = total.started == total.ready == total.processed == total.completed + 1
        counted = progress.current.completed + int(saved_in_batch_end)
        progress.current.completed += len(loader) - loader.remaining() - counted

    def batch_device(self) -> torch.device:
        """Where batches are trained on: the Trainer's device, else the CPU."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    # -- evaluation ------------------------------------------------------------------------
    #: The validation set, read once (None: no validation set), set in a family's ``setup``.
    val_stream: PlannedStream | None = None
    #: The training data read once, for test and predict without a validation set.
    pass_stream: PlannedStream | None = None

    def _training_stream(self) -> PlannedStream | None:
        """The family's training stream, None before ``setup``."""
        raise NotImplementedError

    def _set_up(self, stage: str) -> PlannedStream:
        """The training stream, running ``setup(stage)`` first when nothing has.

        Lightning calls ``setup`` before it asks for a loader; a notebook or script may ask for one
        directly (``dm.train_dataloader()``), and gets the same loader.
        """
        if self._training_stream() is None:
            self.setup(stage)
        stream = self._training_stream()
        assert stream is not None, f"{type(self).__name__}.setup({stage!r}) made no training stream"
        return stream

    def train_dataloader(self) -> PlannedDataLoader:
        stream = self._set_up("fit")
        if self.skip_steps and self.cursor is not None:
            if self._skipped_positions is None:
                assert self.ledger_dir is not None
                self._skipped_positions = positions_of(self.ledger_dir, self.skip_steps)
            self.cursor.skipped = self._skipped_positions
        return self.make_loader(stream, self.cursor)

    def val_dataloader(self) -> Any:
        self._set_up("validate")
        if self.val_stream is None:
            return []  # Lightning skips validation
        return self.make_loader(self.val_stream, None)

    def test_dataloader(self) -> PlannedDataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> PlannedDataLoader:
        return self._eval_loader("predict")

    def _eval_loader(self, stage: str) -> PlannedDataLoader:
        """The validation set once, else the training data once: unshuffled, every sample once across GPUs."""
        self._set_up(stage)
        stream = self.val_stream if self.val_stream is not None else self.pass_stream
        if stream is None:
            raise RuntimeError(f"no one-pass stream for {stage}: setup ran for another stage in resampled mode; call setup({stage!r}) first")
        return self.make_loader(stream, None)

    # -- inspection: the public questions tools (fastgen verify, bench, show) and scripts ask -
    #: fsspec options of the data's location (credentials included: the DataModule writes none of them).
    storage_options: dict[str, Any] | None = None
    #: Ignore-index files whose samples are never read (see each family's ``ignore_index_paths``).
    ignore_index_paths: Sequence[str] = ()
    #: True when the family leaves decoding to :meth:`on_after_batch_transfer` (on the training
    #: device); a loop outside a Trainer then calls ``on_after_batch_transfer(batch, 0)`` itself.
    decode_on_device: bool = False

    def with_overrides(self: _Self, **changes: Any) -> _Self:
        """A new DataModule of this class with the same arguments, but ``changes``.

        Example: ``dm.with_overrides(shuffle=False, num_workers=0)``. Nothing of this one's state
        (setup, cursor, Trainer) carries over.

        Raises:
            TypeError: An argument the class does not take; the message lists those it takes.
        """
        unknown = sorted(set(changes) - set(self._init_args))
        if unknown:
            raise TypeError(f"{type(self).__name__} takes no argument {unknown[0]!r}; it takes {sorted(self._init_args)}")
        return type(self)(**{**self._init_args, **changes})

    def takes(self, argument: str) -> bool:
        """Whether the DataModule has the ``__init__`` argument ``argument`` (what :meth:`with_overrides` accepts)."""
        return argument in self._init_args

    def data_files(self) -> list[tuple[str, int]]:
        """``(url, bytes)`` of every file the training set is read from, in order."""
        raise NotImplementedError

    def shards(self) -> tuple[Shard, ...]:
        """The training set's shards with their counts and ignored keys (after ``setup``); () for zip datasets."""
        return ()

    def samples_per_epoch(self) -> int | None:
        """Samples one training epoch plans (after ``setup``, before padding); None for an endless stream."""
        raise NotImplementedError

    def ignored_keys(self) -> dict[str, frozenset[str]]:
        """What ``ignore_index_paths`` list: ``{"<file name or URL>": keys}`` (several files merged)."""
        return load_ignore_index(self.ignore_index_paths, self.storage_options)

    def pixels_in_unit_range(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """The batch's ``key`` with pixels in [-1, 1], as drawn: families that normalize otherwise undo it."""
        return x

    # -- position --------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training and self.cursor is not None:
            if self.ledger_dir is not None:
                if self._ledger is None:
                    self._ledger = LedgerWriter(self.ledger_dir, trainer.global_rank, self.skip_steps)
                self._ledger.record(trainer.global_step, self.cursor.epoch, self.cursor.position, batch)
            self.cursor.step()  # the training loop consumes this batch now (prefetches are not counted)
        if self.normalize_on_device:
            for key in self.device_scaled_keys:
                if key in batch and batch[key].dtype == torch.uint8:
                    batch[key] = scale_to_unit(batch[key])
        return batch

    def teardown(self, stage: str) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def bad_data_totals(self) -> tuple[int, int]:
        """``(seen, skipped)`` samples of the training stream over this rank's whole run."""
        if self._train_tally is None:
            return self._restored_tally
        seen, skipped = self._train_tally.sum(dim=0).tolist()
        return seen, skipped

    def state_dict(self) -> dict[str, Any]:
        if self.cursor is None:
            return {}
        seen, skipped = self.bad_data_totals()
        return {**self.cursor.state_dict(), "seed": self.seed, "seen": seen, "skipped": skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("seed", self.seed) != self.seed:
            logger.warning(
                "resuming with seed=%s but the checkpoint's data order used seed=%s; the stream will differ",
                self.seed,
                state_dict["seed"],
            )
        if self.cursor is None:
            self.cursor = Cursor()
        self.cursor.load_state_dict(state_dict)  # in place: a loader made earlier shares this cursor
        # the ceiling holds over the whole run: a resumed run starts from the checkpoint's totals
        restored = (int(state_dict.get("seen", 0)), int(state_dict.get("skipped", 0)))
        if self._train_tally is not None:
            self._train_tally[0] += torch.tensor(restored) - torch.tensor(self._restored_tally)
        self._restored_tally = restored
