"""Latent shape buckets: shapes from the tensor files' headers, one bucket per step, crops never enlargements."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import RecordBuckets, fit_probe, flat, global_streams, write_wds

from fastgen_dm.datamodules.latents import ImageLatentDataModule, VideoLatentDataModule
from fastgen_dm.format.tensor_header import tensor_shape
from fastgen_dm.index.build import index_shard
from fastgen_dm.index.store import load_index, save_index
from fastgen_dm.storage import ByteCounter

# latent (C, H, W): most square, some wide, a few larger squares (cropped), one too small (bad data)
SHAPES = [(4, 32, 32)] * 5 + [(4, 24, 48)] * 3 + [(4, 40, 40)] + [(4, 16, 16)]
TARGETS = [[32, 32], [24, 48]]
SAMPLES_PER_SHARD, SHARDS = 20, 3


def saved(tensor) -> bytes:
    out = io.BytesIO()
    torch.save(tensor, out)
    return out.getvalue()


def shape_of(key) -> tuple[int, ...]:
    return SHAPES[int(key) % len(SHAPES)]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent_buckets")
    n = 0
    for s in range(SHARDS):
        samples = []
        for _ in range(SAMPLES_PER_SHARD):
            latent = torch.full(shape_of(n), float(n)) + torch.arange(shape_of(n)[-1]).float() / 100  # columns tell a crop
            samples.append({"__key__": f"{n:06d}", "latent.pth": saved(latent), "txt_emb.pth": saved(torch.zeros(8, 16))})
            n += 1
        write_wds(root / f"{s:05d}.tar", samples)
    return root


def test_the_index_records_latent_shapes_reading_a_header_a_member(latents, tmp_path):
    url = str(latents / "00000.tar")
    plain, sized = ByteCounter(), ByteCounter()
    index_shard(url, counter=plain)
    index = index_shard(url, counter=sized, sizes_of="latent.pth")
    assert index.sizes.tolist() == [[shape_of(k)[2], shape_of(k)[1], 0] for k in range(SAMPLES_PER_SHARD)]
    latent_bytes = sum(len(saved(torch.zeros(shape_of(k)))) for k in range(SAMPLES_PER_SHARD))
    assert sized.bytes_read - plain.bytes_read == SAMPLES_PER_SHARD * 4096 < latent_bytes / 4  # one head a latent
    save_index(str(tmp_path / "i.fgi"), [index])
    assert load_index(str(tmp_path / "i.fgi"))[url].sizes.tolist() == index.sizes.tolist()  # three columns round trip


def make(cls, root, tmp_path, **kwargs):
    dm = cls(datatags=[f"WDS:{root}"], index_dir=str(tmp_path / "index"), **{"num_workers": 0, "batch_size": 4, "buckets": TARGETS, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_batch_is_one_bucket_cropped_to_its_shape_and_a_too_small_latent_is_bad_data(latents, tmp_path, num_workers):
    dm = make(ImageLatentDataModule, latents, tmp_path, num_workers=num_workers, max_skip_fraction=0.2)
    keys = []
    for batch in dm.train_dataloader():
        bucket = batch["bucket"]
        assert list(batch["real"].shape[1:]) == [4, *TARGETS[bucket]] and len(batch["real"]) <= 4  # a bad latent shrinks its batch
        for key, latent in zip(batch["fname"], batch["real"]):
            c, h, w = shape_of(key)
            assert (h, w) != (16, 16)  # smaller than every bucket: never delivered
            left = (w - TARGETS[bucket][1]) // 2
            assert latent[0, 0, 0].item() == pytest.approx(int(key) + left / 100)  # the center, not a resize
        keys += batch["fname"]
    assert len(keys) == len(set(keys))
    wide = 3 * SAMPLES_PER_SHARD * SHARDS // len(SHAPES)
    assert Counter(shape_of(k)[1] == 24 for k in keys)[True] == wide // 4 * 4  # the wide ones, whole batches
    assert dm.bad_data_totals()[1] > 0  # the 16 x 16 latents were counted


def test_video_latents_take_the_first_frames_of_their_bucket(tmp_path):
    samples = [
        {"__key__": f"{k:04d}", "latent.pth": saved(torch.arange(t).float().view(1, t, 1, 1).expand(2, t, 8, 8).clone()), "txt_emb.pth": saved(torch.zeros(3))}
        for k, t in enumerate([5, 9, 5, 9, 9, 5, 9, 5] * 2)
    ]
    (tmp_path / "v").mkdir()
    write_wds(tmp_path / "v" / "00000.tar", samples)
    dm = make(VideoLatentDataModule, tmp_path / "v", tmp_path, buckets=[[8, 8, 4], [8, 8, 8]], batch_size=2)
    frames = Counter()
    for batch in dm.train_dataloader():
        t = [4, 8][batch["bucket"]]
        assert list(batch["real"].shape) == [2, 2, t, 8, 8] and batch["real"][:, 0, :, 0, 0].tolist() == [list(range(t))] * 2
        frames[t] += 2
    assert frames == {4: 8, 8: 8}
    assert make(VideoLatentDataModule, tmp_path / "v", tmp_path, buckets="shapes", batch_size=2).bucket_targets.tolist() == [[8, 8, 5], [8, 8, 9]]


def test_latent_bucket_arguments_are_one_line_errors(latents, tmp_path):
    cases = [
        (lambda: ImageLatentDataModule(datatags=["WDS:x"], buckets=[[8, 8, 4]]), "buckets=[[8, 8, 4]]: give [[height, width], ...] (each >= 1)"),
        (lambda: ImageLatentDataModule(datatags=["WDS:x"], buckets={"ratios": 3, "pixels": 64}), "buckets={'ratios': 3, 'pixels': 64}: give [[height, width], ...] (each >= 1)"),
        (lambda: ImageLatentDataModule(datatags=["WDS:x"], buckets=[[8, 8]], bucket_tail="cut"), "bucket_tail='cut' is unknown; use one of ('drop', 'pad', 'carry')"),
        (lambda: ImageLatentDataModule(datatags=["WDS:x"], buckets=[[8, 8]], resampled=True), "buckets plan an exact epoch of one dataset: leave streams, resampled and sampler_start_idx unset with buckets"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            call()
    plain = ImageLatentDataModule(datatags=[f"WDS:{latents}"], batch_size=4, num_workers=0, index_dir=str(tmp_path / "index"))
    plain.prepare_data()  # an index without sizes
    with pytest.raises(ValueError, match=r"^buckets need each sample's size.*run `fastgen index --sizes latent.pth WDS:"):
        make(ImageLatentDataModule, latents, tmp_path)


def test_two_ddp_ranks_take_each_step_from_one_latent_bucket_cut_to_its_shape(tmp_path):
    # (C, T, H, W) video latents: square and long, square and short, wide
    shapes = [(2, 9, 8, 8), (2, 5, 8, 8), (2, 5, 6, 12)]
    targets = [[8, 8, 8], [8, 8, 4], [6, 12, 4]]
    samples = [
        {"__key__": f"{k:04d}", "latent.pth": saved(torch.full(shapes[k % 3], float(k))), "txt_emb.pth": saved(torch.zeros(3))}
        for k in range(36)
    ]
    (tmp_path / "v").mkdir()
    write_wds(tmp_path / "v" / "00000.tar", samples)
    dm = VideoLatentDataModule(
        datatags=[f"WDS:{tmp_path / 'v'}"], batch_size=2, buckets=targets, index_dir=str(tmp_path / "index"), num_workers=1, seed=5,
    )  # fmt: skip
    fit_probe(dm, tmp_path / "run", devices=2, callbacks=[RecordBuckets(tmp_path / "run")])  # two epochs
    ranks = [[json.loads(line) for line in (tmp_path / "run" / f"buckets{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 9  # 12 latents a bucket: 3 global steps of 2 x 2 each
    for step0, step1 in zip(*ranks):
        assert step0 == step1  # the same bucket and shape on both ranks at every step
        height, width, frames = targets[step0[2]]
        assert step0[3] == [2, 2, frames, height, width]
    assert Counter(step[2] for step in ranks[0]) == {0: 6, 1: 6, 2: 6}
    for steps in global_streams(tmp_path / "run").values():
        assert len(set(flat(steps))) == len(flat(steps)) == 36  # each latent once an epoch


def test_fastgen_index_sizes_latent_pth_then_show_draws_one_batch_per_latent_bucket(latents, tmp_path, capsys):
    import shutil

    from fastgen_dm.cli.main import main

    folder = tmp_path / "latents"
    shutil.copytree(latents, folder)
    assert main(["index", "--sizes", "latent.pth", f"WDS:{folder}"]) == 0
    assert {s.sizes_of for s in load_index(str(folder / "fastgen_index.fgi")).values()} == {"latent.pth"}
    out = tmp_path / "buckets.png"
    code = main([
        "show", "--data", "ImageLatentDataModule", "--data.datatags", json.dumps([f"WDS:{folder}"]), "--data.buckets", json.dumps(TARGETS),
        "--data.batch_size", "4", "--data.num_workers", "0", "--data.index_dir", str(tmp_path / "index"), "--per-bucket", "--out", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "bucket 0: real [4, 4, 32, 32]" in printed and "bucket 1: real [4, 4, 24, 48]" in printed and out.stat().st_size > 0


def test_a_header_claiming_a_size_past_int32_is_unknown_not_an_error(tmp_path):
    real = io.BytesIO()
    np.save(real, np.zeros((4, 5, 6), np.float16))
    claims = real.getvalue().replace(b"'shape': (4, 5, 6), ", b"'shape': (4, 5, 3000000000), ")  # a header lying about its data
    assert tensor_shape(claims, "npy") == (4, 5, 3000000000)
    write_wds(tmp_path / "00000.tar", [{"__key__": "a", "latent.npy": claims}, {"__key__": "b", "latent.npy": real.getvalue()}])
    assert index_shard(str(tmp_path / "00000.tar"), sizes_of="latent.npy").sizes.tolist() == [[0, 0, 0], [6, 5, 0]]


def test_shapes_buckets_are_the_shapes_the_index_holds_found_once_per_node(latents, tmp_path, monkeypatch):
    dm = make(ImageLatentDataModule, latents, tmp_path, buckets="shapes")
    assert dm.bucket_targets.tolist() == [[16, 16], [24, 48], [32, 32], [40, 40]]
    keys = []
    for batch in dm.train_dataloader():
        assert list(batch["real"].shape) == [4, 4, *dm.bucket_targets[batch["bucket"]]]  # each latent whole, none bad
        keys += batch["fname"]
    per_shape = Counter(shape_of(k) for k in range(SAMPLES_PER_SHARD * SHARDS))
    assert len(keys) == len(set(keys)) == sum(n // 4 * 4 for n in per_shape.values())
    assert len(list((tmp_path / "index").glob("shapes-*.json"))) == 1

    def no_scan(*args, **kwargs):
        raise AssertionError("the node's shapes were looked for again")

    monkeypatch.setattr(np, "unique", no_scan)
    assert make(ImageLatentDataModule, latents, tmp_path, buckets="shapes").bucket_targets.tolist() == dm.bucket_targets.tolist()
