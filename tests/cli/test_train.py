"""``fastgen fit`` writes no credential: a real run from S3, every file it wrote read back, then a resume."""

import json

import pytest
import torch
import yaml

from fastgen_dm.cli.train import run_lightning
from fastgen_dm.prepare import write_demo_zip
from fastgen_dm.storage import REDACTED

SECRETS = ("AKIAFASTGENKEY0001", "fastgen-secret-value-0002", "fastgen-session-token-0003")


def fit(*args):
    return run_lightning([
        "fit", *args, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip


@pytest.fixture
def s3_zip(s3_server, s3_bucket, tmp_path):
    local = write_demo_zip(tmp_path / "demo.zip", num_images=32, num_classes=4)
    return s3_server.upload(local, f"s3://{s3_bucket}/demo.zip")


def test_fit_writes_no_secret_and_resumes_with_credentials_from_the_environment(s3_server, s3_zip, tmp_path, monkeypatch):
    options = {
        "key": SECRETS[0],
        "secret": SECRETS[1],
        "client_kwargs": {**s3_server.storage_options["client_kwargs"], "aws_session_token": SECRETS[2]},
        "use_listings_cache": False,
    }
    root = tmp_path / "run"
    fit("--data", "ImageFolderDataModule", "--data.dataset_path", s3_zip, "--data.storage_options", json.dumps(options),
        "--data.batch_size", "8", "--data.num_workers", "0", "--model.hidden_channels", "8", "--model.num_blocks", "1",
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(root))  # fmt: skip

    written = [p for p in root.rglob("*") if p.is_file()]
    (config,) = [p for p in written if p.name == "config.yaml"]
    (checkpoint,) = [p for p in written if p.suffix == ".ckpt"]
    assert [p for p in written if p.name == "hparams.yaml"]
    for path in written:
        data = path.read_bytes()
        assert not [s for s in SECRETS if s.encode() in data], path
    redacted = {"key": REDACTED, "secret": REDACTED, "client_kwargs": {**s3_server.storage_options["client_kwargs"], "aws_session_token": REDACTED},
                "use_listings_cache": False}  # fmt: skip
    assert yaml.safe_load(config.read_text())["data"]["init_args"]["storage_options"] == redacted
    assert torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]["storage_options"] == redacted

    # the saved config and checkpoint resume; the credentials come from the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    cli = fit("--config", str(config), "--ckpt_path", str(checkpoint), "--trainer.max_steps", "4")
    assert cli.trainer.global_step == 4
    assert cli.datamodule.storage_options == {"client_kwargs": s3_server.storage_options["client_kwargs"], "use_listings_cache": False}
    for path in root.rglob("*"):
        assert path.is_dir() or not [s for s in SECRETS if s.encode() in path.read_bytes()], path
