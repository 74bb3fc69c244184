"""The EDM zip family: batches, exactly once over workers, cache, flips, subsets, state."""

import io
import json
import re
import zipfile

import numpy as np
import pytest
import torch
from helpers import corrupt_member, random_images

from fastgen_dm import CIFAR10DataModule, ImageFolderDataModule, ImageNet256DataModule
from fastgen_dm.prepare import EDMZipWriter


def collect(dm, key="idx"):
    return [b for b in dm.train_dataloader()]


def test_batch_dictionary_layout(demo_zip):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"real", "condition", "neg_condition", "idx"}
    assert batch["real"].shape == (16, 3, 32, 32) and batch["real"].dtype == torch.float32
    assert -1.0 <= batch["real"].min() and batch["real"].max() <= 1.0
    assert batch["condition"].shape == (16, 4) and (batch["condition"].sum(1) == 1).all()
    assert torch.equal(batch["neg_condition"], torch.zeros(16, 4))
    assert batch["idx"].dtype == torch.int64


def test_pixels_and_labels_match_the_zip(make_zip):
    images = random_images(20, size=8)
    labels = [k % 3 for k in range(20)]
    dm = ImageFolderDataModule(make_zip(images, labels), batch_size=5, num_workers=0, shuffle=False)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        for real, cond, i in zip(batch["real"], batch["condition"], batch["idx"].tolist()):
            expected = torch.from_numpy(images[i]).permute(2, 0, 1).float() / 127.5 - 1
            assert torch.equal(real, expected)
            assert cond.argmax().item() == labels[i]


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_every_item_once_per_epoch_in_plan_order(demo_zip, num_workers):
    dm = ImageFolderDataModule(demo_zip, batch_size=32, num_workers=num_workers, seed=7)
    dm.setup("fit")
    ids = torch.cat([b["idx"] for b in dm.train_dataloader()]).tolist()
    assert sorted(ids) == list(range(300))
    reference = ImageFolderDataModule(demo_zip, batch_size=32, num_workers=0, seed=7)
    reference.setup("fit")
    assert ids == torch.cat([b["idx"] for b in reference.train_dataloader()]).tolist()


