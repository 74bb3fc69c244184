"""The data ledger: what every GPU trained on at each step, named by `fastgen ledger`, across a resume."""

from __future__ import annotations

import json

from helpers import LATENT_SHARD_SAMPLES as NUM
from helpers import fit_probe
from lightning.pytorch.callbacks import ModelCheckpoint

from fastgen_dm import ImageFolderDataModule
from fastgen_dm.cli.main import main
from fastgen_dm.datamodules.latents import ImageLatentDataModule
from fastgen_dm.ledger import samples_at


def run(*args):
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_info:
        return exit_info.code


def probe_records(record_dir, rank=0):
    return [json.loads(line)["ids"] for line in (record_dir / f"rank{rank}.jsonl").read_text().splitlines()]


def test_two_gpus_log_what_they_trained_on_and_the_tool_names_it(latent_shards, tmp_path, capsys):
    ledger, records = tmp_path / "ledger", tmp_path / "records"
    dm = ImageLatentDataModule(datatags=[f"WDS:{latent_shards}"], batch_size=16, num_workers=2, index_dir=str(tmp_path / "index"), ledger_dir=str(ledger))
    fit_probe(dm, records, devices=2, max_steps=5)
    for rank in (0, 1):
        trained = probe_records(records, rank)
        logged = [samples_at(ledger, step)[rank] for step in range(5)]
        assert [[f"{url}/{key}" for url, key in step] for step in logged] == trained
    assert samples_at(ledger, 3)[0] != samples_at(ledger, 3)[1]

    out = tmp_path / "spike.json"
    assert run("ledger", 3, "--dir", ledger, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "rank 0: 16 samples:" in printed and "rank 1: 16 samples:" in printed
    ignore = json.loads(out.read_text())
    assert sum(map(len, ignore.values())) == 32 and all(name.endswith(".tar") for name in ignore)

    again = ImageLatentDataModule(datatags=[f"WDS:{latent_shards}"], batch_size=16, num_workers=0, index_dir=str(tmp_path / "index"), ignore_index_paths=[str(out)])
    again.setup("fit")
    assert again.samples_per_epoch() == NUM - 32


def test_a_resumed_run_appends_a_file_of_its_own_and_its_steps_win(demo_zip, tmp_path):
    ledger, checkpoints = tmp_path / "ledger", tmp_path / "ckpt"
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, ledger_dir=str(ledger))
    fit_probe(dm, tmp_path / "first", devices=1, max_steps=6, enable_checkpointing=True,
              callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=3, save_top_k=-1)])  # fmt: skip
    first = samples_at(ledger, 4)[0]
    ckpt = next(p for p in checkpoints.glob("*.ckpt") if "step=3" in p.name)
    resumed = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, ledger_dir=str(ledger))
    fit_probe(resumed, tmp_path / "second", devices=1, max_steps=6, ckpt_path=str(ckpt))
    assert sorted(p.name for p in ledger.iterdir()) == ["rank0.from0.jsonl", "rank0.from3.jsonl"]
    assert samples_at(ledger, 4)[0] == first == probe_records(tmp_path / "second")[1]  # an exact resume trains the same


def test_the_tool_explains_a_missing_ledger_or_step(tmp_path, capsys):
    assert run("ledger", 3, "--dir", tmp_path) == 2
    assert "no ledger in" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  class_path: fastgen_dm.DemoDataModule\n")
    assert run("ledger", 3, "--config", config) == 2
    assert "sets no data.ledger_dir" in capsys.readouterr().err


def test_a_bucketed_batch_records_its_bucket(tmp_path):
    from fastgen_dm.ledger import LedgerWriter

    writer = LedgerWriter(tmp_path, rank=1)
    writer.record(7, 0, 448, {"shard": ["s/000.tar", "s/001.tar"], "fname": ["a", "b"], "bucket": 2})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "rank1.from7.jsonl").read_text().splitlines()]
    assert lines[-1] == {"step": 7, "epoch": 0, "position": 448, "samples": [[0, "a"], [1, "b"]], "bucket": 2}
    assert samples_at(tmp_path, 7) == {1: [("s/000.tar", "a"), ("s/001.tar", "b")]}


def test_skip_steps_drops_those_batches_on_resume_and_keeps_every_other_where_it_was(demo_zip, tmp_path):
    ledger, checkpoints = tmp_path / "ledger", tmp_path / "ckpt"
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, ledger_dir=str(ledger))
    fit_probe(dm, tmp_path / "first", devices=1, max_steps=8, enable_checkpointing=True,
              callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=3, save_top_k=-1)])  # fmt: skip
    first = probe_records(tmp_path / "first")
    ckpt = next(p for p in checkpoints.glob("*.ckpt") if "step=3" in p.name)
    for again in ("second", "third"):  # the third resume reads a ledger in which the second run trained other batches as steps 4, 5
        resumed = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, ledger_dir=str(ledger), skip_steps=[5, 4])
        fit_probe(resumed, tmp_path / again, devices=1, max_steps=6, ckpt_path=str(ckpt))
        assert probe_records(tmp_path / again) == [first[3], first[6], first[7]]
    assert json.loads((ledger / "rank0.from3.jsonl").read_text().splitlines()[0]) == {"skipped": [4, 5]}


def test_skip_steps_name_a_ledger_and_steps_it_holds(demo_zip, tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"^skip_steps=\[4\] names steps of the data ledger; pass the ledger_dir it was written to$"):
        ImageFolderDataModule(demo_zip, batch_size=16, skip_steps=[4])
    with pytest.raises(ValueError, match=r"^skip_steps must list training steps \(integers >= 0\), got \[-1\]$"):
        ImageFolderDataModule(demo_zip, batch_size=16, skip_steps=[-1], ledger_dir=str(tmp_path))
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, skip_steps=[4], ledger_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="skip_steps: no ledger of rank 0 in"):
        dm.train_dataloader()
    fit_probe(ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, ledger_dir=str(tmp_path / "l")), tmp_path / "r", devices=1, max_steps=2)
    with pytest.raises(ValueError, match=r"^skip_steps \[9\] are in no ledger file of .*; name steps that run trained"):
        ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, skip_steps=[9], ledger_dir=str(tmp_path / "l")).train_dataloader()


def test_two_gpus_skip_the_same_steps_and_train_the_rest_as_planned(latent_shards, tmp_path):
    ledger, checkpoints = tmp_path / "ledger", tmp_path / "ckpt"

    def make(**kwargs):
        return ImageLatentDataModule(datatags=[f"WDS:{latent_shards}"], batch_size=8, num_workers=2, index_dir=str(tmp_path / "index"), ledger_dir=str(ledger), **kwargs)

    fit_probe(make(), tmp_path / "first", devices=2, max_steps=6, enable_checkpointing=True,
              callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=2, save_top_k=-1)])  # fmt: skip
    ckpt = next(p for p in checkpoints.glob("*.ckpt") if "step=2" in p.name)
    fit_probe(make(skip_steps=[3]), tmp_path / "second", devices=2, max_steps=5, ckpt_path=str(ckpt))
    for rank in (0, 1):
        first, second = probe_records(tmp_path / "first", rank), probe_records(tmp_path / "second", rank)
        assert second == [first[2], first[4], first[5]]
