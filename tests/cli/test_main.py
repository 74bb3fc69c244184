"""The `fastgen` command: one help for all, LightningCLI with short names, data tools, errors."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from fastgen_dm.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def fastgen(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fastgen_dm.cli.main", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_top_help_lists_training_and_data_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "prepare"):
        assert f"    {command}" in out


def test_unknown_command_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2
    assert "unknown command 'fitt'; did you mean 'fit'?" in capsys.readouterr().err


def test_fit_help_documents_the_datamodule_arguments():
    result = fastgen("fit", "--data.help", "CIFAR10DataModule")
    assert result.returncode == 0, result.stderr
    assert "--data.batch_size" in result.stdout and "(type: int, default: 128)" in result.stdout
    assert "--data.sampler_start_idx" in result.stdout


def test_print_config_round_trips(tmp_path):
    first = fastgen("fit", "--data", "CIFAR10DataModule", "--data.batch_size", "64", "--print_config")
    assert first.returncode == 0, first.stderr
    assert "class_path: fastgen_dm.CIFAR10DataModule" in first.stdout
    assert "class_path: fastgen_dm.models.EDMDenoiser" in first.stdout
    config = tmp_path / "config.yaml"
    config.write_text(first.stdout)
    second = fastgen("fit", "--config", str(config), "--print_config")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_a_wrong_argument_names_it():
    result = fastgen("fit", "--data", "CIFAR10DataModule", "--data.batch_size", "many", "--print_config")
    assert result.returncode != 0
    assert "batch_size" in result.stderr and "many" in result.stderr


def test_prepare_demo_writes_the_zip(tmp_path, capsys):
    assert main(["prepare", "demo", "--output-dir", str(tmp_path), "--num-images", "40"]) == 0
    assert (tmp_path / "demo" / "demo-32x32.zip").exists()
    assert main(["prepare", "demo", "--output-dir", str(tmp_path)]) == 0
    assert "exists (use --force to rewrite it)" in capsys.readouterr().out


def test_quickstart_trains_and_the_loss_falls(tmp_path):
    """The README's main job, shortened: the demo data is written by prepare_data, the loss falls."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = fastgen(
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--data.num_images",
        "1024",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "FASTGEN_OUTPUT" / "DATA" / "demo" / "demo-32x32.zip").exists()
    (metrics,) = (tmp_path / "FASTGEN_OUTPUT" / "runs" / "quickstart").rglob("metrics.csv")
    losses = [float(row["train/loss"]) for row in csv.DictReader(metrics.open()) if row.get("train/loss")]
    assert len(losses) >= 40
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_parses(config):
    result = fastgen("fit", "--config", str(REPO / "configs" / config), "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_latent_family_trains_from_the_cli_on_demo_shards(tmp_path):
    assert main(["prepare", "demo", "--output-dir", str(tmp_path / "DATA"), "--num-images", "16", "--num-samples", "64"]) == 0
    result = fastgen(
        "fit", "--config", str(REPO / "configs" / "pair.yaml"),
        "--data.datatags", f'["WDS:{tmp_path}/DATA/demo/wds/pair"]', "--data.index_dir", str(tmp_path / "index"),
        "--data.num_workers", "1", "--trainer.max_steps", "3", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=3` reached" in result.stderr


def test_a_value_the_datamodule_rejects_is_a_one_line_error():
    result = fastgen("fit", "--data", "CIFAR10DataModule", "--data.batch_size", "-3")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("fastgen fit: error: batch_size must be at least 1, got -3")
    assert "Traceback" not in result.stderr


def test_a_misspelled_datamodule_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data", "CIFAR10DataModle"])
    assert exit_info.value.code == 2
    assert "--data 'CIFAR10DataModle' is no DataModule of fastgen-dm; did you mean 'CIFAR10DataModule'?" in capsys.readouterr().err
