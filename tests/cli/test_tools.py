"""The data tools `fastgen verify | bench | show`, end to end on demo data, and their pure helpers."""

import json
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import write_wds

from fastgen_dm import viz
from fastgen_dm.cli import bench, show, verify
from fastgen_dm.cli._datamodule import data_argv
from fastgen_dm.cli.main import main
from fastgen_dm.prepare import write_demo_media_shards, write_demo_shards, write_demo_zip

REPO = Path(__file__).resolve().parents[2]


def run(*args):
    """``fastgen ARGS`` in this process: the exit status (SystemExit included)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_info:
        return exit_info.code


# -- data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_zip(tmp_path_factory):
    return write_demo_zip(tmp_path_factory.mktemp("zip") / "demo.zip", num_images=64, num_classes=4)


@pytest.fixture(scope="module")
def bad_zip(demo_zip, tmp_path_factory):
    """The demo zip with members 5 and 40 replaced by bytes that are no image."""
    path = tmp_path_factory.mktemp("badzip") / "bad.zip"
    with zipfile.ZipFile(demo_zip) as src, zipfile.ZipFile(path, "w") as out:
        for name in src.namelist():
            broken = name in ("00000/img00000005.png", "00000/img00000040.png")
            out.writestr(name, b"not a png" if broken else src.read(name))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """128 image latents in 4 shards of 32."""
    folder = tmp_path_factory.mktemp("wds") / "image_latent"
    write_demo_shards(folder, "image_latent", num_samples=128, samples_per_shard=32)
    return folder


@pytest.fixture
def damaged_shards(shards, tmp_path):
    """A copy of ``shards``: 00001.tar cut in half (inside a member), and the latent of samples 67-69 of 00002.tar garbled."""
    folder = tmp_path / "damaged"
    shutil.copytree(shards, folder)
    cut = folder / "00001.tar"
    os.truncate(cut, cut.stat().st_size // 2 + 100)  # inside sample 48, not at a member boundary
    garbled = folder / "00002.tar"
    with tarfile.open(garbled) as tar:
        members = [m for m in tar.getmembers() if m.name in {f"000000{k}.latent.pth" for k in (67, 68, 69)}]
    data = bytearray(garbled.read_bytes())
    for member in members:
        data[member.offset_data : member.offset_data + 64] = b"\xff" * 64
    garbled.write_bytes(bytes(data))
    return folder


def wds_args(folder, index_dir, *more):
    return ["--data", "ImageLatentDataModule", "--data.datatags", json.dumps([f"WDS:{folder}"]), "--data.index_dir", index_dir, *more]


# -- every tool -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["verify", "bench", "show"])
def test_help_shows_the_datamodule_options_and_examples(tool, capsys):
    assert run(tool, "--help") == 0
    out = capsys.readouterr().out
    assert f"fastgen {tool} --config configs/" in out
    assert "--data.help CLASS" in out and "--config FILE" in out


def test_the_tools_are_listed_in_the_top_help(capsys):
    assert run("--help") == 0
    out = capsys.readouterr().out
    for tool in ("verify", "bench", "show"):
        assert f"    {tool}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "DemoDataModule", "--data.batch_size", "many"], r"batch_size.*many"),
        (["--data", "DemoDataModule", "--data.batch_size", "0"], r"--data: batch_size must be at least 1, got 0"),
        (["--data", "NoSuchDataModule"], r"NoSuchDataModule"),
        (["--config", "missing.yaml"], r"--config missing.yaml: cannot read it"),
        ([], r"no DataModule given: pass --config FILE or --data CLASS"),
    ],
)
def test_bad_datamodule_arguments_exit_2_naming_them(args, message, capsys, tmp_path):
    assert run("verify", *args) == 2
    assert re.search(message, capsys.readouterr().err, re.S)


def test_a_config_without_data_section_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_epochs: 1\n")
    assert run("show", "--config", config, "--out", tmp_path / "x.png") == 2
    assert f"--config {config} has no data: section" in capsys.readouterr().err


def test_data_argv_turns_config_sections_into_data_arguments(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer: {devices: 8}\ndata:\n  class_path: fastgen_dm.DemoDataModule\n")
    assert data_argv([str(config)], ["--data.batch_size", "8"]) == [
        "--data",
        '{"class_path": "fastgen_dm.DemoDataModule"}',
        "--data.batch_size",
        "8",
    ]


# -- verify ---------------------------------------------------------------------------------------


def test_verify_quickstart_config_on_clean_data_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATA_ROOT_DIR", str(tmp_path))  # the demo zip is written there by prepare_data
    out = tmp_path / "ignore.json"
    code = run("verify", "--config", REPO / "configs" / "quickstart.yaml", "--data.num_images", "48", "--data.batch_size", "8", "--out", out, "--no-progress")
    assert code == 0
    assert "DemoDataModule: 48 samples ok, 0 bad, 48 planned" in capsys.readouterr().out
    assert json.loads(out.read_text()) == {}


def test_verify_zip_with_workers_reports_bad_members(bad_zip, tmp_path, capsys):
    out = tmp_path / "ignore.json"
    code = run("verify", "--data", "ImageFolderDataModule", "--data.dataset_path", bad_zip, "--data.num_workers", "2",
               "--data.batch_size", "8", "--out", out, "--no-progress")  # fmt: skip
    assert code == 1
    text = capsys.readouterr().out
    assert "ImageFolderDataModule: 62 samples ok, 2 bad, 64 planned" in text
    assert "UnidentifiedImageError: 2" in text
    assert "bad.zip  00000/img00000005.png" in text and "bad.zip  00000/img00000040.png" in text
    assert json.loads(out.read_text()) == {"bad.zip": ["00000/img00000005.png", "00000/img00000040.png"]}
    code = run("verify", "--data", "ImageFolderDataModule", "--data.dataset_path", bad_zip, "--data.num_workers", "2",
               "--data.ignore_index_paths", json.dumps([str(out)]), "--no-progress")  # fmt: skip
    assert code == 0 and "ImageFolderDataModule: 62 samples ok, 0 bad, 62 planned" in capsys.readouterr().out


def test_verify_zip_without_fork_keeps_its_workers_and_their_skip_files(bad_zip, monkeypatch, capsys):
    monkeypatch.setattr(verify, "workers_inherit_handlers", lambda: False)
    code = run("verify", "--data", "ImageFolderDataModule", "--data.dataset_path", bad_zip, "--data.num_workers", "2", "--no-progress")
    assert code == 1
    text = capsys.readouterr().out
    assert "num_workers=0" not in text and "62 samples ok, 2 bad" in text


def test_verify_clean_shards_exit_0(shards, tmp_path, capsys):
    assert run("verify", *wds_args(shards, tmp_path / "index"), "--no-progress") == 0
    assert "ImageLatentDataModule: 128 samples ok, 0 bad, 128 planned" in capsys.readouterr().out


def test_verify_damaged_shards_then_their_ignore_index_makes_it_pass(damaged_shards, tmp_path, capsys):
    index_dir, out = tmp_path / "index", tmp_path / "ignore.json"
    assert run("verify", *wds_args(damaged_shards, index_dir), "--out", out, "--no-progress") == 1
    text = capsys.readouterr().out
    # 00001.tar is cut inside sample 48: 16 samples before it are planned, the 15 after it have no header
    # ok + bad = planned; the sample cut off by the damage was never planned
    assert "ImageLatentDataModule: 109 samples ok, 3 bad, 112 planned; 1 more lost to damaged shards (never planned)\n" in text
    assert re.search(r"ShardReadError: 1\n    00001\.tar  00000048  cut by the damage at byte \d+", text)
    for key in ("00000067", "00000068", "00000069"):
        assert f"00002.tar  {key}  " in text
    assert re.search(r"damaged shards.*\n  .*00001\.tar: .*truncated", text)
    table = json.loads(out.read_text())
    assert table == {"00001.tar": ["00000048"], "00002.tar": ["00000067", "00000068", "00000069"]}

    again = tmp_path / "again.json"
    code = run("verify", *wds_args(damaged_shards, index_dir, "--data.ignore_index_paths", json.dumps([str(out)])), "--out", again, "--no-progress")
    assert code == 0
    text = capsys.readouterr().out
    assert "ImageLatentDataModule: 109 samples ok, 0 bad, 109 planned" in text
    assert "damaged shards" in text  # still said, but every sample it cost is in the ignore index
    assert json.loads(again.read_text()) == table  # the earlier ignore index is carried over


def test_the_recorder_keeps_what_the_bad_data_policy_logs(tmp_path):
    from fastgen_dm.read import BadDataPolicy, bad_data

    recorder = verify.SkipRecorder(tmp_path)
    bad_data.logger.addHandler(recorder)
    try:
        BadDataPolicy(max_skip_fraction=1.0).skip("s3://b/00003.tar", "k7", KeyError("'jpg' missing"))
        bad_data.logger.warning("some other warning")
    finally:
        bad_data.logger.removeHandler(recorder)
        recorder.close()
    assert verify.read_recorded(tmp_path) == [
        {"source": "s3://b/00003.tar", "key": "k7", "cause": "KeyError", "message": "\"'jpg' missing\""},
        {"source": "", "key": "", "cause": "unparsed", "message": "some other warning"},
    ]


def test_merge_bad_takes_causes_from_records_and_keys_from_skip_files():
    records = [{"source": "s3://b/p/0.tar", "key": "a", "cause": "KeyError", "message": "no 'latent.pth'"}]
    bad = verify.merge_bad(records, {"0.tar": {"a", "b"}})
    assert [(b.shard, b.key, b.cause) for b in bad] == [("0.tar", "a", "KeyError"), ("0.tar", "b", "unknown")]


# -- bench ----------------------------------------------------------------------------------------


def test_bench_zip_sweeps_workers_and_compares_with_raw_reads(demo_zip, capsys):
    code = run("bench", "--data", "ImageFolderDataModule", "--data.dataset_path", demo_zip, "--data.batch_size", "8",
               "--batches", "3", "--workers", "0,1", "--step-ms", "1")  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"raw read: [\d.]+ MB of 1 file\(s\) in [\d.]+ s = [\d.]+ MB/s", text)
    header, zero, one = text.strip().splitlines()[-3:]
    assert header.split() == ["workers", "first", "batch", "s", "batches", "samples/s", "MB/s", "raw", "ratio", "data", "wait", "peak", "worker", "RSS", "MiB"]
    assert zero.split()[0] == "0" and zero.split()[2] == "3" and zero.split()[-1] == "-"
    assert one.split()[0] == "1" and re.fullmatch(r"[\d.]+x", one.split()[5]) and one.split()[-1].isdigit()


def test_bench_shards(shards, tmp_path, capsys):
    assert run("bench", *wds_args(shards, tmp_path / "index", "--data.num_workers", "0"), "--batches", "2") == 0
    text = capsys.readouterr().out
    assert "raw read:" in text and "of 4 file(s)" in text
    assert "samples/s" in text


def test_bench_times_the_decoding_after_the_transfer(tmp_path, capsys):
    write_demo_media_shards(tmp_path / "images", "images", num_samples=16)
    args = ["--data", "ImageWDSDataModule", "--data.datatags", json.dumps([f"WDS:{tmp_path / 'images'}"]), "--data.index_dir",
            tmp_path / "index", "--data.input_res", "32", "--data.batch_size", "4", "--data.decode_jpeg_on_device", "true"]  # fmt: skip
    assert run("bench", *args, "--batches", "2", "--workers", "0") == 0
    text = capsys.readouterr().out
    assert "decodes after the transfer: each batch is decoded here, on the CPU" in text
    assert re.search(r"\n +0 +[\d.]+ +2 +[\d.]+ +[\d.]+ +[\d.]+x", text)  # workers 0, 2 batches timed


def test_bench_refuses_a_bad_worker_list(capsys):
    assert run("bench", "--data", "DemoDataModule", "--workers", "0,x") == 2
    assert "--workers '0,x': 'x' is not a whole number >= 0" in capsys.readouterr().err


def test_tensor_bytes_counts_nested_tensors_only():
    batch = {"real": torch.zeros(2, 3, dtype=torch.float32), "fname": ["a", "b"], "more": [torch.zeros(4, dtype=torch.uint8)]}
    assert bench.tensor_bytes(batch) == 2 * 3 * 4 + 4


def test_table_right_aligns_columns():
    assert bench.table([["a", "bb"], ["ccc", "d"]]) == "  a  bb\nccc   d"


# -- show -----------------------------------------------------------------------------------------


def test_show_zip_writes_a_labelled_grid(demo_zip, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert run("show", "--data", "ImageFolderDataModule", "--data.dataset_path", demo_zip, "--data.batch_size", "8",
               "--batches", "2", "--out", out) == 0  # fmt: skip
    assert "real torch.float32 [16, 3, 32, 32] drawn as image, 266x314" in capsys.readouterr().out
    with PIL.Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == viz.grid_size(16, 64, 64)[2:] == (266, 314)


def test_show_latents_writes_channel_rows_and_a_histogram(shards, tmp_path, capsys):
    out = tmp_path / "latents.png"
    assert run("show", *wds_args(shards, tmp_path / "index", "--data.batch_size", "8"), "--max-items", "5", "--out", out) == 0
    assert "drawn as latent" in capsys.readouterr().out
    with PIL.Image.open(out) as image:
        width, height = viz.rows_size(5, 4, 64, 64)
        assert image.size == (width, height + viz.HIST_H) == (266, 392 + 120)


def test_show_names_the_missing_key_and_refuses_gif_for_images(demo_zip, tmp_path, capsys):
    base = ["show", "--data", "ImageFolderDataModule", "--data.dataset_path", demo_zip, "--data.batch_size", "4", "--out", tmp_path / "x.png"]
    assert run(*base, "--key", "noise") == 2
    assert "--key 'noise': the batch has no tensor 'noise'; its tensors are ['condition', 'idx', 'neg_condition', 'real']" in capsys.readouterr().err
    assert run(*base, "--gif", tmp_path / "x.gif") == 2
    assert "--gif needs a video batch" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
    """One shard: 4 clips of 12 frames of 32x24 (3 distinct videos) and an empty, broken one."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg CLI encodes the test videos")
    folder = tmp_path_factory.mktemp("video")
    videos = []
    for k in range(3):
        ramp = f"nullsrc=size=32x24:rate=24,geq=r='mod(X*4+N*7+{40 * k},256)':g='mod(Y*5+N*13,256)':b='mod(N*29+X+Y,256)'"
        path = folder / f"v{k}.mp4"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", ramp, "-frames:v", "12",
                        "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)], check=True)  # fmt: skip
        videos.append(path.read_bytes())
    samples = [{"__key__": f"clip{i}", "mp4": videos[i % 3], "txt": f"clip number {i}".encode()} for i in range(4)]
    samples.insert(2, {"__key__": "broken", "mp4": b"", "txt": b"x"})
    (folder / "shards").mkdir()
    write_wds(folder / "shards" / "000000.tar", samples)
    return folder / "shards"


