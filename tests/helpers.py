"""Helpers shared by the tests (fixtures live in conftest.py)."""

import json
from collections import defaultdict
from pathlib import Path

import lightning
import numpy as np
import torch

from fastgen_dm.prepare import EDMZipWriter


def write_zip(path, images, labels=None):
    with EDMZipWriter(path) as writer:
        for k, image in enumerate(images):
            writer.add_image(image, None if labels is None else labels[k])
    return str(path)


def random_images(n, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, channels), dtype=np.uint8) for _ in range(n)]


class DestroyProcessGroup(lightning.Callback):
    """Destroy the gloo process group at the end of each spawned rank.

    Lightning leaves a gloo group alive at exit (it registers cleanup only for NCCL), and a
    spawned process that exits with it alive aborts now and then ("terminate called without an
    active exception"), failing a run whose training succeeded. ``teardown`` is the last hook.
    """

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def global_streams(record_dir: Path) -> dict[int, list[list]]:
    """From LoaderProbe's records, per epoch: the global steps, each the ranks' batches joined in rank order."""
    per_rank = {}
    for path in sorted(record_dir.glob("rank*.jsonl")):
        per_rank[int(path.stem[4:])] = [json.loads(line) for line in path.read_text().splitlines()]
    steps: dict[int, dict[int, list[list[int]]]] = defaultdict(lambda: defaultdict(list))
    for rank, records in per_rank.items():
        for record in records:
            steps[record["epoch"]][rank].append(record["ids"])
    out = {}
    for epoch, ranks in steps.items():
        counts = {len(b) for b in ranks.values()}
        assert len(counts) == 1, f"ranks consumed different numbers of batches in epoch {epoch}: {counts}"
        out[epoch] = [sum((ranks[r][k] for r in sorted(ranks)), []) for k in range(counts.pop())]
    return out


def flat(steps):
    """The samples of a list of steps, in order."""
    return [i for step in steps for i in step]