def test_cache_gives_identical_batches(demo_zip, tmp_path):
    plain = ImageFolderDataModule(demo_zip, batch_size=64, num_workers=0)
    cached = ImageFolderDataModule(demo_zip, batch_size=64, num_workers=0, cache=True, cache_dir=str(tmp_path))
    cached.prepare_data()
    assert len(list(tmp_path.glob("*.npy"))) == 1
    plain.setup("fit")
    cached.setup("fit")
    for a, b in zip(plain.train_dataloader(), cached.train_dataloader(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_with_a_cache_batches_are_sliced_in_the_training_process_and_workers_build_the_store(demo_zip, tmp_path, monkeypatch, caplog):
    import fastgen_dm.datamodules.image_folder as image_folder

    builds = []
    real_build = image_folder.build_cache
    monkeypatch.setattr(image_folder, "build_cache", lambda *args, **kwargs: builds.append(kwargs) or real_build(*args, **kwargs))
    with caplog.at_level("INFO", logger="fastgen_dm.datamodules.image_folder"):
        dm = ImageFolderDataModule(demo_zip, batch_size=64, num_workers=2, cache=True, cache_dir=str(tmp_path))
    assert "num_workers=2 would only add a hand-off per batch" in caplog.text
    dm.prepare_data()
    assert builds and builds[0]["num_workers"] == 2  # the store is decoded by 2 workers
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 0
    assert sorted(torch.cat([b["idx"] for b in loader]).tolist()) == list(range(300))


def test_xflip_doubles_the_epoch_with_mirrored_copies(make_zip):
    images = random_images(4, size=6)
    dm = ImageFolderDataModule(make_zip(images), batch_size=8, num_workers=0, xflip=True, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["idx"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert torch.equal(batch["real"][4], batch["real"][0].flip(-1))
    assert batch["condition"].shape == (8, 0)


def test_max_size_takes_edms_seeded_subset(make_zip):
    dm = ImageFolderDataModule(make_zip(random_images(50, size=4)), batch_size=100, num_workers=0, max_size=10, seed=3)
    dm.setup("fit")
    ids = sorted(next(iter(dm.train_dataloader()))["idx"].tolist())
    expected = np.arange(50)
    np.random.RandomState(3).shuffle(expected)
    assert ids == sorted(expected[:10].tolist())


def test_latents_are_delivered_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((8, 4, 4)).astype(np.float32) for _ in range(6)]
    with EDMZipWriter(tmp_path / "lat.zip", member_prefix="img-mean-std") as writer:
        for k, a in enumerate(arrays):
            writer.add_array(a, k % 2)
    dm = ImageNet256DataModule(str(tmp_path / "lat.zip"), batch_size=6, num_workers=0, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["real"].dtype == torch.float32
    assert torch.equal(batch["real"], torch.from_numpy(np.stack(arrays)))


def test_normalize_on_device_is_bit_identical(demo_zip):
    cpu = ImageFolderDataModule(demo_zip, batch_size=32, num_workers=0)
    dev = ImageFolderDataModule(demo_zip, batch_size=32, num_workers=0, normalize_on_device=True)
    cpu.setup("fit")
    dev.setup("fit")
    a = next(iter(cpu.train_dataloader()))
    raw = next(iter(dev.train_dataloader()))
    assert raw["real"].dtype == torch.uint8
    b = dev.on_after_batch_transfer(raw, 0)
    assert torch.equal(a["real"], b["real"])


def test_sampler_start_idx_starts_mid_stream(demo_zip):
    full = ImageFolderDataModule(demo_zip, batch_size=10, num_workers=0, seed=1)
    full.setup("fit")
    stream = torch.cat([b["idx"] for b in full.train_dataloader()]).tolist()
    late = ImageFolderDataModule(demo_zip, batch_size=10, num_workers=0, seed=1, sampler_start_idx=300 + 40)
    late.setup("fit")
    assert late.cursor.state_dict() == {"epoch": 1, "position": 40}
    late.cursor.epoch = 0  # same epoch as `full`, to compare orders
    assert torch.cat([b["idx"] for b in late.train_dataloader()]).tolist() == stream[40:]


def test_state_dict_round_trip_resumes_the_stream(demo_zip):
    dm = ImageFolderDataModule(demo_zip, batch_size=10, num_workers=0, seed=2)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    seen = []
    for _ in range(5):
        seen += next(loader)["idx"].tolist()
        dm.cursor.step()  # what the training loop does for each consumed batch
    state = dm.state_dict()
    assert state == {"epoch": 0, "position": 50, "seed": 2, "seen": 50, "skipped": 0}  # the bad-data ceiling spans the run
    resumed = ImageFolderDataModule(demo_zip, batch_size=10, num_workers=2, seed=2)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    rest = torch.cat([b["idx"] for b in resumed.train_dataloader()]).tolist()
    assert sorted(seen + rest) == list(range(300))


def test_named_family_defaults_resolve_under_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_ROOT_DIR", str(tmp_path))
    dm = CIFAR10DataModule()
    assert dm.dataset_path == str(tmp_path / "cifar10" / "cifar10-32x32.zip")
    assert dm.batch_size == 128 and dm.resolution == 32
    with pytest.raises(FileNotFoundError, match=re.escape("does not exist; pass s3_path to fetch it, or create it with `fastgen prepare`")):
        dm.setup("fit")


def test_s3_path_is_fetched_once_in_prepare_data(demo_zip, tmp_path):
    dest = tmp_path / "copy" / "data.zip"
    dm = ImageFolderDataModule(str(dest), s3_path=f"file://{demo_zip}", batch_size=8, num_workers=0)
    dm.prepare_data()
    assert dest.read_bytes() == open(demo_zip, "rb").read()
    assert [p.name for p in dest.parent.iterdir()] == ["data.zip"]


# -- bad input -----------------------------------------------------------------------------


def test_not_a_zip_names_the_file(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"not a zip at all")
    dm = ImageFolderDataModule(str(path), batch_size=4)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a zip file")):
        dm.setup("fit")


def test_zip_without_images(tmp_path):
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match=re.escape(f"{path} holds no images or .npy arrays (1 other members)")):
        ImageFolderDataModule(str(path), batch_size=4).setup("fit")


def test_missing_labels_are_reported(tmp_path, make_zip):
    path = make_zip(random_images(3, size=4), labels=[0, 1, 2])
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["dataset.json"] = b'{"labels": [["00000/img00000000.png", 0]]}'
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match=re.escape("dataset.json has no label for 2 of 3 items")):
        ImageFolderDataModule(path, batch_size=4).setup("fit")


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png"])
def test_member_names_escaping_the_folder_are_refused(tmp_path, name):
    path = tmp_path / "evil.zip"
    buf = io.BytesIO()
    import PIL.Image

    PIL.Image.new("RGB", (4, 4)).save(buf, format="png")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(name, buf.getvalue())
    with pytest.raises(ValueError, match="escapes the dataset folder"):
        ImageFolderDataModule(str(path), batch_size=4).setup("fit")


def test_wrong_resolution_is_an_error_at_setup(demo_zip):
    with pytest.raises(ValueError, match=re.escape("holds 32x32 items but resolution=64")):
        ImageFolderDataModule(demo_zip, batch_size=4, resolution=64).setup("fit")


def test_a_corrupt_png_is_a_clear_error_with_no_tolerance(make_zip):
    """The default ceiling (0.01, as for shards) skips one bad PNG; 0 stops at the first, naming it."""
    path = make_zip(random_images(10, size=4))
    corrupt_member(path, "00000/img00000003.png")
    dm = ImageFolderDataModule(path, batch_size=5, num_workers=0, shuffle=False, max_skip_fraction=0.0)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=re.escape("last: 00000/img00000003.png in")):
        list(dm.train_dataloader())


def test_a_corrupt_png_is_skipped_and_counted_under_a_ceiling(make_zip, caplog):
    path = make_zip(random_images(10, size=4))
    corrupt_member(path, "00000/img00000003.png")
    dm = ImageFolderDataModule(path, batch_size=5, num_workers=0, shuffle=False, max_skip_fraction=0.01)
    dm.setup("fit")
    ids = torch.cat([b["idx"] for b in dm.train_dataloader()]).tolist()
    assert ids == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert "skipping bad sample 00000/img00000003.png" in caplog.text


def test_a_corrupt_png_stops_the_cache_build_naming_it(make_zip, tmp_path):
    path = make_zip(random_images(10, size=4))
    corrupt_member(path, "00000/img00000003.png")
    dm = ImageFolderDataModule(path, batch_size=5, num_workers=0, cache=True, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=re.escape("cannot decode 00000/img00000003.png")):
        dm.prepare_data()
    assert not list((tmp_path / "c").glob("*"))  # no partial store left behind


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skipped_items_are_written_out_and_the_next_run_ignores_them(make_zip, tmp_path, num_workers):
    path = make_zip(random_images(12, size=4), name="bad.zip")
    for member in ("00000/img00000003.png", "00000/img00000010.png"):
        corrupt_member(path, member)
    first = ImageFolderDataModule(path, batch_size=4, num_workers=num_workers, max_skip_fraction=0.5,
                                  skipped_index_dir=str(tmp_path / "skipped"))  # fmt: skip
    assert sorted(torch.cat([b["idx"] for b in first.train_dataloader()]).tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 11]
    written = sorted(tmp_path.glob("skipped/skipped-epoch0-rank0-worker*.json"))
    assert written and all(json.loads(p.read_text()).keys() == {"bad.zip"} for p in written)
    # the next run, with max_skip_fraction=0: the ignored items are never read, so nothing is bad
    second = ImageFolderDataModule(path, batch_size=4, num_workers=num_workers, ignore_index_paths=[str(p) for p in written])
    second.setup("fit")
    assert second.stream.num_samples == 10
    assert sorted(torch.cat([b["idx"] for b in second.train_dataloader()]).tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 11]


def test_the_cache_leaves_ignored_items_out_and_is_not_shared_with_runs_that_read_them(make_zip, tmp_path):
    path = make_zip(random_images(10, size=4), name="bad.zip")
    corrupt_member(path, "00000/img00000003.png")
    ignore = tmp_path / "ignore.json"
    ignore.write_text(json.dumps({"bad.zip": ["00000/img00000003.png"]}))
    dm = ImageFolderDataModule(path, batch_size=3, num_workers=0, cache=True, cache_dir=str(tmp_path / "c"),
                               ignore_index_paths=[str(ignore)])  # fmt: skip
    dm.prepare_data()
    assert sorted(torch.cat([b["idx"] for b in dm.train_dataloader()]).tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    without = ImageFolderDataModule(path, batch_size=3, num_workers=0, cache=True, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=re.escape("cannot decode 00000/img00000003.png")):
        without.prepare_data()  # its own store: the first one's zeros are not served for item 3


def test_ignore_index_paths_that_name_nothing_here_warn_and_one_that_names_everything_is_an_error(make_zip, tmp_path, caplog):
    path = make_zip(random_images(3, size=4), name="small.zip")
    ignore = tmp_path / "ignore.json"
    ignore.write_text(json.dumps({"small.zip": ["00000/img00000099.png"], "other.zip": ["00000/img00000000.png"]}))
    dm = ImageFolderDataModule(path, batch_size=3, num_workers=0, ignore_index_paths=[str(ignore)])
    dm.setup("fit")
    assert dm.stream.num_samples == 3 and "name 1 members that" in caplog.text
    ignore.write_text(json.dumps({"small.zip": [f"00000/img0000000{i}.png" for i in range(3)]}))
    with pytest.raises(ValueError, match="every item is in ignore_index_paths"):
        ImageFolderDataModule(path, batch_size=3, ignore_index_paths=[str(ignore)]).setup("fit")


def test_mixed_shapes_are_reported_with_the_member(make_zip):
    images = random_images(4, size=4) + random_images(1, size=6)
    path = make_zip(images[:4])
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    import PIL.Image

    PIL.Image.fromarray(images[4]).save(buf, format="png")
    members["00000/img00000002.png"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    dm = ImageFolderDataModule(path, batch_size=4, num_workers=0, max_skip_fraction=0.0)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=re.escape("item is uint8[3, 6, 6]; the dataset is uint8[3, 4, 4]")):
        list(dm.train_dataloader())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"tail": "wrap"}, "tail 'wrap' is unknown; use 'pad' or 'drop'"),
        ({"max_size": 0}, "max_size must be >= 1 or None (all items), got 0"),
        ({"max_skip_fraction": 2.0}, "max_skip_fraction must be in [0, 1], got 2.0"),
    ],
)
def test_bad_arguments_fail_at_construction(demo_zip, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageFolderDataModule(demo_zip, **{"batch_size": 4, **kwargs})


def test_image_folder_needs_a_path():
    with pytest.raises(ValueError, match=re.escape("ImageFolderDataModule needs dataset_path")):
        ImageFolderDataModule()