def video_args(folder, index_dir, *more):
    return ["--data", "VideoWDSDataModule", "--data.datatags", json.dumps([f"WDS:{folder}"]), "--data.index_dir", index_dir,
            "--data.sequence_length", "8", "--data.img_size", "[32, 24]", "--data.backend", "pyav", "--data.decoder_type", "full",
            "--data.num_workers", "0", "--data.max_skip_fraction", "0.5", *more]  # fmt: skip


def test_show_video_shards_as_frame_strips_and_a_gif(video_shards, tmp_path, capsys):
    out, gif = tmp_path / "clips.png", tmp_path / "clips.gif"
    assert run("show", *video_args(video_shards, tmp_path / "index", "--data.batch_size", "4"), "--out", out, "--gif", gif) == 0
    assert "real torch.float32 [3, 3, 8, 24, 32] drawn as video" in capsys.readouterr().out  # the broken clip is skipped
    with PIL.Image.open(out) as image:
        assert image.size == viz.rows_size(3, 8, 96, 72) == (786, 260)  # 8 frames of 32x24 scaled by 3
    with PIL.Image.open(gif) as animation:
        assert animation.n_frames == 8 and animation.size == viz.grid_size(3, 96, 72)[2:]


def test_verify_video_shards_reports_the_broken_clip(video_shards, tmp_path, capsys):
    assert run("verify", *video_args(video_shards, tmp_path / "index", "--data.batch_size", "2"), "--no-progress") == 1
    text = capsys.readouterr().out
    assert "VideoWDSDataModule: 4 samples ok, 1 bad, 5 planned" in text
    assert "VideoDecodeError: 1\n    000000.tar  broken  the video member is empty" in text


