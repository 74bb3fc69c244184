"""FastGen's loader arguments on the DataModules: accepted, with FastGen's meaning, or a one-line error.

Also FastGen's filtering of samples that lack a ``key_map`` member, and its constants standing in
for missing members (``WDSLoader._preprocess``).
"""

import io
import logging
import re
import subprocess
import sys

import numpy as np
import pytest

from fastgen_dm.datamodules.image_folder import ImageFolderDataModule
from fastgen_dm.datamodules.latents import ImageLatentDataModule, PairDataModule
from fastgen_dm.datamodules.webdataset import WDSDataModule
from helpers import LATENT_SHARD_SAMPLES as NUM
from helpers import make_wds, random_images, write_wds, write_zip


def make(folder, tmp_path, cls=ImageLatentDataModule, **kwargs):
    return make_wds(folder, tmp_path, cls, **kwargs)


def npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_tar(path, samples):
    """``samples``: one ``{suffix: bytes}`` per sample, keyed ``000000``, ``000001``, ..."""
    write_wds(path, [{"__key__": f"{i:06d}", **members} for i, members in enumerate(samples)])


# --- every BaseWDSLoader argument constructs ----------------------------------------------------


FASTGEN_WDS_ARGS = {
    "num_workers": 0,
    "train": True,
    "cache_path": None,
    "deterministic": False,
    "sampler_start_idx": 0,
    "shard_count_file": None,
    "ignore_index_paths": None,
    "shard_start": 0,
    "shard_end": None,
    "shards_per_worker": None,
    "partial": False,
    "empty_check": True,
    "shuffle_size": 1000,
}


@pytest.mark.parametrize("cls", [WDSDataModule, ImageLatentDataModule, PairDataModule])
def test_every_base_wds_loader_argument_constructs(cls, tmp_path):
    dm = cls(datatags=[f"WDS:{tmp_path}"], batch_size=4, **FASTGEN_WDS_ARGS)
    assert dm.tail == "drop" and dm.shuffle_size == 1000


def test_pair_datamodule_takes_fastgen_pair_loader_config_shuffle_size(latent_shards, tmp_path):
    dm = PairDataModule([f"WDS:{latent_shards}"], batch_size=2, shuffle_size=100, key_map={"real": "latent.pth", "condition": "txt_emb.pth"})
    assert dm.shuffle_size == 100


# --- partial -> tail -----------------------------------------------------------------------------


