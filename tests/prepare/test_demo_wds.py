"""Tests for fastgen_dm.prepare.demo_wds: demo WebDataset shards of every latent family, raw images and videos."""

from __future__ import annotations

import colorsys
import io
import json
import random
import re
import tarfile

import numpy as np
import pytest
import torch
import webdataset

from fastgen_dm.cli.main import main
from fastgen_dm import ImageWDSDataModule, VideoWDSDataModule
from fastgen_dm.prepare.demo_wds import MEDIA_SIZE, VIDEO_FRAMES, write_demo_media_shards, write_demo_shards

KINDS = ("image_latent", "video_latent", "pair", "path")

# kind -> {suffix: shape} with the defaults (text_len 8, text_dim 32, path_steps 4); None: not a tensor.
EXPECTED = {
    "image_latent": {"latent.pth": (4, 32, 32), "txt_emb.pth": (8, 32), "txt": None, "json": None},
    "video_latent": {"latent.pth": (16, 5, 8, 8), "txt_emb.pth": (8, 32), "txt": None, "json": None},
    "pair": {"latent.pth": (4, 32, 32), "noise.pth": (4, 32, 32), "txt_emb.pth": (8, 32)},
    "path": {"latent.pth": (4, 32, 32), "path.pth": (4, 4, 32, 32), "txt_emb.pth": (8, 32)},
}