def test_verify_decodes_after_the_transfer_where_the_datamodule_does(video_shards, tmp_path, capsys):
    on_device = ["--data.batch_size", "2", "--data.backend", "torchcodec", "--data.decode_on_device", "true"]
    assert run("verify", *video_args(video_shards, tmp_path / "index", *on_device), "--out", tmp_path / "ignore.json", "--no-progress") == 1
    text = capsys.readouterr().out
    assert "VideoWDSDataModule: 4 samples ok, 1 bad, 5 planned" in text
    assert "VideoDecodeError: 1\n    000000.tar  broken  the video member is empty" in text
    assert json.loads((tmp_path / "ignore.json").read_text()) == {"000000.tar": ["broken"]}


def test_show_image_shards_undoes_the_normalization(demo_zip, tmp_path):
    with zipfile.ZipFile(demo_zip) as z:
        pngs = [n for n in z.namelist() if n.endswith(".png")][:6]
        write_wds(tmp_path / "000000.tar", [{"__key__": f"im{i}", "png": z.read(n), "txt": f"shape {i}".encode()} for i, n in enumerate(pngs)])
    base = ["--data", "ImageWDSDataModule", "--data.datatags", json.dumps([f"WDS:{tmp_path}"]), "--data.index_dir", tmp_path / "index",
            "--data.key_map", '{"real": "png", "condition": "txt"}', "--data.input_res", "32", "--data.shuffle", "false", "--data.batch_size", "6"]  # fmt: skip
    assert run("show", *base, "--out", tmp_path / "half.png") == 0
    imagenet = ["--data.norm_mean", "[0.485, 0.456, 0.406]", "--data.norm_std", "[0.229, 0.224, 0.225]"]
    assert run("show", *base, *imagenet, "--out", tmp_path / "imagenet.png") == 0
    with PIL.Image.open(tmp_path / "half.png") as half, PIL.Image.open(tmp_path / "imagenet.png") as other:
        a, b = torch.from_numpy(np.asarray(half, dtype=np.int16)), torch.from_numpy(np.asarray(other, dtype=np.int16))
    assert a.shape == b.shape and (a - b).abs().max() <= 1  # the same pixels, whatever the normalization


