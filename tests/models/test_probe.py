"""LoaderProbe: records who got which sample, times the loader, and runs under DDP."""

import json
import logging
import re

import lightning
import lightning_utilities.core.rank_zero as rank_zero_module
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from helpers import DestroyProcessGroup

from fastgen_dm.models import LoaderProbe
from fastgen_dm.models.probe import batch_ids_of, batch_size_of

pytestmark = pytest.mark.filterwarnings(
    "ignore:The '\\w+_dataloader' does not have many workers",
    "ignore:You defined a `validation_step` but have no `val_dataloader`",
)

_SUMMARY_KEYS = {
    "samples",
    "batches",
    "wall_s",
    "data_wait_s",
    "samples_per_s",
    "data_wait_share",
    "world_size",
    "world_samples",
    "world_wall_s",
    "world_samples_per_s",
    "world_data_wait_share",
}


class _IndexDataset(Dataset):
    """Map-style zip-family samples: sample i is {"real": ..., "idx": i}."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return {"real": torch.full((3, 2, 2), float(i)), "idx": torch.tensor(i)}


def _trainer(**kwargs):
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    return lightning.Trainer(**(options | kwargs))


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _zip_batches(num_batches, batch_size):
    return [
        {
            "real": torch.zeros(batch_size, 3, 2, 2),
            "idx": torch.arange(b * batch_size, (b + 1) * batch_size),
        }
        for b in range(num_batches)
    ]


def test_records_every_training_batch_in_order(tmp_path):
    batches = _zip_batches(3, 4)
    probe = LoaderProbe(record_dir=str(tmp_path / "records"))
    trainer = _trainer(max_epochs=2)
    trainer.fit(probe, DataLoader(batches, batch_size=None))

    records = _read_jsonl(tmp_path / "records" / "rank0.jsonl")
    expected = [
        {"epoch": epoch, "step": step, "ids": list(range(step * 4, step * 4 + 4))}
        for epoch in range(2)
        for step in range(3)
    ]
    assert records == expected
    # The dummy optimizer step makes global_step count batches, as with a real model.
    assert trainer.global_step == 6
    assert set(probe.summary) == _SUMMARY_KEYS
    assert probe.summary["samples"] == probe.summary["world_samples"] == 24
    assert probe.summary["batches"] == 6
    assert 0.0 <= probe.summary["data_wait_share"] <= 1.0
    assert set(trainer.callback_metrics) >= {"probe/samples_per_s", "probe/data_wait_share"}


def test_max_steps_stops_the_probe(tmp_path):
    probe = LoaderProbe(record_dir=str(tmp_path))
    _trainer(max_steps=4).fit(probe, DataLoader(_zip_batches(3, 2), batch_size=None))
    records = _read_jsonl(tmp_path / "rank0.jsonl")
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_webdataset_batches_are_recorded_as_shard_and_key(tmp_path):
    batches = [
        {
            "real": torch.zeros(2, 3, 2, 2),
            "condition": ["a cat", "a dog"],
            "fname": [f"{b}-0", f"{b}-1"],
            "shard": ["s3://bucket/shard-000.tar", "s3://bucket/shard-001.tar"],
        }
        for b in range(2)
    ]
    probe = LoaderProbe(record_dir=str(tmp_path))
    _trainer(max_epochs=1).fit(probe, DataLoader(batches, batch_size=None))
    records = _read_jsonl(tmp_path / "rank0.jsonl")
    assert [r["ids"] for r in records] == [
        ["s3://bucket/shard-000.tar/0-0", "s3://bucket/shard-001.tar/0-1"],
        ["s3://bucket/shard-000.tar/1-0", "s3://bucket/shard-001.tar/1-1"],
    ]


def test_validation_batches_are_recorded_without_the_sanity_check(tmp_path):
    probe = LoaderProbe(record_dir=str(tmp_path))
    train = DataLoader(_zip_batches(2, 2), batch_size=None)
    val = DataLoader(_zip_batches(3, 2), batch_size=None)
    _trainer(max_epochs=2, num_sanity_val_steps=2).fit(probe, train, val)
    records = _read_jsonl(tmp_path / "val_rank0.jsonl")
    assert [(r["epoch"], r["step"], r["dataloader_idx"]) for r in records] == [
        (epoch, step, 0) for epoch in range(2) for step in range(3)
    ]
    assert records[1]["ids"] == [2, 3]


def test_step_time_counts_as_busy_not_data_wait():
    probe = LoaderProbe(step_time_s=0.02)
    _trainer(max_epochs=1).fit(probe, DataLoader(_zip_batches(5, 2), batch_size=None))
    assert probe.summary["wall_s"] >= 5 * 0.02
    assert probe.summary["data_wait_s"] < probe.summary["wall_s"] - 5 * 0.02 + 1e-9


def test_summary_line_is_logged(caplog):
    logger = rank_zero_module.log
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            loader = DataLoader(_zip_batches(2, 3), batch_size=None)
            _trainer(max_epochs=1).fit(LoaderProbe(), loader)
    finally:
        logger.removeHandler(caplog.handler)
    pattern = r"LoaderProbe: 6 samples in \d+\.\d s: \d+\.\d samples/s, data wait \d+% of wall time"
    assert any(re.fullmatch(pattern, r.getMessage()) for r in caplog.records)


@pytest.mark.parametrize(
    "batch, size, ids",
    [
        ({"real": torch.zeros(3, 1), "idx": torch.tensor([4, 5, 6])}, 3, [4, 5, 6]),
        ({"fname": ["a", "b"], "shard": ["s0", "s1"]}, 2, ["s0/a", "s1/b"]),
        ({"fname": ["a", "b"], "real": torch.zeros(2, 1)}, 2, ["a", "b"]),
        ({"idx": [7, 8]}, 2, [7, 8]),
    ],
)
def test_batch_helpers(batch, size, ids):
    assert batch_size_of(batch) == size
    assert batch_ids_of(batch) == ids


def test_batch_helpers_name_the_missing_keys():
    message = "none of 'fname', 'real', 'idx' (its keys: ['x'])"
    with pytest.raises(ValueError, match=re.escape(message)):
        batch_size_of({"x": 1})
    message = "neither 'idx' nor 'fname' (its keys: ['real'])"
    with pytest.raises(ValueError, match=re.escape(message)):
        batch_ids_of({"real": torch.zeros(1)})


def test_negative_step_time_is_refused():
    with pytest.raises(ValueError, match=re.escape("step_time_s=-1.0 must be >= 0")):
        LoaderProbe(step_time_s=-1.0)


def test_two_ranks_with_ddp_spawn_get_every_sample_once(tmp_path):
    size, batch_size = 32, 4
    # Lightning replaces the sampler with a DistributedSampler (no shuffle, as the original).
    loader = DataLoader(_IndexDataset(size), batch_size=batch_size)
    probe = LoaderProbe(record_dir=str(tmp_path))
    callbacks = [DestroyProcessGroup()]
    trainer = _trainer(max_epochs=2, strategy="ddp_spawn", devices=2, callbacks=callbacks)
    trainer.fit(probe, loader)

    per_rank = [_read_jsonl(tmp_path / f"rank{rank}.jsonl") for rank in range(2)]
    for epoch in range(2):
        ids = [i for records in per_rank for r in records if r["epoch"] == epoch for i in r["ids"]]
        assert sorted(ids) == list(range(size))
    # Equal work per rank: a rank that runs out early would hang DDP.
    assert len(per_rank[0]) == len(per_rank[1]) == 2 * size // (2 * batch_size)