def _tar_members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _load(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_members_shapes_and_dtypes(tmp_path, kind) -> None:
    shards = write_demo_shards(tmp_path / kind, kind, num_samples=10, samples_per_shard=4)
    assert shards == [tmp_path / kind / f"{s:05d}.tar" for s in range(3)]
    expected = EXPECTED[kind]
    keys = []
    for shard in shards:
        members = _tar_members(shard)
        shard_keys = sorted({name.split(".", 1)[0] for name in members})
        keys += shard_keys
        assert sorted(members) == sorted(f"{key}.{suffix}" for key in shard_keys for suffix in expected)
        for name, data in members.items():
            suffix = name.split(".", 1)[1]
            if expected[suffix] is not None:
                tensor = _load(data)
                assert type(tensor) is torch.Tensor and tensor.dtype == torch.float32
                assert tuple(tensor.shape) == expected[suffix], name
                assert torch.isfinite(tensor).all()
                # a fresh tensor: no larger storage saved with it
                assert tensor.untyped_storage().nbytes() == tensor.numel() * 4
            elif suffix == "txt":
                assert re.fullmatch(r"an? [a-z -]+", data.decode("utf-8")), data
            else:
                score = json.loads(data)["aesthetic_score"]
                assert isinstance(score, float) and 3.0 <= score < 7.0
    assert keys == [f"{i:08d}" for i in range(10)]
    counts = json.loads((tmp_path / kind / "shard_counts.json").read_text())
    assert counts == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 2}
    negative = torch.load(tmp_path / kind / "neg_condition.pth", weights_only=True)
    assert negative.dtype == torch.float32 and tuple(negative.shape) == (8, 32)
    assert not list(tmp_path.rglob("*.part-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_webdataset_reads_every_sample(tmp_path, kind) -> None:
    shards = write_demo_shards(tmp_path, kind, num_samples=70, samples_per_shard=32)
    dataset = webdataset.WebDataset([str(s) for s in shards], shardshuffle=False)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(70)]
    suffixes = set(EXPECTED[kind])
    for sample in samples:
        assert {k for k in sample if not k.startswith("__")} == suffixes
    counts = json.loads((tmp_path / "shard_counts.json").read_text())
    assert counts == {"00000.tar": 32, "00001.tar": 32, "00002.tar": 6}
    assert sum(counts.values()) == len(samples)
    assert {s["__url__"] for s in samples} == {str(s) for s in shards}


def test_custom_shapes(tmp_path) -> None:
    write_demo_shards(
        tmp_path / "p", "path", num_samples=2, latent_shape=(2, 3, 4, 5), text_len=3, text_dim=7, path_steps=6
    )
    members = _tar_members(tmp_path / "p" / "00000.tar")
    assert tuple(_load(members["00000000.latent.pth"]).shape) == (2, 3, 4, 5)
    assert tuple(_load(members["00000000.path.pth"]).shape) == (6, 2, 3, 4, 5)
    assert tuple(_load(members["00000001.txt_emb.pth"]).shape) == (3, 7)
    assert tuple(torch.load(tmp_path / "p" / "neg_condition.pth", weights_only=True).shape) == (3, 7)
    write_demo_shards(tmp_path / "v", "video_latent", num_samples=1, latent_shape=(4, 2, 6, 6))
    assert tuple(_load(_tar_members(tmp_path / "v" / "00000.tar")["00000000.latent.pth"]).shape) == (4, 2, 6, 6)


def test_latents_carry_a_class_signal(tmp_path) -> None:
    """Same-class latents (same caption class) correlate; other classes do not."""
    write_demo_shards(tmp_path, "image_latent", num_samples=8, samples_per_shard=8)
    members = _tar_members(tmp_path / "00000.tar")
    latents = [_load(members[f"{i:08d}.latent.pth"]).flatten() for i in range(8)]
    captions = [members[f"{i:08d}.txt"].decode() for i in range(8)]
    embs = [_load(members[f"{i:08d}.txt_emb.pth"]).flatten() for i in range(8)]
    assert captions[0].endswith("a red circle") and captions[4].endswith("a red circle")
    same = torch.corrcoef(torch.stack([latents[0], latents[4]]))[0, 1]
    other = torch.corrcoef(torch.stack([latents[0], latents[1]]))[0, 1]
    assert same > 0.5 and abs(other) < 0.2
    assert torch.corrcoef(torch.stack([embs[0], embs[4]]))[0, 1] > 0.9
    assert 0.7 < torch.stack(latents).std() < 1.3


def test_pair_and_path_relations(tmp_path) -> None:
    write_demo_shards(tmp_path / "pair", "pair", num_samples=1)
    pair = _tar_members(tmp_path / "pair" / "00000.tar")
    latent, noise = _load(pair["00000000.latent.pth"]), _load(pair["00000000.noise.pth"])
    assert torch.corrcoef(torch.stack([latent.flatten(), noise.flatten()]))[0, 1] > 0.4

    write_demo_shards(tmp_path / "path", "path", num_samples=1, path_steps=4)
    members = _tar_members(tmp_path / "path" / "00000.tar")
    latent, path = _load(members["00000000.latent.pth"]), _load(members["00000000.path.pth"])
    distances = [float((step - latent).norm() / latent.norm()) for step in path]
    assert distances == sorted(distances, reverse=True)  # every step nearer the latent
    assert distances[-1] < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes_and_prefix(tmp_path, kind) -> None:
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    a = write_demo_shards(tmp_path / "a", kind, num_samples=20, samples_per_shard=8, seed=3)
    b = write_demo_shards(tmp_path / "b", kind, num_samples=20, samples_per_shard=8, seed=3)
    assert random.getstate() == state[0]
    assert (np.random.get_state()[1] == state[1]).all()
    assert torch.equal(torch.get_rng_state(), state[2])
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes()
    for name in ("shard_counts.json", "neg_condition.pth"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = write_demo_shards(tmp_path / "c", kind, num_samples=8, samples_per_shard=8, seed=3)
    assert c[0].read_bytes() == a[0].read_bytes()  # a smaller set is a prefix
    d = write_demo_shards(tmp_path / "d", kind, num_samples=8, samples_per_shard=8, seed=4)
    assert d[0].read_bytes() != a[0].read_bytes()


def test_rewrite_removes_stale_shards(tmp_path) -> None:
    write_demo_shards(tmp_path, "pair", num_samples=10, samples_per_shard=2)
    (tmp_path / "notes.tar.txt").write_text("kept")
    shards = write_demo_shards(tmp_path, "pair", num_samples=4, samples_per_shard=2)
    assert sorted(tmp_path.glob("*.tar")) == shards
    assert json.loads((tmp_path / "shard_counts.json").read_text()) == {"00000.tar": 2, "00001.tar": 2}
    assert (tmp_path / "notes.tar.txt").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "image"}, "kind 'image' is unknown; use one of 'image_latent', 'video_latent', 'pair', 'path'"),
        ({"num_samples": 0}, "num_samples must be an int >= 1, got 0"),
        ({"num_samples": 2.5}, "num_samples must be an int >= 1, got 2.5"),
        ({"samples_per_shard": 0}, "samples_per_shard must be an int >= 1, got 0"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
        ({"seed": True}, "seed must be an int >= 0, got True"),
        ({"text_len": 0}, "text_len must be an int >= 1, got 0"),
        ({"text_dim": 0}, "text_dim must be an int >= 1, got 0"),
        ({"path_steps": 0}, "path_steps must be an int >= 1, got 0"),
        (
            {"latent_shape": (4, 32)},
            "latent_shape for kind 'image_latent' must be 3 positive ints (e.g. (4, 32, 32)) or None, got (4, 32)",
        ),
        (
            {"kind": "video_latent", "latent_shape": (4, 32, 32)},
            "latent_shape for kind 'video_latent' must be 4 positive ints (e.g. (16, 5, 8, 8)) or None, "
            "got (4, 32, 32)",
        ),
        (
            {"kind": "pair", "latent_shape": (4, 0, 8)},
            "latent_shape for kind 'pair' must be 3 or 4 positive ints (e.g. (4, 32, 32)) or None, got (4, 0, 8)",
        ),
        (
            {"kind": "path", "latent_shape": "4x8x8"},
            "latent_shape for kind 'path' must be 3 or 4 positive ints (e.g. (4, 32, 32)) or None, got '4x8x8'",
        ),
    ],
)
def test_argument_errors_name_argument_and_value(tmp_path, kwargs, message) -> None:
    kwargs = {"kind": "image_latent", **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        write_demo_shards(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_writes_zip_and_shards(tmp_path, capsys) -> None:
    assert main(["prepare", "demo", "--output-dir", str(tmp_path), "--num-images", "8", "--num-samples", "5"]) == 0
    demo = tmp_path / "demo"
    assert (demo / "demo-32x32.zip").exists()
    out = capsys.readouterr().out
    for kind in KINDS:
        folder = demo / "wds" / kind
        assert json.loads((folder / "shard_counts.json").read_text()) == {"00000.tar": 5}
        assert (folder / "neg_condition.pth").exists()
        assert f"wrote 5 {kind} samples in 1 shards to {folder}" in out
    for kind in ("images", "videos"):
        folder = demo / "wds" / kind
        assert json.loads((folder / "shard_counts.json").read_text()) == {"00000.tar": 16, "00001.tar": 16, "00002.tar": 16, "00003.tar": 16}
        assert f"wrote 64 {kind} in 4 shards to {folder}" in out
    assert main(["prepare", "demo", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{demo / 'demo-32x32.zip'} exists (use --force to rewrite it)" in out
    assert f"{demo / 'wds' / 'pair'} exists (use --force to rewrite it)" in out
    rewrite = ["--num-images", "8", "--num-samples", "3", "--force"]
    assert main(["prepare", "demo", "--output-dir", str(tmp_path), *rewrite]) == 0
    assert json.loads((demo / "wds" / "path" / "shard_counts.json").read_text()) == {"00000.tar": 3}


def test_cli_rejects_bad_num_samples_before_writing(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "demo", "--output-dir", str(tmp_path), "--num-samples", "0"])
    assert exit_info.value.code == 2
    assert "fastgen prepare demo: error: --num-samples must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


# --- raw media: what ImageWDSDataModule and VideoWDSDataModule read --------------------------------


def _hue_of_shape(pixels: np.ndarray) -> float:
    """The hue (0..1) of the brightest, most saturated pixels: the drawn shape's."""
    rgb = pixels.reshape(-1, 3).astype(np.float64) / 255
    saturation = rgb.max(1) - rgb.min(1)
    shape = rgb[saturation > np.quantile(saturation, 0.9)].mean(0)
    return colorsys.rgb_to_hsv(*shape)[0]


@pytest.mark.parametrize("kind", ["images", "videos"])
def test_media_shards_show_what_their_captions_say_and_load_in_their_datamodule(tmp_path, kind) -> None:
    shards = write_demo_media_shards(tmp_path / kind, kind, num_samples=8, samples_per_shard=4)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar"]
    assert json.loads((tmp_path / kind / "shard_counts.json").read_text()) == {"00000.tar": 4, "00001.tar": 4}
    suffix = "jpg" if kind == "images" else "mp4"
    members = _tar_members(shards[0])
    assert sorted(members) == sorted(f"{i:08d}.{s}" for i in range(4) for s in (suffix, "txt", "json"))
    hues = {"red": 0.0, "green": 1 / 3, "blue": 2 / 3, "yellow": 1 / 6}
    if kind == "images":
        dm = ImageWDSDataModule([f"WDS:{tmp_path / kind}"], batch_size=4, input_res=48, num_workers=0, shuffle=False,
                                normalize_on_device=False, index_dir=str(tmp_path / "index"))  # fmt: skip
    else:
        dm = VideoWDSDataModule([f"WDS:{tmp_path / kind}"], batch_size=4, sequence_length=VIDEO_FRAMES, img_size=MEDIA_SIZE,
                                decoder_type="full", backend="pyav", num_workers=0, shuffle=False,
                                normalize_on_device=False, index_dir=str(tmp_path / "index"))  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    seen = 0
    for batch in dm.train_dataloader():
        for caption, real in zip(batch["condition"], batch["real"]):
            frames = [real] if kind == "images" else [real[:, 0], real[:, -1]]  # a clip: its first and last frames
            colour = caption.split()[-2]
            for frame in frames:
                pixels = ((frame.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
                hue = _hue_of_shape(pixels)
                assert min(abs(hue - hues[colour]), 1 - abs(hue - hues[colour])) < 0.06, (caption, hue)
            if kind == "videos":
                assert not torch.equal(real[:, 0], real[:, -1])  # the shape moves
            seen += 1
    assert seen == 8


def test_media_shards_are_the_same_bytes_for_the_same_seed(tmp_path) -> None:
    for kind in ("images", "videos"):
        a = write_demo_media_shards(tmp_path / "a" / kind, kind, num_samples=6, seed=2)
        b = write_demo_media_shards(tmp_path / "b" / kind, kind, num_samples=6, seed=2)
        c = write_demo_media_shards(tmp_path / "c" / kind, kind, num_samples=6, seed=3)
        assert [x.read_bytes() for x in a] == [y.read_bytes() for y in b] != [z.read_bytes() for z in c]


def test_media_arguments_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="kind 'gifs' is unknown; use one of 'images', 'videos'"):
        write_demo_media_shards(tmp_path, "gifs")
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        write_demo_media_shards(tmp_path, "images", num_samples=0)


def test_a_write_killed_midway_leaves_no_commit_marker_so_the_next_run_rewrites(tmp_path, monkeypatch):
    import fastgen_dm.prepare.demo_wds as demo_wds
    from fastgen_dm.cli.main import main

    out = tmp_path / "data"
    args = ["prepare", "demo", "--output-dir", str(out), "--num-images", "8", "--num-samples", "8", "--num-media", "1"]
    assert main(args) == 0
    folder = out / "demo" / "wds" / "pair"
    complete = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_replace = demo_wds.os.replace

    def killed_after_the_first_shard(src, dst):
        if str(dst).endswith("00001.tar"):
            raise KeyboardInterrupt  # what a SIGTERM looks like to the writer; SIGKILL stops it right there
        real_replace(src, dst)

    monkeypatch.setattr(demo_wds.os, "replace", killed_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        demo_wds.write_demo_shards(folder, "pair", num_samples=8, samples_per_shard=4)
    assert not (folder / demo_wds.SHARD_COUNTS_FILE).exists()
    monkeypatch.setattr(demo_wds.os, "replace", real_replace)
    assert main(args) == 0  # the folder has no marker: written again, not taken for complete
    assert {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")} == complete
