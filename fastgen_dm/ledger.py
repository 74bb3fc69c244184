"""The data ledger: which samples each rank trained on at each step, to trace a loss spike to its data.

Each rank appends one JSON line per training batch to ``<ledger_dir>/rank<r>.from<step>.jsonl``
(one file per run or resume, named by the step it starts at, and ``.from<step>.<k>`` for the
k-th run started over from that step, so no run ever rewrites an earlier one's):

    {"url": 0, "shard": "s3://bucket/latents/000012.tar"}          a shard's number, once per file
    {"step": 1041, "epoch": 0, "position": 66624, "samples": [[0, "a/b/000871"], ...]}   shards
    {"step": 1041, "epoch": 0, "position": 66624, "samples": [17, 4032, ...]}            a zip's items
    {"step": 7, "epoch": 0, "position": 448, "samples": [...], "bucket": 2}            a bucketed batch
    {"skipped": [1041]}             first line of a run resumed with skip_steps=[1041]

``step`` is the trainer's global step when the batch was taken, ``epoch`` and ``position`` the
stream's place before it (the plan's coordinates of the batch). A shard line names each sample
by shard number and key, so the line costs about the keys' length; nothing grows with the
dataset. ``skip_steps`` (:func:`positions_of`) turns steps back into the positions to leave out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import torch

class LedgerWriter:
    """One rank's ledger file, opened on the first record and flushed line by line."""

    def __init__(self, folder: str | Path, rank: int, skipped: Collection[int] = ()) -> None:
        self.folder, self.rank, self.skipped = Path(folder), rank, sorted(skipped)
        self._file: Any = None
        self._shards: dict[str, int] = {}

    def record(self, step: int, epoch: int, position: int, batch: Mapping[str, Any]) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"rank{self.rank}.from{step}.jsonl"
            again = 0
            while path.exists():  # a run started over from the same step writes beside the earlier one
                again += 1
                path = self.folder / f"rank{self.rank}.from{step}.{again}.jsonl"
            self._file = open(path, "x", buffering=1)
            if self.skipped:  # this run trains other batches under those step numbers
                self._file.write(json.dumps({"skipped": self.skipped}) + "\n")
        if "shard" in batch and "fname" in batch:
            samples: list[Any] = []
            for url, key in zip(batch["shard"], batch["fname"]):
                if url not in self._shards:
                    self._shards[url] = len(self._shards)
                    self._file.write(json.dumps({"url": self._shards[url], "shard": url}) + "\n")
                samples.append([self._shards[url], key])
        elif isinstance(batch.get("idx"), torch.Tensor):
            samples = batch["idx"].tolist()
        else:
            raise ValueError(f"the ledger names samples by 'shard' and 'fname' or by 'idx'; this batch has {sorted(batch)}")
        record = {"step": step, "epoch": epoch, "position": position, "samples": samples}
        if "bucket" in batch:
            record["bucket"] = int(batch["bucket"])
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _in_run_order(paths: Iterable[Path]) -> list[Path]:
    """Ledger files by the step each run began at, a run started over from the same step after the earlier one."""

    def key(path: Path) -> tuple[int, int]:
        parts = path.name.split(".from", 1)[1].split(".")  # "<step>.jsonl" or "<step>.<again>.jsonl"
        return int(parts[0]), int(parts[1]) if len(parts) == 3 else 0

    return sorted(paths, key=key)


def samples_at(folder: str | Path, step: int) -> dict[int, list[Any]]:
    """rank -> the samples that rank trained on at ``step`` (shard samples as ``(url, key)``).

    A step recorded twice (trained, then trained again after a resume from an earlier
    checkpoint) gives the later run's samples.
    """
    folder = Path(folder)
    files = _in_run_order(folder.glob("rank*.from*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no ledger in {folder}: train with ledger_dir={str(folder)!r} first")
    found: dict[int, list[Any]] = {}
    for path in files:
        rank = int(path.name[4 : path.name.index(".")])
        shards: dict[int, str] = {}
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "url" in record:
                    shards[record["url"]] = record["shard"]
                elif record.get("step") == step:
                    found[rank] = [tuple((shards[s[0]], s[1])) if isinstance(s, list) else s for s in record["samples"]]
    return found


def positions_of(folder: str | Path, steps: Collection[int]) -> dict[int, frozenset[int]]:
    """epoch -> the positions where ``steps`` began, from rank 0's ledger (the position is global).

    Every batch of a step counts (with gradient accumulation a step has several); a step
    recorded twice gives the later run's, except a run that skipped that step (its file
    says so): the batch it trained under that number is another one. Only lines of the
    wanted steps are parsed.

    Raises:
        FileNotFoundError: ``folder`` holds no ledger of rank 0.
        ValueError: A step is in no ledger file.
    """
    folder = Path(folder)
    files = _in_run_order(folder.glob("rank0.from*.jsonl"))
    if not files:
        raise FileNotFoundError(f"skip_steps: no ledger of rank 0 in {folder}; train with ledger_dir={str(folder)!r} to record the steps first")
    wanted = set(steps)
    found: dict[int, set[tuple[int, int]]] = {}
    for path in files:
        in_file: dict[int, set[tuple[int, int]]] = {}
        skipped_here: set[int] = set()
        with open(path) as f:
            for line in f:
                if line.startswith('{"skipped": '):
                    skipped_here.update(json.loads(line)["skipped"])
                if not line.startswith('{"step": '):
                    continue
                step = int(line[9 : line.index(",", 9)])
                if step in wanted:
                    record = json.loads(line)
                    in_file.setdefault(step, set()).add((int(record["epoch"]), int(record["position"])))
        # a run that skipped a step trained another batch under its number: not the one meant
        found.update((step, places) for step, places in in_file.items() if step not in skipped_here)
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"skip_steps {missing[:5]} are in no ledger file of {folder}; name steps that run trained (fastgen ledger STEP --dir {folder})")
    by_epoch: dict[int, set[int]] = {}
    for places in found.values():
        for epoch, position in places:
            by_epoch.setdefault(epoch, set()).add(position)
    return {epoch: frozenset(positions) for epoch, positions in by_epoch.items()}


def ignore_index_of(samples: Mapping[int, list[Any]]) -> dict[str, list[str]]:
    """The shard samples of :func:`samples_at` as an ignore index ``{"<shard file name>": [keys]}``."""
    table: dict[str, set[str]] = {}
    for ids in samples.values():
        for sample in ids:
            if not isinstance(sample, tuple):
                raise ValueError("a zip ledger names items by index; an ignore index needs shard samples (shard, key)")
            url, key = sample
            table.setdefault(url.rstrip("/").rsplit("/", 1)[-1], set()).add(key)
    return {name: sorted(keys) for name, keys in sorted(table.items())}
