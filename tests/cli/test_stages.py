"""``fastgen validate|test|predict`` on a zip and a WebDataset family, and ``--data`` with any LightningDataModule."""

import lightning
import pytest
import torch
from torch.utils.data import DataLoader

from fastgen_dm.cli.main import main
from fastgen_dm.cli.train import run_lightning
from fastgen_dm.prepare import write_demo_zip
from fastgen_dm.prepare.demo_wds import write_demo_shards

QUIET = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
         "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
         "--model.hidden_channels", "8", "--model.num_blocks", "1"]  # fmt: skip


class TinyDataModule(lightning.LightningDataModule):
    """A user's DataModule, unrelated to the package's: ``num_batches`` random 8x8 images."""

    def __init__(self, num_batches: int = 3) -> None:
        super().__init__()
        self.num_batches = num_batches
        self.batches_read = 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"real": torch.randn(4, 3, 8, 8)} for _ in range(self.num_batches)], batch_size=None)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.batches_read += 1
        return batch


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # every stage writes config.yaml to the current folder


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory):
    return str(write_demo_zip(tmp_path_factory.mktemp("zip") / "demo.zip", num_images=24, num_classes=4))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wds")
    write_demo_shards(folder / "train", "image_latent", num_samples=24, samples_per_shard=10)
    write_demo_shards(folder / "val", "image_latent", num_samples=14, samples_per_shard=10, seed=1)
    return folder


def zip_args(zip_path, *extra):
    return ["--data", "ImageFolderDataModule", "--data.dataset_path", zip_path, "--data.batch_size", "5", "--data.num_workers", "0", *extra]


def wds_args(folder, *extra):
    return ["--data", "ImageLatentDataModule", "--data.datatags", f'["WDS:{folder}/train"]', "--data.index_dir", str(folder / "index"),
            "--data.batch_size", "5", "--data.num_workers", "1", "--model.sigma_data", "1.0", *extra]  # fmt: skip


@pytest.mark.parametrize("family", ["zip", "wds"])
def test_validate_test_and_predict_run_from_the_cli(family, zip_path, shards):
    if family == "zip":
        data, val_count, pass_count = zip_args(zip_path, "--data.val_fraction", "0.25"), 6, 24
    else:
        data, val_count, pass_count = wds_args(shards, "--data.val_datatags", f'["WDS:{shards}/val"]'), 14, 24
    assert main(["validate", *data, *QUIET]) == 0
    cli = run_lightning(["validate", *data, *QUIET])
    assert cli.trainer.callback_metrics["val/loss"] > 0
    cli = run_lightning(["test", *data, *QUIET])
    assert cli.trainer.callback_metrics["test/loss"] > 0
    cli = run_lightning(["predict", *data, *QUIET])
    assert sum(len(p["loss"]) for p in cli.trainer.predict_loop.predictions) == val_count
    # without a validation set, predict reads the training items once
    cli = run_lightning(["predict", *(zip_args(zip_path) if family == "zip" else wds_args(shards)), *QUIET])
    losses = torch.cat([p["loss"] for p in cli.trainer.predict_loop.predictions])
    assert len(losses) == pass_count and bool(torch.isfinite(losses).all())
    if family == "zip":
        assert torch.cat([p["idx"] for p in cli.trainer.predict_loop.predictions]).tolist() == list(range(24))


def test_validate_without_a_validation_set_skips_validation(zip_path):
    cli = run_lightning(["validate", *zip_args(zip_path), *QUIET])
    assert "val/loss" not in cli.trainer.callback_metrics


def test_data_takes_any_lightning_datamodule_by_class_path():
    data = ["--data", f"{__name__}.TinyDataModule"]
    assert main(["fit", *data, "--data.num_batches", "2", "--trainer.max_epochs", "1", *QUIET]) == 0
    cli = run_lightning(["fit", *data, "--trainer.max_steps", "2", *QUIET])
    assert isinstance(cli.datamodule, TinyDataModule) and cli.datamodule.batches_read == 2


def test_a_short_name_that_is_no_datamodule_still_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data", "TinyDataModule"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--data 'TinyDataModule' is no DataModule of fastgen-dm;" in err
    assert "or give a class path (my.module.MyDataModule)" in err