def test_unnormalize_per_channel():
    x = torch.tensor([[[[0.0]], [[1.0]]]])  # [1, 2, 1, 1]
    assert viz.unnormalize(x, [0.5, 0.25], [0.5, 0.5]).flatten().tolist() == [0.0, 0.5]
    assert viz.unnormalize(x, 0.5, 0.5).flatten().tolist() == [0.0, 1.0]


# -- pictures (pure) ------------------------------------------------------------------------------


def test_kind_of_tells_images_videos_and_latents_apart():
    assert show.kind_of(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)) == "image"
    assert show.kind_of(torch.rand(2, 3, 8, 8) * 2 - 1) == "image"
    assert show.kind_of(torch.rand(2, 3, 4, 8, 8) * 2 - 1) == "video"
    assert show.kind_of(torch.randn(2, 3, 8, 8) * 5) == "latent"  # 3 channels, but out of [-1, 1]
    assert show.kind_of(torch.zeros(2, 4, 8, 8)) == "latent"
    with pytest.raises(ValueError, match=re.escape("has shape [2, 8]; expected [B, C, H, W] or [B, C, T, H, W]")):
        show.kind_of(torch.zeros(2, 8))


def test_labels_prefer_captions_then_classes_then_names():
    one_hot = torch.eye(3)[[2, 0]]
    assert show.labels_of({"txt": ["a cat", "a dog"], "condition": one_hot}, 2) == ["a cat", "a dog"]
    assert show.labels_of({"condition": one_hot, "fname": ["x", "y"]}, 2) == ["class 2", "class 0"]
    assert show.labels_of({"condition": torch.zeros(2, 4, 8), "fname": ["x", "y"], "shard": ["s", "s"]}, 2) == ["x", "y"]
    assert show.labels_of({"idx": torch.tensor([7, 9])}, 2) == ["#7", "#9"]
    assert show.labels_of({"neg_condition": ["", ""], "condition": ["a", "b"]}, 2) == ["a", "b"]