@pytest.mark.parametrize(("partial", "tail", "steps", "last"), [(False, "drop", NUM // 16, 16), (True, "pad", NUM // 16 + 1, NUM % 16), (None, "pad", NUM // 16 + 1, NUM % 16)])
def test_partial_false_drops_the_incomplete_last_batch_and_true_delivers_it(latent_shards, tmp_path, partial, tail, steps, last):
    dm = make(latent_shards, tmp_path, cls=WDSDataModule, partial=partial, shuffle=False)
    assert dm.tail == tail
    sizes = [len(b["fname"]) for b in dm.train_dataloader()]
    assert len(sizes) == steps and sizes[-1] == last


def test_partial_and_a_disagreeing_tail_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=re.escape("partial=True means tail='pad' but tail='drop'; give one of partial and tail")):
        WDSDataModule([f"WDS:{tmp_path}"], partial=True, tail="drop")
    assert WDSDataModule([f"WDS:{tmp_path}"], partial=False, tail="drop").tail == "drop"


# --- shuffle_size -> blocks / shuffle_buffer_bytes ------------------------------------------------


def test_shuffle_size_sizes_the_blocks_so_a_batch_mixes_as_many_shards_as_that_buffer(latent_shards, tmp_path):
    blocks = {n: make(latent_shards, tmp_path, batch_size=16, shuffle_size=n).train_stream.block for n in (0, 10, 100, 1000, 10_000)}
    assert make(latent_shards, tmp_path, batch_size=16).train_stream.block == blocks[1000]  # FastGen's default buffer
    assert blocks[0] == 8  # no buffer to match: half a batch (read_block_bytes allows more)
    assert blocks[0] >= blocks[10] >= blocks[100] >= blocks[10_000] == 1  # a larger buffer mixes more shards
    assert make(latent_shards, tmp_path, shuffle_size=0).train_stream.interleave == 64  # interleave costs no request: unchanged


def test_shuffle_size_in_resampled_mode_sizes_the_buffer_by_the_mean_sample(tmp_path):
    folder = tmp_path / "even"
    folder.mkdir()
    member = npy(np.zeros(100, dtype=np.float32))
    write_tar(folder / "00000.tar", [{"latent.npy": member, "emb.npy": member}] * 20)
    dm = make(folder, tmp_path, cls=WDSDataModule, key_map={"real": "latent.npy", "condition": "emb.npy"}, resampled=True, shuffle_size=10)
    assert dm.train_stream.shuffle_buffer_bytes == 10 * 2 * len(member)  # 10 samples of 2 members


def test_shuffle_size_with_shuffle_buffer_bytes_is_a_one_line_error(tmp_path):
    message = "shuffle_size=100 sets shuffle_buffer_bytes; give one of shuffle_size and shuffle_buffer_bytes, not both"
    with pytest.raises(ValueError, match=re.escape(message)):
        WDSDataModule([f"WDS:{tmp_path}"], shuffle_size=100, shuffle_buffer_bytes=1 << 20)


# --- shards_per_worker, cache_path, empty_check --------------------------------------------------


def test_shards_per_worker_truncates_or_repeats_to_that_many_shards_per_worker(latent_shards, tmp_path):
    assert len(make(latent_shards, tmp_path, shards_per_worker=1, num_workers=2).train_stream.source.shards) == 2
    assert len(make(latent_shards, tmp_path, shards_per_worker=4, num_workers=2).train_stream.source.shards) == 8  # 5 repeated


def test_shards_per_worker_with_num_shards_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=re.escape("shards_per_worker=2 sets num_shards; give one of shards_per_worker and num_shards=3, not both")):
        WDSDataModule([f"WDS:{tmp_path}"], shards_per_worker=2, num_shards=3)


def test_cache_path_is_accepted_for_local_data_and_refused_for_remote_with_the_reason(tmp_path):
    assert WDSDataModule([f"WDS:{tmp_path}"], cache_path=str(tmp_path / "cache")).cache_path == str(tmp_path / "cache")
    with pytest.raises(ValueError, match=re.escape("cache_path='/c': shards are read by byte range, never copied whole, so there is nothing to cache for 'WDS:s3://b/x'; leave cache_path None")):
        WDSDataModule(["WDS:s3://b/x"], cache_path="/c")


@pytest.mark.parametrize("empty_check", [True, False])
def test_empty_check_either_way_delivers_every_sample_and_an_empty_dataset_still_fails(latent_shards, tmp_path, empty_check):
    dm = make(latent_shards, tmp_path, shards_per_worker=1, num_workers=2, empty_check=empty_check, shuffle=False)
    assert sum(len(b["fname"]) for b in dm.train_dataloader()) == 100  # 2 shards of 50


def test_fastgen_cli_flags_reach_the_datamodule(latent_shards, tmp_path):
    import lightning

    from fastgen_dm.cli.train import FastGenCLI
    from fastgen_dm.datamodules.base import PlannedDataModule

    args = [
        "--data", "WDSDataModule", "--data.datatags", f'["WDS:{latent_shards}"]',
        "--data.shards_per_worker", "4", "--data.partial", "true", "--data.shuffle_size", "100",
        "--data.cache_path", str(tmp_path), "--data.empty_check", "false",
    ]  # fmt: skip
    cli = FastGenCLI(lightning.LightningModule, PlannedDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False, args=args)
    dm = cli.datamodule
    assert (dm.shards_per_worker, dm.tail, dm.shuffle_size, dm.empty_check) == (4, "pad", 100, False)


# --- filtering and defaults ----------------------------------------------------------------------


def test_samples_missing_a_key_map_member_are_filtered_as_fastgen_does(tmp_path, caplog):
    folder = tmp_path / "odd"
    folder.mkdir()
    samples = [{"latent.npy": npy(np.full(2, i, dtype=np.float32)), **({} if i % 2 else {"emb.npy": npy(np.zeros(3, dtype=np.float32))})} for i in range(1200)]
    write_tar(folder / "00000.tar", samples)
    dm = make(folder, tmp_path, cls=WDSDataModule, key_map={"real": "latent.npy", "condition": "emb.npy"}, batch_size=32)
    with caplog.at_level(logging.INFO, logger="fastgen_dm.streams.shard_source"):
        keys = [k for batch in dm.train_dataloader() for k in batch["fname"]]
    assert sorted(keys) == [f"{i:06d}" for i in range(0, 1200, 2)]  # the 600 complete ones, none counted bad
    assert "epoch 0: 600 samples filtered out" in caplog.text


def test_a_constant_stands_in_for_a_missing_member_and_the_member_wins(tmp_path):
    folder = tmp_path / "captions"
    folder.mkdir()
    samples = [{"latent.npy": npy(np.zeros(2, dtype=np.float32)), **({"txt": f"caption {i}".encode()} if i % 2 else {})} for i in range(8)]
    write_tar(folder / "00000.tar", samples)
    dm = make(
        folder, tmp_path, cls=WDSDataModule, key_map={"real": "latent.npy", "condition": "txt"},
        presets_map={"condition": "empty_string"}, batch_size=8, shuffle=False,
    )  # fmt: skip
    (batch,) = list(dm.train_dataloader())
    assert batch["condition"] == ["" if i % 2 == 0 else f"caption {i}" for i in range(8)]


def test_a_files_map_tensor_stands_in_for_a_missing_member(tmp_path):
    folder = tmp_path / "emb"
    folder.mkdir()
    samples = [{"latent.npy": npy(np.zeros(2, dtype=np.float32)), **({"emb.npy": npy(np.ones(3, dtype=np.float32))} if i < 2 else {})} for i in range(4)]
    write_tar(folder / "00000.tar", samples)
    (folder / "null.npy").write_bytes(npy(np.full(3, -1, dtype=np.float32)))
    dm = make(folder, tmp_path, cls=WDSDataModule, key_map={"real": "latent.npy", "condition": "emb.npy"}, files_map={"condition": "null.npy"}, batch_size=4, shuffle=False)
    (batch,) = list(dm.train_dataloader())
    assert batch["condition"].tolist() == [[1.0] * 3] * 2 + [[-1.0] * 3] * 2


# --- ImageLoader ---------------------------------------------------------------------------------


def test_every_image_loader_argument_and_its_dataset_kwargs_construct(tmp_path):
    path = write_zip(tmp_path / "d.zip", random_images(40), labels=[i % 4 for i in range(40)])
    dm = ImageFolderDataModule(
        dataset_path=path, s3_path=None, batch_size=8, use_labels=True, cache=False, shuffle=True, sampler_start_idx=8,
        resolution=8, max_size=20, xflip=False, random_seed=3, use_pyspng=True, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.stream.num_samples == 20
    subset = set(dm.stream.raw_idx.tolist())
    other = ImageFolderDataModule(dataset_path=path, batch_size=8, max_size=20, random_seed=3, seed=9, num_workers=0)
    other.setup("fit")
    assert set(other.stream.raw_idx.tolist()) == subset  # random_seed picks the subset, seed only the order


# --- packaging -----------------------------------------------------------------------------------


NO_VIDEO_EXTRA = """
import importlib.util, sys

VIDEO = ("av", "torchcodec", "decord")
real_find_spec = importlib.util.find_spec


class NoVideo:  # as if the video extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in VIDEO:
            raise ModuleNotFoundError(name)


sys.meta_path.insert(0, NoVideo())
importlib.util.find_spec = lambda name, *args: None if name in VIDEO else real_find_spec(name, *args)
import fastgen_dm.cli.main, fastgen_dm.datamodules
from fastgen_dm.datamodules import VideoWDSDataModule

try:
    VideoWDSDataModule(["WDS:/nowhere"])
except ImportError as err:
    print(err)
"""


def test_the_package_imports_without_the_video_extra_and_a_video_backend_names_it():
    out = subprocess.run([sys.executable, "-c", NO_VIDEO_EXTRA], capture_output=True, text=True, check=True).stdout
    assert out.strip() == (
        "video backend 'torchcodec' needs the 'torchcodec' package, which is not installed; "
        "install the video extra: pip install 'fastgen-dm[video]'"
    )
