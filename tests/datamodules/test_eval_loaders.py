"""Validation, test and predict loaders: one unshuffled pass, every item exactly once across ranks."""

import pytest

from fastgen_dm import ImageFolderDataModule
from fastgen_dm.datamodules.latents import ImageLatentDataModule
from fastgen_dm.prepare import write_demo_zip
from fastgen_dm.prepare.demo_wds import write_demo_shards


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory):
    return str(write_demo_zip(tmp_path_factory.mktemp("zip") / "demo.zip", num_images=50, num_classes=4))


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    """Training shards of 50 samples and validation shards of 30, indexed."""
    folder = tmp_path_factory.mktemp("wds")
    write_demo_shards(folder / "train", "image_latent", num_samples=50, samples_per_shard=20)
    write_demo_shards(folder / "val", "image_latent", num_samples=30, samples_per_shard=20, seed=1)
    ImageLatentDataModule([f"WDS:{folder / 'train'}"], val_datatags=[f"WDS:{folder / 'val'}"], index_dir=str(folder / "index")).prepare_data()
    return folder


def ranks_items(make_dm, loader, key, world_size=2):
    """Per rank, the items ``loader`` of a fresh DataModule yields when placed as that rank of ``world_size``."""
    per_rank = []
    for rank in range(world_size):
        dm = make_dm()
        dm.placement = lambda rank=rank: (rank, world_size)
        per_rank.append([item for batch in getattr(dm, loader)() for item in key(batch)])
    return per_rank


def zip_idx(batch):
    return batch["idx"].tolist()


def wds_key(batch):
    return list(zip(batch["shard"], batch["fname"]))


def test_val_fraction_holds_out_a_seeded_share_read_once(zip_path):
    dm = ImageFolderDataModule(zip_path, batch_size=8, num_workers=2, val_fraction=0.2, xflip=True)
    val = [i for b in dm.val_dataloader() for i in zip_idx(b)]
    train = [i for b in dm.train_dataloader() for i in zip_idx(b)]
    assert len(val) == 10 and val == sorted(set(val))  # once each, unshuffled
    assert not set(val) & set(train) and set(val) | set(train) == set(range(50))
    assert [i for b in dm.test_dataloader() for i in zip_idx(b)] == val
    assert [i for b in dm.predict_dataloader() for i in zip_idx(b)] == val
    again = ImageFolderDataModule(zip_path, batch_size=8, num_workers=0, val_fraction=0.2, seed=7)
    assert [i for b in again.val_dataloader() for i in zip_idx(b)] == val  # the split ignores the shuffle seed


@pytest.mark.parametrize("loader", ["val_dataloader", "test_dataloader"])
def test_every_held_out_item_once_across_ranks(zip_path, loader):
    make = lambda: ImageFolderDataModule(zip_path, batch_size=4, num_workers=2, val_fraction=0.3)  # noqa: E731
    per_rank = ranks_items(make, loader, zip_idx)
    everything = sorted(i for items in per_rank for i in items)
    assert len(everything) == 15 and everything == sorted(set(everything))


def test_without_a_validation_set_validation_is_empty_and_test_reads_the_training_items_once(zip_path):
    dm = ImageFolderDataModule(zip_path, batch_size=8, num_workers=0, xflip=True, max_size=40)
    assert dm.val_dataloader() == []
    items = [i for b in dm.predict_dataloader() for i in zip_idx(b)]
    assert items == sorted(set(items)) and len(items) == 40  # no mirrors
    per_rank = ranks_items(lambda: ImageFolderDataModule(zip_path, batch_size=8, num_workers=2), "test_dataloader", zip_idx, world_size=3)
    assert sorted(i for items in per_rank for i in items) == list(range(50))


def test_val_dataset_path_is_read_once(zip_path, tmp_path):
    other = str(write_demo_zip(tmp_path / "val.zip", num_images=13, num_classes=4, seed=3))
    dm = ImageFolderDataModule(zip_path, batch_size=4, num_workers=0, val_dataset_path=other)
    assert [i for b in dm.val_dataloader() for i in zip_idx(b)] == list(range(13))
    assert [i for b in dm.test_dataloader() for i in zip_idx(b)] == list(range(13))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"val_fraction": 0.1, "val_dataset_path": "x.zip"}, "val_fraction=0.1 and val_dataset_path both give a validation set; give one of them"),
    ],
)
def test_bad_validation_arguments_are_one_line_errors(zip_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(zip_path, **kwargs)


def test_a_missing_val_dataset_path_names_it(zip_path, tmp_path):
    dm = ImageFolderDataModule(zip_path, num_workers=0, val_dataset_path=str(tmp_path / "nope.zip"))
    with pytest.raises(FileNotFoundError, match="val_dataset_path .*nope.zip' does not exist"):
        dm.setup("validate")


@pytest.mark.parametrize("resampled", [False, True])
def test_wds_test_and_predict_read_the_training_shards_once_without_val_datatags(wds, resampled):
    def make():
        return ImageLatentDataModule([f"WDS:{wds / 'train'}"], batch_size=8, num_workers=2, resampled=resampled, index_dir=str(wds / "index"))

    dm = make()
    dm.setup("test")
    assert dm.val_dataloader() == []
    for loader in ("test_dataloader", "predict_dataloader"):
        per_rank = ranks_items(make, loader, wds_key) if not resampled else [[k for b in getattr(dm, loader)() for k in wds_key(b)]]
        keys = [k for items in per_rank for k in items]
        assert len(keys) == 50 and len(set(keys)) == 50


def test_wds_test_and_predict_read_val_datatags_once(wds):
    def make():
        return ImageLatentDataModule(
            [f"WDS:{wds / 'train'}"], val_datatags=[f"WDS:{wds / 'val'}"], batch_size=8, num_workers=2, index_dir=str(wds / "index")
        )

    for loader in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        keys = [k for items in ranks_items(make, loader, wds_key) for k in items]
        assert len(keys) == 30 and len(set(keys)) == 30 and all("/val/" in shard for shard, _ in keys)

