"""WebDataset shards through a real Trainer: DDP (gloo, ddp_spawn) x workers, mid-epoch resume."""

import pytest
from helpers import fit_probe, flat, global_streams
from lightning.pytorch.callbacks import ModelCheckpoint

from fastgen_dm.datamodules.latents import ImageLatentDataModule
from fastgen_dm.prepare import write_demo_shards

NUM = 190  # 3 shards: 80, 80, 30


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latents")
    write_demo_shards(folder, "image_latent", num_samples=NUM, samples_per_shard=80)
    dm = ImageLatentDataModule([f"WDS:{folder}"], index_dir=str(folder / "index"))
    dm.prepare_data()  # once, as a node's local rank 0 would
    return folder


def fit(folder, record_dir, devices, ckpt_path=None, callbacks=(), **trainer_kwargs):
    dm = ImageLatentDataModule([f"WDS:{folder}"], batch_size=8, num_workers=2, seed=5, index_dir=str(folder / "index"))
    fit_probe(dm, record_dir, devices, ckpt_path, callbacks, **trainer_kwargs)


def names(ids):
    return [i.rsplit("/", 2)[-2] + "/" + i.rsplit("/", 1)[-1] for i in ids]


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    record = tmp_path_factory.mktemp("reference")
    fit(shards, record, devices=2)
    return global_streams(record)


def test_ddp_delivers_every_sample_once_per_epoch(reference):
    for steps in reference.values():
        ids = names(flat(steps))
        assert len(steps) == 12  # 190 = 11 * 16 + 14: 11 full steps, then 7 + 7
        assert len(ids) == len(set(ids)) == NUM
    assert flat(reference[0]) != flat(reference[1])


@pytest.mark.parametrize("resume_devices", [1])
def test_mid_epoch_resume_on_another_world_size_continues_the_stream(shards, tmp_path, reference, resume_devices):
    first, second, checkpoints = tmp_path / "first", tmp_path / "second", tmp_path / "ckpt"
    fit(shards, first, devices=2, max_steps=5, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=5, save_top_k=-1)])  # fmt: skip
    (ckpt,) = checkpoints.glob("*.ckpt")
    fit(shards, second, devices=resume_devices, ckpt_path=str(ckpt))
    before, after = global_streams(first), global_streams(second)
    assert flat(before[0]) + flat(after[0]) == flat(reference[0])
    assert flat(after[1]) == flat(reference[1])
