"""Through a real Trainer: DDP (gloo, ddp_spawn) with workers, and mid-epoch resume from a checkpoint."""

import pytest
from helpers import fit_probe, flat, global_streams
from lightning.pytorch.callbacks import ModelCheckpoint

from fastgen_dm import ImageFolderDataModule

NUM_ITEMS = 300  # the demo_zip fixture


def fit(demo_zip, record_dir, devices, ckpt_path=None, callbacks=(), **trainer_kwargs):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=2, seed=3)
    fit_probe(dm, record_dir, devices, ckpt_path, callbacks, **trainer_kwargs)


@pytest.fixture(scope="module")
def reference(demo_zip, tmp_path_factory):
    """An uninterrupted 2-epoch run on 2 ranks x 2 workers."""
    record = tmp_path_factory.mktemp("reference")
    fit(demo_zip, record, devices=2)
    return global_streams(record)


def test_ddp_delivers_every_item_once_per_epoch_with_equal_batches(reference):
    assert sorted(reference) == [0, 1]
    for epoch, steps in reference.items():
        ids = flat(steps)
        assert len(steps) == 10  # 9 full steps of 2x16, then a last step of 2x6
        assert sorted(set(ids)) == list(range(NUM_ITEMS))
        assert len(ids) == NUM_ITEMS  # 300 = 9 * 32 + 12 splits evenly: no padding needed
    assert flat(reference[0]) != flat(reference[1])  # a new permutation each epoch


@pytest.mark.parametrize("resume_devices", [2, 1])
def test_mid_epoch_resume_continues_the_same_stream(demo_zip, tmp_path, reference, resume_devices):
    first, second = tmp_path / "first", tmp_path / "second"
    checkpoints = tmp_path / "ckpt"
    fit(
        demo_zip,
        first,
        devices=2,
        max_steps=4,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=4, save_top_k=-1)],
    )
    (ckpt,) = checkpoints.glob("*.ckpt")
    fit(demo_zip, second, devices=resume_devices, ckpt_path=str(ckpt))
    before, after = global_streams(first), global_streams(second)
    assert len(before[0]) == 4
    assert flat(before[0]) + flat(after[0]) == flat(reference[0])
    assert flat(after[1]) == flat(reference[1])
