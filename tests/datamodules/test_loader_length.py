"""Loaders have a length, workers persist across epochs, and resume stays exact with both."""

from __future__ import annotations

import lightning
import pytest
import torch
from helpers import DestroyProcessGroup, make_wds
from helpers import LATENT_SHARD_SAMPLES as NUM

from fastgen_dm import ImageFolderDataModule
from fastgen_dm.datamodules.latents import ImageLatentDataModule

NUM_ITEMS = 300  # the demo_zip fixture


def ids_of(batches):
    return [int(i) for b in batches for i in b["idx"]]


def consume(loader, cursor, steps=None):
    """Iterate as Lightning's training loop does: the cursor steps for each batch taken."""
    taken = []
    for batch in loader:
        cursor.step()
        taken.append(batch["idx"].tolist())
        if steps is not None and len(taken) == steps:
            break
    return taken


@pytest.mark.parametrize("tail, batches", [("pad", 19), ("drop", 18)])
def test_zip_length_is_the_epochs_batches(demo_zip, tail, batches):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, tail=tail)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == batches == len(list(loader)) == loader.remaining()


def test_wds_length_is_the_epochs_batches(latent_shards, tmp_path):
    loader = make_wds(latent_shards, tmp_path, ImageLatentDataModule, num_workers=2).train_dataloader()
    assert len(loader) == -(-NUM // 16) == len(list(loader))


def test_after_a_resume_on_fewer_gpus_the_length_is_the_epochs_and_an_iteration_yields_the_rest(demo_zip):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, seed=1)
    dm.setup("fit")
    # a checkpoint of 2 GPUs after 3 steps: 3 x 2 x 16 samples of epoch 0 consumed
    dm.load_state_dict({"epoch": 0, "position": 96, "seed": 1})
    loader = dm.train_dataloader()
    assert len(loader) == 19  # the epoch on 1 GPU
    assert loader.remaining() == 13  # (300 - 96) / 16, rounded up
    rest = consume(loader, dm.cursor)
    assert len(rest) == 13 and (dm.cursor.epoch, dm.cursor.position) == (1, 0)
    assert len(loader) == loader.remaining() == 19 == len(consume(loader, dm.cursor))


def test_workers_persist_across_epochs_and_a_broken_off_epoch_resumes_exactly(demo_zip):
    reference = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0, seed=2)
    reference.setup("fit")
    expected = [consume(reference.train_dataloader(), reference.cursor) for _ in range(2)]

    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=2, seed=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    head = consume(loader, dm.cursor, steps=5)  # e.g. max_steps or a validation break
    pids = [w.pid for w in loader._iterator._workers]
    tail = consume(loader, dm.cursor)
    assert head + tail == expected[0]
    assert consume(loader, dm.cursor) == expected[1]
    assert [w.pid for w in loader._iterator._workers] == pids  # the same worker processes throughout


def test_persistent_workers_can_be_turned_off_and_options_reach_the_dataloader(demo_zip):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=2, persistent_workers=False, prefetch_factor=3, multiprocessing_context="spawn")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert not loader.persistent_workers and loader.prefetch_factor == 3
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert len(ids_of(loader)) == NUM_ITEMS
    with pytest.raises(ValueError, match="prefetch_factor must be at least 1"):
        ImageFolderDataModule(demo_zip, batch_size=16, prefetch_factor=0)


def test_resampled_mode_has_a_length_only_when_an_epoch_is_declared(latent_shards, tmp_path):
    endless = make_wds(latent_shards, tmp_path, ImageLatentDataModule, resampled=True, shuffle_buffer_bytes=1 << 14).train_dataloader()
    with pytest.raises(TypeError, match="epoch_samples"):
        len(endless)
    dm = make_wds(latent_shards, tmp_path, ImageLatentDataModule, resampled=True, epoch_samples=100, num_workers=2, shuffle_buffer_bytes=1 << 14)
    loader = dm.train_dataloader()
    assert len(loader) == 6  # 100 samples in whole batches of 16
    assert [len(b["fname"]) for b in loader] == [16] * 6
    with pytest.raises(ValueError, match="epoch_samples=100 declares an epoch of resampled mode"):
        make_wds(latent_shards, tmp_path, ImageLatentDataModule, epoch_samples=100)


class OneCycleModel(lightning.LightningModule):
    """OneCycleLR sized by ``estimated_stepping_batches``: one step too many raises in the scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return (self.weight - batch["real"].float().mean()) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def trainer(**kwargs) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[DestroyProcessGroup()], **kwargs,
    )  # fmt: skip


def test_one_cycle_schedules_and_fractional_validation_work(demo_zip):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=2, val_fraction=0.1)
    model = OneCycleModel()
    run = trainer(val_check_interval=0.5, num_sanity_val_steps=0)
    run.fit(model, datamodule=dm)
    assert run.num_training_batches == 17  # 270 training items in batches of 16
    assert run.global_step == run.estimated_stepping_batches == 34
    assert model.validations == 4  # twice per epoch


def test_limit_train_batches_takes_a_fraction_of_the_epoch(demo_zip):
    dm = ImageFolderDataModule(demo_zip, batch_size=16, num_workers=0)
    run = trainer(limit_train_batches=0.5, limit_val_batches=0)
    run.fit(OneCycleModel(), datamodule=dm)
    assert run.num_training_batches == 9 and run.global_step == 18
