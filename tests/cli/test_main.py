"""The `fastgen` command: one help for all, LightningCLI with short names, data tools, errors."""

import csv
import os
import re
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
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"data root: {tmp_path.resolve() / 'FASTGEN_OUTPUT' / 'DATA'} (FASTGEN_OUTPUT/DATA under" in result.stderr
    assert re.search(r"train/loss [\d.]+ over this run's first 10 steps, [\d.]+ over its last 10 \(global step 96\)", result.stderr)
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


def test_top_help_imports_neither_lightning_nor_torch():
    code = "import sys; from fastgen_dm.cli.main import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
        "print(sorted(m for m in ('lightning', 'torch', 'fastgen_dm.datamodules') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_lower_case_datamodule_name_suggests_its_class(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data", "cifar10datamodule"])
    assert exit_info.value.code == 2
    assert "--data 'cifar10datamodule' is no DataModule of fastgen-dm; did you mean 'CIFAR10DataModule'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.tail", "uneven"], "--data.tail: Expected a typing.Literal['pad', 'drop']. Got value: uneven"),
        (["--data.batch_size", "many"], "--data.batch_size: Expected a <class 'int'>. Got value: many"),
        (["--data.nosuch", "3"], "--data: Option 'nosuch' is not accepted"),
    ],
)
def test_a_bad_argument_value_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data", "DemoDataModule", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"fastgen fit: error: {message}\n"


def test_tail_uneven_is_refused_for_training():
    from fastgen_dm import DemoDataModule

    message = "tail 'uneven' is for evaluation only: ranks would take different numbers of steps; use 'pad' or 'drop'"
    with pytest.raises(ValueError, match=re.escape(message)):
        DemoDataModule(tail="uneven")


def _fit_demo(tmp_path, *args, env=None):
    return fastgen(
        "fit", "--data", "DemoDataModule", "--data.dataset_path", str(tmp_path / "demo.zip"), "--data.num_images", "32",
        "--data.resolution", "8", "--data.batch_size", "4", "--data.num_workers", "0", "--model.hidden_channels", "16",
        "--model.num_blocks", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"), *args, cwd=tmp_path, env=env,
    )  # fmt: skip


def test_a_data_error_during_fit_is_one_line_and_debug_shows_the_traceback(tmp_path):
    assert main(["prepare", "demo", "--output-dir", str(tmp_path), "--num-images", "16", "--resolution", "8",
                 "--num-samples", "4", "--num-media", "1"]) == 0  # fmt: skip
    (tmp_path / "demo" / "demo-8x8.zip").rename(tmp_path / "demo.zip")
    result = _fit_demo(tmp_path, "--data.resolution", "16")  # the zip holds 8x8 images: setup refuses it
    assert result.returncode == 1
    message = f"{tmp_path / 'demo.zip'} holds 8x8 items but resolution=16; pass the dataset's resolution or resolution=None"
    assert result.stderr.endswith(f"fastgen fit: error: {message} (--debug shows the traceback)\n")
    assert "Traceback" not in result.stderr
    debug = _fit_demo(tmp_path, "--data.resolution", "16", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and debug.stderr.endswith(f"ValueError: {message}\n")
    env = {**os.environ, "FASTGEN_DEBUG": "1"}
    assert "Traceback" in _fit_demo(tmp_path, "--data.resolution", "16", env=env).stderr


def test_a_missing_dataset_during_fit_is_one_line(tmp_path):
    result = fastgen("fit", "--data", "ImageFolderDataModule", "--data.dataset_path", str(tmp_path / "nope.zip"),
                     "--trainer.logger", "false", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    message = f"dataset_path '{tmp_path / 'nope.zip'}' does not exist; pass s3_path to fetch it, or create it with `fastgen prepare`"
    assert result.stderr.endswith(f"fastgen fit: error: {message} (--debug shows the traceback)\n")


def test_one_line_takes_the_last_line_of_a_reraised_traceback():
    from fastgen_dm.cli.main import _one_line

    reraised = RuntimeError("Caught X in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                            '  File "a.py", line 1\nfastgen_dm.read.bad_data.TooManyBadSamplesError: 3 of 10 samples were bad')  # fmt: skip
    assert _one_line(reraised) == "fastgen_dm.read.bad_data.TooManyBadSamplesError: 3 of 10 samples were bad"
    assert _one_line(ValueError("two\n  lines")) == "two lines"


def test_a_one_device_checkpoint_resumes_on_two_processes_without_shape_arguments(tmp_path):
    first = _fit_demo(tmp_path, "--trainer.max_steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    (checkpoint,) = (tmp_path / "run").rglob("*.ckpt")
    resumed = _fit_demo(
        tmp_path, "--trainer.max_steps", "6", "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2",
        "--trainer.accelerator", "cpu", "--ckpt_path", str(checkpoint),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    assert "`Trainer.fit` stopped: `max_steps=6` reached" in resumed.stderr


def test_fit_and_prepare_name_the_absolute_data_root(tmp_path, capsys):
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT_DIR"}
    result = fastgen("prepare", "demo", "--num-images", "8", "--num-samples", "4", "--num-media", "1", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path.resolve() / "FASTGEN_OUTPUT" / "DATA"
    note = f"data root: {root} (FASTGEN_OUTPUT/DATA under the current folder; set $DATA_ROOT_DIR to change it)"
    assert result.stdout.splitlines()[0] == note
    assert result.stdout.count(f"wrote 8 images of 4 classes to {root / 'demo' / 'demo-32x32.zip'}") == 1
    assert "wrote" not in result.stderr  # each write is said once, on stdout


def test_one_line_parse_error_skips_blank_lines_and_list_marks():
    from fastgen_dm.cli.train import one_line_parse_error

    message = 'Parser key "data":\n\n  - Expected a path but X either not accessible or invalid\n  - Does not validate'
    assert one_line_parse_error(message) == "--data: Expected a path but X either not accessible or invalid"
