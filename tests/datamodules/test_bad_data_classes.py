"""Bad data, as classes: the schema comes from the majority, non-finite values on request, the
ceiling over the whole run, and readers that lose whole batches still step with the others."""

import io

import numpy as np
import pytest
import torch

from helpers import corrupt_member, make_wds, random_images, write_wds

from fastgen_dm.datamodules.image_folder import ImageFolderDataModule
from fastgen_dm.datamodules.webdataset import WDSDataModule
from fastgen_dm.read import TooManyBadSamplesError

KEY_MAP = {"real": "latent.npy"}


def npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def latent_shard(folder, n, odd=(), odd_value=None):
    folder.mkdir(exist_ok=True)
    samples = []
    for k in range(n):
        value = odd_value(k) if k in odd else np.full((2, 4, 4), k, np.float32)
        samples.append({"__key__": f"{k:05d}", "latent.npy": value if isinstance(value, bytes) else npy(value)})
    write_wds(folder / "00000.tar", samples)
    return folder


def delivered(dm):
    return [k for b in dm.train_dataloader() for k in b["fname"]]


@pytest.mark.parametrize("where", [0, 7, 48])
def test_one_odd_dtype_among_good_samples_is_the_one_counted_wherever_it_is(tmp_path, where):
    folder = latent_shard(tmp_path / "d", 49, odd={where}, odd_value=lambda k: np.zeros((2, 4, 4), np.float64))
    dm = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=49, shuffle=False, max_skip_fraction=0.05)
    keys = delivered(dm)
    assert len(keys) == 48 and f"{where:05d}" not in keys
    assert dm.bad_data_totals() == (49, 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_bad_data_when_checked(tmp_path, bad):
    folder = latent_shard(tmp_path / "d", 20, odd={3, 11}, odd_value=lambda k: np.full((2, 4, 4), bad, np.float32))
    unchecked = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=5, shuffle=False)
    assert len(delivered(unchecked)) == 20
    checked = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=5, shuffle=False, check_finite=True, max_skip_fraction=0.5)
    assert sorted(set(f"{k:05d}" for k in range(20)) - set(delivered(checked))) == ["00003", "00011"]


def test_the_ceiling_holds_over_the_whole_run_not_per_epoch_or_worker(tmp_path):
    """2% bad under a 1% ceiling: the first epoch fits the grace, the second passes the ceiling."""
    folder = latent_shard(tmp_path / "d", 500, odd=set(range(0, 500, 50)), odd_value=lambda k: np.zeros((3,), np.int8))
    dm = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=25, num_workers=2, max_skip_fraction=0.01)
    loader = dm.train_dataloader()
    assert len([k for b in loader for k in b["fname"]]) == 490  # 10 of 500 <= 1% of the 1,000-sample grace
    dm.cursor.epoch, dm.cursor.position = 1, 0
    with pytest.raises(TooManyBadSamplesError, match=r"samples were bad \(max_skip_fraction=0.01\) over this GPU's run so far"):
        list(loader)


def test_a_resumed_run_keeps_the_run_totals(tmp_path):
    folder = latent_shard(tmp_path / "d", 500, odd=set(range(0, 500, 50)), odd_value=lambda k: np.zeros((3,), np.int8))
    first = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=25, max_skip_fraction=0.01)
    list(first.train_dataloader())
    state = {**first.state_dict(), "epoch": 1, "position": 0}
    assert (state["seen"], state["skipped"]) == (500, 10)
    resumed = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=25, max_skip_fraction=0.01)
    resumed.load_state_dict(state)
    with pytest.raises(TooManyBadSamplesError, match=r"^1[1-9] of \d+ samples were bad"):
        list(resumed.train_dataloader())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_worker_whose_first_batches_are_all_bad_still_yields_one_batch_each(tmp_path, num_workers):
    folder = latent_shard(tmp_path / "d", 40, odd=set(range(8)), odd_value=lambda k: b"not an npy file")
    dm = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=4, shuffle=False, num_workers=num_workers, max_skip_fraction=0.5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 10  # the plan's count: the lost batches are stood in for
    assert set(f"{k:05d}" for k in range(8, 40)) == {k for b in batches for k in b["fname"]}


def test_an_all_bad_batch_of_a_zip_keeps_the_epoch_and_its_position(make_zip, tmp_path):
    path = make_zip(random_images(20, size=4))
    for i in range(5, 10):
        corrupt_member(path, f"00000/img{i:08d}.png")
    dm = ImageFolderDataModule(path, batch_size=5, num_workers=0, shuffle=False, max_skip_fraction=0.5)
    dm.setup("fit")
    for epoch in range(3):
        batches = list(dm.train_dataloader())
        assert len(batches) == 4  # every epoch the plan's 4 steps, the lost one stood in for
        assert sorted({int(i) for b in batches for i in b["idx"]}) == [*range(5), *range(10, 20)]
        for _ in batches:
            dm.cursor.step()
        assert dm.state_dict()["epoch"] == epoch + 1 and dm.state_dict()["position"] == 0


def test_counts_that_claim_more_than_a_shard_holds_are_said_once_and_each_missing_sample_counted(tmp_path, caplog):
    folder = latent_shard(tmp_path / "d", 10)
    (folder / "counts.json").write_text('{"00000.tar": 14}')
    dm = make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=7, shard_count_file="counts.json", max_skip_fraction=0.5)
    assert len(delivered(dm)) == 10
    assert dm.bad_data_totals() == (14, 4)
    assert caplog.text.count("holds 10 samples but the plan counts 14") == 1
    assert all(f"skipping bad sample #{k}" in caplog.text for k in range(10, 14))


def test_a_reused_index_of_a_damaged_shard_says_so_on_every_run(tmp_path, caplog):
    folder = latent_shard(tmp_path / "d", 20)
    shard = folder / "00000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 2 // 3])
    for run in range(2):  # the first run indexes (prepare_data), the second reuses that index
        caplog.clear()
        make_wds(folder, tmp_path, WDSDataModule, key_map=KEY_MAP, batch_size=2)
        assert "is damaged at byte" in caplog.text and "the rest are lost" in caplog.text, run
