"""Aspect-ratio buckets of raw images: sizes from headers, one bucket per step on every rank, exactly once, resume elsewhere."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import PIL.Image
import pytest
from helpers import RecordBuckets, fit_probe, flat, global_streams, write_wds
from lightning.pytorch.callbacks import ModelCheckpoint

from fastgen_dm.datamodules.images import ImageWDSDataModule
from fastgen_dm.index.build import SIZE_HEAD_BYTES, index_shard
from fastgen_dm.index.store import load_index, save_index
from fastgen_dm.storage import ByteCounter

# (width, height) of the images, skewed: most square, fewer wide, fewest tall
SHAPES = [(40, 40)] * 5 + [(80, 40)] * 3 + [(40, 80)] * 2
TARGETS = [[32, 32], [24, 48], [48, 24]]  # (height, width): square, wide, tall
SAMPLES_PER_SHARD, SHARDS = 30, 4


def jpeg(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    n = 0
    for s in range(SHARDS):
        samples = []
        for _ in range(SAMPLES_PER_SHARD):
            w, h = SHAPES[n % len(SHAPES)]
            samples.append({"__key__": f"{n:06d}", "jpg": jpeg(w, h, n), "txt": f"image {n} {w}x{h}".encode()})
            n += 1
        write_wds(root / f"{s:05d}.tar", samples)
    return root


def expected_bucket(key):
    w, h = SHAPES[int(str(key).rsplit("/", 1)[-1]) % len(SHAPES)]  # a key, or a probe id "<shard url>/<key>"
    return 0 if w == h else (1 if w > h else 2)


def make(root, tmp_path, **kwargs):
    dm = ImageWDSDataModule(
        datatags=[f"WDS:{root}"], input_res=32, index_dir=str(tmp_path / "index"),
        **{"num_workers": 0, "batch_size": 4, "buckets": TARGETS, **kwargs},
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_sizes_come_from_the_headers_only(tmp_path):
    # large noisy JPEGs: a size read must stop at the header, far short of the member
    samples = [{"__key__": f"{k:03d}", "jpg": jpeg(320 + 16 * k, 200, k)} for k in range(4)]
    url = write_wds(tmp_path / "big.tar", samples)
    plain, sized = ByteCounter(), ByteCounter()
    index_shard(url, counter=plain)
    index = index_shard(url, counter=sized, sizes_of="jpg")
    assert index.sizes.tolist() == [[320 + 16 * k, 200] for k in range(4)]
    assert sized.bytes_read - plain.bytes_read == 4 * SIZE_HEAD_BYTES  # one head per image, nothing else
    assert min(len(s["jpg"]) for s in samples) > 10 * SIZE_HEAD_BYTES

    save_index(str(tmp_path / "with.fgi"), [index])
    assert load_index(str(tmp_path / "with.fgi"))[url].sizes.tolist() == index.sizes.tolist()
    save_index(str(tmp_path / "without.fgi"), [index_shard(url)])  # an index without sizes still loads
    assert load_index(str(tmp_path / "without.fgi"))[url].sizes is None


@pytest.mark.parametrize("num_workers", [0, 1])
def test_every_batch_is_one_bucket_of_its_shape_and_drop_delivers_the_rest_once(shards, tmp_path, num_workers):
    dm = make(shards, tmp_path, num_workers=num_workers)
    plan = dm.train_stream.plan_for(0, 0).plan
    batches = list(dm.train_dataloader())
    keys = []
    for batch in batches:
        bucket = batch["bucket"]
        assert isinstance(bucket, int)
        assert list(batch["real"].shape) == [4, 3, *TARGETS[bucket]]
        assert {expected_bucket(k) for k in batch["fname"]} == {bucket}
        keys += batch["fname"]
    assert len(keys) == len(set(keys))  # no sample twice
    per_bucket = Counter(map(expected_bucket, range(SHARDS * SAMPLES_PER_SHARD)))  # 60 square, 36 wide, 24 tall
    assert Counter(map(expected_bucket, keys)) == {b: n // 4 * 4 for b, n in per_bucket.items()}
    assert len(keys) + plan.dropped_samples == SHARDS * SAMPLES_PER_SHARD  # the declared tail is all that is missing


def test_pad_fills_the_last_step_of_each_bucket(shards, tmp_path):
    dm = make(shards, tmp_path, batch_size=8, bucket_tail="pad")
    keys = [k for batch in dm.train_dataloader() for k in batch["fname"]]
    assert set(keys) == {f"{n:06d}" for n in range(SHARDS * SAMPLES_PER_SHARD)}  # nothing dropped
    assert len(keys) - len(set(keys)) == dm.train_stream.plan_for(0, 0).plan.padded_samples


def test_missing_sizes_are_one_line_naming_the_fix(shards, tmp_path):
    save_index(str(tmp_path / "index" / "plain.fgi"), [])  # make the folder
    dm = ImageWDSDataModule(datatags=[f"WDS:{shards}"], batch_size=4, input_res=32, index_dir=str(tmp_path / "index"), num_workers=0)
    dm.prepare_data()  # indexes without sizes: no buckets asked for
    with_buckets = ImageWDSDataModule(datatags=[f"WDS:{shards}"], batch_size=4, buckets=TARGETS, index_dir=str(tmp_path / "index"), num_workers=0)
    with pytest.raises(ValueError, match=r"^buckets need each sample's size.*run `fastgen index --sizes jpg WDS:") as err:
        with_buckets.setup("fit")
    assert "\n" not in str(err.value)


def test_ddp_ranks_share_each_steps_bucket_and_a_resume_on_one_gpu_loses_and_repeats_nothing(shards, tmp_path):
    def fit(record, devices, **kwargs):
        dm = ImageWDSDataModule(
            datatags=[f"WDS:{shards}"], batch_size=4, input_res=32, buckets=TARGETS, index_dir=str(tmp_path / "index"),
            num_workers=1, seed=3,
        )  # fmt: skip
        fit_probe(dm, record, devices, **{**kwargs, "callbacks": [RecordBuckets(record), *kwargs.get("callbacks", [])]})

    fit(tmp_path / "first", devices=2, max_steps=5, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5)])  # fmt: skip
    ranks = [(tmp_path / "first" / f"buckets{r}.jsonl").read_text().splitlines() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and ranks[0] == ranks[1]  # same bucket and shape at every step
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    fit(tmp_path / "second", devices=1, ckpt_path=str(ckpt))
    before, after = global_streams(tmp_path / "first"), global_streams(tmp_path / "second")
    epoch0 = flat(before[0]) + flat(after[0])
    assert len(epoch0) == len(set(epoch0))  # nothing repeated across the resume
    # nothing lost: only each bucket's rest (under 2 x 4 before the resume, under 4 after it) is left out
    per_bucket = Counter(map(expected_bucket, range(SHARDS * SAMPLES_PER_SHARD)))
    got = Counter(expected_bucket(k) for k in epoch0)
    assert all(0 <= per_bucket[b] - got[b] < 8 for b in per_bucket)
    for line in (tmp_path / "second" / "buckets0.jsonl").read_text().splitlines():
        _, _, bucket, shape = json.loads(line)
        assert shape == [4, 3, *TARGETS[bucket]]


def test_carry_moves_each_buckets_rest_into_the_next_epoch(shards, tmp_path):
    dm = make(shards, tmp_path, bucket_tail="carry", batch_size=7)  # 60, 36 and 24 samples: rests of 4, 1 and 3
    loader = dm.train_dataloader()
    epochs = []
    for _ in range(2):
        keys = []
        for batch in loader:
            dm.cursor.step()
            keys += batch["fname"]
        epochs.append(keys)
    assert len(epochs[0]) == len(set(epochs[0])) and len(epochs[0]) < SAMPLES_PER_SHARD * SHARDS  # the rests wait
    assert all(len(batch) for batch in epochs)  # and are taken in the next epoch, whole batches only


def test_show_draws_one_batch_per_bucket_from_cli_arguments(shards, tmp_path, capsys, monkeypatch):
    from fastgen_dm.cli.main import main

    monkeypatch.setenv("DATA_ROOT_DIR", str(tmp_path))  # where the DemoDataModule of the last call writes its zip
    out = tmp_path / "buckets.png"
    code = main([
        "show", "--data", "ImageWDSDataModule", "--data.datatags", json.dumps([f"WDS:{shards}"]),
        "--data.buckets", json.dumps(TARGETS), "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.index_dir", str(tmp_path / "index"), "--per-bucket", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "bucket 0: real [4, 3, 32, 32]" in printed and "bucket 1: real [4, 3, 24, 48]" in printed and "bucket 2: real [4, 3, 48, 24]" in printed
    assert PIL.Image.open(out).size[1] > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["show", "--data", "DemoDataModule", "--data.num_workers", "0", "--per-bucket", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "batches carry no bucket" in capsys.readouterr().err


def test_fastgen_index_sizes_writes_an_index_buckets_read(shards, tmp_path):
    import shutil

    from fastgen_dm.cli.main import main

    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    assert main(["index", "--sizes", "jpg", f"WDS:{folder}"]) == 0
    index = load_index(str(folder / "fastgen_index.fgi"))
    sizes = np.concatenate([shard.sizes for shard in index.values()])
    assert sorted(map(tuple, sizes.tolist())) == sorted(SHAPES * (SAMPLES_PER_SHARD * SHARDS // len(SHAPES)))
    dm = ImageWDSDataModule(datatags=[f"WDS:{folder}"], buckets=TARGETS, batch_size=4, num_workers=0)
    dm.setup("fit")  # no prepare_data: the location's own index has the sizes
    assert {batch["bucket"] for batch in dm.train_dataloader()} == {0, 1, 2}


def test_the_bucket_index_is_built_once_per_node_and_another_scheme_gets_its_own(shards, tmp_path, monkeypatch):
    first = make(shards, tmp_path)
    folders = sorted((tmp_path / "index").glob("buckets-*"))
    assert len(folders) == 1 and (folders[0] / "assignment.npy").stat().st_size < 200 + SHARDS * SAMPLES_PER_SHARD  # a byte a sample

    def no_assigning(*args, **kwargs):
        raise AssertionError("the node's bucket index was assigned again")

    monkeypatch.setattr("fastgen_dm.datamodules.webdataset.assign_buckets", no_assigning)
    again = make(shards, tmp_path)
    assert [b["fname"] for b in again.train_dataloader()] == [b["fname"] for b in first.train_dataloader()]
    monkeypatch.undo()
    make(shards, tmp_path, buckets=TARGETS[:2])
    assert len(list((tmp_path / "index").glob("buckets-*"))) == 2


def test_lightning_follows_each_epochs_own_length_when_carried_rests_change_it(shards, tmp_path):
    dm = make(shards, tmp_path, bucket_tail="carry", batch_size=7)  # 16 steps, then 17 with the rests carried in
    lengths = [dm.train_stream.plan_for(0, 0).num_steps]
    lengths.append(dm.train_stream.plan_for(1, 0).num_steps)
    assert lengths == [16, 17]
    fit_probe(dm, tmp_path / "records", devices=1)
    records = [json.loads(line) for line in (tmp_path / "records" / "rank0.jsonl").read_text().splitlines()]
    assert [sum(r["epoch"] == e for r in records) for e in (0, 1)] == lengths


def test_sizes_of_another_image_member_are_refused_with_the_command_to_rebuild(tmp_path):
    samples = [{"__key__": f"{k:03d}", "jpg": jpeg(40, 40, k), "mask.png": jpeg(80, 40, k), "txt": b"x"} for k in range(8)]
    (tmp_path / "two").mkdir()
    url = write_wds(tmp_path / "two" / "00000.tar", samples)
    save_index(str(tmp_path / "two" / "fastgen_index.fgi"), [index_shard(url, sizes_of="mask.png")])
    dm = ImageWDSDataModule(datatags=[f"WDS:{tmp_path / 'two'}"], batch_size=4, buckets=TARGETS, index_dir=str(tmp_path / "index"), num_workers=0)
    with pytest.raises(ValueError, match=r"holds the sizes of its 'mask.png' members, and these buckets need those of 'jpg'; run `fastgen index --sizes jpg WDS:"):
        dm.setup("fit")