def test_frame_strips_and_gif_frames_of_a_video_batch():
    clips = torch.randint(0, 256, (3, 3, 12, 16, 16), dtype=torch.uint8)
    strips = viz.frame_strips(clips, ["a", "b", "c"])
    assert strips.size == viz.rows_size(3, 8, 64, 64)  # up to 8 of the 12 frames, 16 px scaled by 4
    frames = viz.video_frames(clips, ["a", "b", "c"])
    assert len(frames) == 12 and frames[0].size == viz.grid_size(3, 64, 64)[2:]


def test_frame_indices_spread_over_the_clip():
    assert viz.frame_indices(20, 5) == [0, 5, 10, 14, 19]
    assert viz.frame_indices(3, 8) == [0, 1, 2]


def test_channels_are_normalized_each_by_its_own_range():
    x = torch.stack([torch.tensor([[0.0, 1.0]]), torch.tensor([[-100.0, 100.0]])])[None]  # [1, 2, 1, 2]
    assert viz.normalize_channels(x).tolist() == [[[[0, 255]], [[0, 255]]]]
    assert viz.normalize_channels(torch.ones(1, 1, 2, 2)).tolist() == [[[[128, 128], [128, 128]]]]


def test_histogram_and_long_labels_fit_their_width():
    assert viz.histogram(torch.randn(1000), width=200).size == (200, viz.HIST_H)
    grid = viz.image_grid(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["a very long caption " * 10])
    assert grid.size == viz.grid_size(1, 64, 64)[2:]


def test_bench_says_when_the_epoch_ends_before_the_batches_asked_for(demo_zip, capsys):
    # 64 images in batches of 8: the first batch and 7 more, not 50.
    code = run("bench", "--data", "ImageFolderDataModule", "--data.dataset_path", demo_zip, "--data.batch_size", "8",
               "--data.num_workers", "0", "--batches", "50", "--raw-mb", "0")  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "up to 50 batches after the first" in text
    assert text.strip().splitlines()[-2].split()[2] == "7"
    assert text.strip().endswith("the epoch ended after 7 of the 50 batches asked for (--batches)")
