"""A model that only consumes batches: to measure loaders, and to check who got which sample.

``LoaderProbe`` times how long the training loop waits for data, optionally simulates model
compute with a fixed sleep, and can record the ids of every batch each rank consumed, one JSON
line per batch. Distributed tests read those records to check that every sample is delivered
exactly once per epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

import lightning
import torch
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["LoaderProbe", "batch_size_of", "batch_ids_of"]


def batch_size_of(batch: dict[str, Any]) -> int:
    """The number of samples in a batch dictionary.

    Uses ``len(batch["fname"])`` (WebDataset family), else ``batch["real"].shape[0]``, else
    ``len(batch["idx"])`` (zip family).

    Raises:
        ValueError: when the batch has none of those keys.
    """
    if "fname" in batch:
        return len(batch["fname"])
    if "real" in batch:
        return int(batch["real"].shape[0])
    if "idx" in batch:
        return len(batch["idx"])
    raise ValueError(
        f"cannot tell the batch size: the batch has none of 'fname', 'real', 'idx' "
        f"(its keys: {sorted(batch)})"
    )


def batch_ids_of(batch: dict[str, Any]) -> list[Any]:
    """Ids of the samples in a batch: ``batch["idx"]`` as ints, else ``"<shard>/<fname>"``.

    Example: ``{"fname": ["a", "b"], "shard": ["s/0.tar", "s/0.tar"]}`` gives
    ``["s/0.tar/a", "s/0.tar/b"]``; without ``shard`` the fnames alone.

    Raises:
        ValueError: when the batch has neither ``idx`` nor ``fname``.
    """
    if "idx" in batch:
        idx = batch["idx"]
        return idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
    if "fname" in batch:
        if "shard" in batch:
            return [f"{shard}/{fname}" for shard, fname in zip(batch["shard"], batch["fname"])]
        return list(batch["fname"])
    raise ValueError(
        "cannot record sample ids: the batch has neither 'idx' nor 'fname' "
        f"(its keys: {sorted(batch)})"
    )


class LoaderProbe(lightning.LightningModule):
    """Consume batches without training, timing the data loader and optionally recording ids.

    Timing, per rank: the data wait is the time from the end of one training batch (or the
    start of the training epoch) to the start of the next; the busy time runs from a batch's
    start to its end. Wall time is their sum, so validation runs and epoch boundaries outside
    the training batches are not counted. ``probe/samples_per_s`` and ``probe/data_wait_share``
    are logged every step (this rank's running values). At the end of training
    ``self.summary`` holds this rank's numbers plus world totals, and one line like
    ``LoaderProbe: 1234 samples in 3.2 s: 385.6 samples/s, data wait 41% of wall time`` goes to
    the log (world samples over the slowest rank's wall time, mean wait share).

    The probe owns one dummy parameter and a zero-learning-rate SGD optimizer that it steps once
    per batch (manual optimization, no backward). Stepping makes ``trainer.global_step`` advance,
    so ``max_steps``, step-based checkpoints and ``log_every_n_steps`` behave as with a real
    model, and the parameter lets DDP wrap the probe.

    Args:
        record_dir: Folder for id records; None records nothing. Each rank appends one JSON line
            per training batch to ``record_dir/rank{global_rank}.jsonl``,
            ``{"epoch": 0, "step": 3, "ids": [...]}`` where ``step`` is the batch index within
            the epoch and the ids come from ``batch_ids_of``. Validation batches go to
            ``val_rank{global_rank}.jsonl`` with ``dataloader_idx`` added; the sanity check
            is not recorded. Lines are flushed as written; the folder is created if missing.
        step_time_s: Seconds to sleep in each training step, simulating model compute in
            benchmarks (data loading overlaps it, as it would a real forward and backward).
            Default 0.
    """

    def __init__(self, record_dir: str | None = None, step_time_s: float = 0.0) -> None:
        super().__init__()
        if step_time_s < 0:
            raise ValueError(f"step_time_s={step_time_s!r} must be >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.record_dir = record_dir
        self.step_time_s = step_time_s
        # Never receives a gradient; exists for DDP and for the optimizer that counts steps.
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.summary: dict[str, float] = {}
        self._records: dict[str, IO[str]] = {}
        self._reset_timing()

    def _reset_timing(self) -> None:
        self._samples = 0
        self._batches = 0
        self._wait_s = 0.0
        self._busy_s = 0.0
        self._last_end = time.perf_counter()
        self._batch_start = self._last_end

    def __getstate__(self) -> dict[str, Any]:
        # Open files cannot travel to spawned processes; each process opens its own.
        state = super().__getstate__()
        state["_records"] = {}
        return state

    # -- Lightning hooks --------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.dummy], lr=0.0)

    def on_train_start(self) -> None:
        self._reset_timing()

    def on_train_epoch_start(self) -> None:
        self._last_end = time.perf_counter()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._wait_s += now - self._last_end
        self._batch_start = now

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.step_time_s > 0:
            time.sleep(self.step_time_s)
        # No gradients, so this changes nothing but advances trainer.global_step.
        self.optimizers().step()
        if self.record_dir is not None:
            record = {"epoch": self.current_epoch, "step": batch_idx, "ids": batch_ids_of(batch)}
            self._write_record(f"rank{self.global_rank}.jsonl", record)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._busy_s += now - self._batch_start
        self._last_end = now
        batch_size = batch_size_of(batch)
        self._samples += batch_size
        self._batches += 1
        wall_s = self._wait_s + self._busy_s
        self.log("probe/samples_per_s", self._samples / wall_s, batch_size=batch_size)
        self.log("probe/data_wait_share", self._wait_s / wall_s, batch_size=batch_size)

    def on_validation_end(self) -> None:
        # Time spent validating between two training batches is not data wait.
        self._last_end = time.perf_counter()

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.record_dir is None or self.trainer.sanity_checking:
            return
        record = {
            "epoch": self.current_epoch,
            "step": batch_idx,
            "dataloader_idx": dataloader_idx,
            "ids": batch_ids_of(batch),
        }
        self._write_record(f"val_rank{self.global_rank}.jsonl", record)

    def on_train_end(self) -> None:
        self.summary = self._summarize()
        s = self.summary
        rank_zero_info(
            f"LoaderProbe: {s['world_samples']:.0f} samples in {s['world_wall_s']:.1f} s: "
            f"{s['world_samples_per_s']:.1f} samples/s, "
            f"data wait {s['world_data_wait_share']:.0%} of wall time"
        )
        self._close_records()

    def teardown(self, stage: str) -> None:
        self._close_records()

    # -- helpers ----------------------------------------------------------------------------

    def _summarize(self) -> dict[str, float]:
        """This rank's numbers, and the world's (a collective: every rank must call it)."""
        wall_s = self._wait_s + self._busy_s
        share = self._wait_s / wall_s if wall_s > 0 else 0.0
        strategy = self.trainer.strategy
        # Sums of [samples, wait share, ranks] and the slowest rank's wall time; reduce() is the
        # identity on one process. (LightningModule.all_gather would warn of a deprecation.)
        totals = torch.tensor([self._samples, share, 1.0], dtype=torch.float64, device=self.device)
        totals = strategy.reduce(totals, reduce_op="sum").tolist()
        slowest = torch.tensor([wall_s], dtype=torch.float64, device=self.device)
        world_wall_s = strategy.reduce(slowest, reduce_op=torch.distributed.ReduceOp.MAX).item()
        world_samples, share_sum, world_size = totals
        return {
            "samples": float(self._samples),
            "batches": float(self._batches),
            "wall_s": wall_s,
            "data_wait_s": self._wait_s,
            "samples_per_s": self._samples / wall_s if wall_s > 0 else 0.0,
            "data_wait_share": share,
            "world_size": world_size,
            "world_samples": world_samples,
            "world_wall_s": world_wall_s,
            "world_samples_per_s": world_samples / world_wall_s if world_wall_s > 0 else 0.0,
            "world_data_wait_share": share_sum / world_size,
        }

    def _write_record(self, name: str, record: dict[str, Any]) -> None:
        assert self.record_dir is not None
        handle = self._records.get(name)
        if handle is None:
            folder = Path(self.record_dir)
            folder.mkdir(parents=True, exist_ok=True)
            handle = self._records[name] = open(folder / name, "a", encoding="utf-8")
        handle.write(json.dumps(record) + "\n")
        # Flushed per line so that a crash or a killed process still leaves complete records.
        handle.flush()

    def _close_records(self) -> None:
        for handle in self._records.values():
            handle.close()
        self._records.clear()
