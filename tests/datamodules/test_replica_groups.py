"""Replica groups (context/sequence parallelism): ranks of a group get identical batches, the plan splits over groups."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from helpers import fit_probe, flat, global_streams
from lightning.pytorch.callbacks import ModelCheckpoint

from fastgen_dm import ImageFolderDataModule

NUM_ITEMS = 300  # the demo_zip fixture


def per_rank(record_dir):
    """rank -> epoch -> the rank's batches, from LoaderProbe's records."""
    out: dict[int, dict[int, list]] = {}
    for path in sorted(record_dir.glob("rank*.jsonl")):
        epochs = defaultdict(list)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            epochs[record["epoch"]].append(record["ids"])
        out[int(path.stem[4:])] = dict(epochs)
    return out


def fit(demo_zip, record_dir, devices, replicas, **kwargs):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, seed=5, replicas=replicas)
    fit_probe(dm, record_dir, devices, **kwargs)


def test_four_ranks_in_two_groups_of_two_resume_on_two_plain_ranks(demo_zip, tmp_path):
    grouped, checkpoints, resumed = tmp_path / "grouped", tmp_path / "ckpt", tmp_path / "resumed"
    fit(demo_zip, grouped, devices=4, replicas=2,
        enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=4, save_top_k=-1)])  # fmt: skip
    ranks = per_rank(grouped)
    assert sorted(ranks) == [0, 1, 2, 3]
    assert ranks[0] == ranks[1] and ranks[2] == ranks[3]  # identical batches within a group
    group0, group1 = ranks[0][0], ranks[2][0]
    assert len(group0) == len(group1) == 10  # 300 items in global steps of 2 groups x 16
    ids = [i for a, b in zip(group0, group1) for i in a + b]
    assert sorted(ids) == list(range(NUM_ITEMS))  # the epoch split over the groups, once

    # the checkpoint after 4 steps of 2 groups, resumed on 2 ranks without groups: the same order continues
    ckpt = next(p for p in checkpoints.glob("*.ckpt") if "step=4" in p.name)
    fit(demo_zip, resumed, devices=2, replicas=1, ckpt_path=str(ckpt))
    assert flat(global_streams(resumed)[0]) == ids[4 * 32 :]


def test_replicas_must_divide_the_world(demo_zip, tmp_path):
    with pytest.raises(Exception, match="replicas=3 does not divide the 2 GPUs"):
        fit(demo_zip, tmp_path, devices=2, replicas=3)
    with pytest.raises(ValueError, match="replicas must be at least 1"):
        ImageFolderDataModule(demo_zip, batch_size=16, replicas=0)
