"""The data ledger: which samples each rank trained on at each step, to trace a loss spike to its data.

Each rank appends one JSON line per training batch to ``<ledger_dir>/rank<r>.from<step>.jsonl``
(one file per run or resume, named by the step it starts at, so a resumed run never rewrites
an earlier one):

    {"url": 0, "shard": "s3://bucket/latents/000012.tar"}          a shard's number, once per file
    {"step": 1041, "epoch": 0, "position": 66624, "samples": [[0, "a/b/000871"], ...]}   shards
    {"step": 1041, "epoch": 0, "position": 66624, "samples": [17, 4032, ...]}            a zip's items
    {"step": 7, "epoch": 0, "position": 448, "samples": [...], "bucket": 2}            a bucketed batch

``step`` is the trainer's global step when the batch was taken, ``epoch`` and ``position`` the
stream's place before it (the plan's coordinates of the batch). A shard line names each sample
by shard number and key, so the line costs about the keys' length; nothing grows with the
dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

class LedgerWriter:
    """One rank's ledger file, opened on the first record and flushed line by line."""

    def __init__(self, folder: str | Path, rank: int) -> None:
        self.folder, self.rank = Path(folder), rank
        self._file: Any = None
        self._shards: dict[str, int] = {}

    def record(self, step: int, epoch: int, position: int, batch: Mapping[str, Any]) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.folder / f"rank{self.rank}.from{step}.jsonl", "a", buffering=1)
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


def samples_at(folder: str | Path, step: int) -> dict[int, list[Any]]:
    """rank -> the samples that rank trained on at ``step`` (shard samples as ``(url, key)``).

    A step recorded twice (trained, then trained again after a resume from an earlier
    checkpoint) gives the later run's samples.
    """
    folder = Path(folder)
    files = sorted(folder.glob("rank*.from*.jsonl"), key=lambda p: int(p.name.split(".from")[1].split(".")[0]))
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
                elif record["step"] == step:
                    found[rank] = [tuple((shards[s[0]], s[1])) if isinstance(s, list) else s for s in record["samples"]]
    return found


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
