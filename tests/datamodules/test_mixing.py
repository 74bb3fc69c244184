"""Mixed streams: declared proportions per step, each stream once per pass, exact resume on any world size."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import fit_probe, flat, global_streams
from lightning.pytorch.callbacks import ModelCheckpoint

from fastgen_dm.datamodules.latents import ImageLatentDataModule
from fastgen_dm.prepare.demo_wds import write_demo_shards

REPO = Path(__file__).resolve().parents[2]
SIZES = {"a": 230, "b": 90}


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for name, n in SIZES.items():
        write_demo_shards(root / name, "image_latent", num_samples=n, samples_per_shard=50)
    return root


def make(root, tmp_path, weights=(3, 1), **kwargs):
    streams = [{"datatags": [f"WDS:{root}/{name}"], "weight": w} for name, w in zip(SIZES, weights)]
    dm = ImageLatentDataModule(streams=streams, batch_size=16, index_dir=str(tmp_path / "index"), **{"num_workers": 0, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def ids_of(batch):
    return [f"{url}/{key}" for url, key in zip(batch["shard"], batch["fname"])]


def dataset_of(sample_id: str) -> str:
    return Path(sample_id.split(".tar/")[0]).parent.name


def test_every_batch_holds_the_declared_shares_and_each_stream_is_read_once_per_pass(two_datasets, tmp_path):
    loader = make(two_datasets, tmp_path, num_workers=2).train_dataloader()
    batches = [ids_of(b) for b in loader]
    assert len(batches) == len(loader)
    for batch in batches[:-1]:
        share = Counter(map(dataset_of, batch))
        assert abs(share["a"] - 12) <= 1 and abs(share["b"] - 4) <= 1  # 3:1 of 16, within 2 x 1/2 sample
    ids = flat(batches)
    assert len(ids) == len(set(ids))  # no sample twice in the pass
    assert Counter(map(dataset_of, ids))["a"] == SIZES["a"]  # the first stream to run out ends the epoch


def test_a_total_epoch_runs_the_smaller_stream_into_its_next_pass(two_datasets, tmp_path):
    dm = make(two_datasets, tmp_path, weights=(1, 1), epoch_end="total", epoch_samples=320)
    ids = [i for b in dm.train_dataloader() for i in ids_of(b)]
    per = Counter(map(dataset_of, ids))
    assert per == {"a": 160, "b": 160}
    b_ids = [i for i in ids if dataset_of(i) == "b"]
    assert len(set(b_ids[:90])) == 90 and len(set(b_ids[90:])) == 70  # pass 0 whole, then pass 1 begins


def test_ddp_two_by_two_resumed_mid_epoch_on_one_gpu_continues_every_stream(two_datasets, tmp_path):
    def fit(record, devices, **kwargs):
        dm = ImageLatentDataModule(
            streams=[{"datatags": [f"WDS:{two_datasets}/{n}"], "weight": w} for n, w in zip(SIZES, (3, 1))],
            batch_size=8, num_workers=2, index_dir=str(tmp_path / "index"), seed=2,
        )  # fmt: skip
        fit_probe(dm, record, devices, **kwargs)

    fit(tmp_path / "reference", devices=2)
    reference = global_streams(tmp_path / "reference")
    fit(tmp_path / "first", devices=2, max_steps=5, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5)])  # fmt: skip
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    fit(tmp_path / "second", devices=1, ckpt_path=str(ckpt))
    before, after = global_streams(tmp_path / "first"), global_streams(tmp_path / "second")
    for epoch in (0, 1):
        got = flat(before.get(epoch, [])) + flat(after[epoch])
        want = flat(reference[epoch])
        # the same order; 2 GPUs may pad the last step with one repeated sample, 1 GPU needs none
        assert got == want[: len(got)] and len(want) - len(got) <= 1 and set(want[len(got) :]) <= set(got)


def test_new_weights_on_resume_keep_every_streams_position(two_datasets, tmp_path):
    dm = make(two_datasets, tmp_path)
    loader = dm.train_dataloader()
    taken = []
    for batch in loader:
        dm.cursor.step()
        taken += ids_of(batch)
        if len(taken) == 64:
            break
    state = dm.state_dict()
    again = make(two_datasets, tmp_path, weights=(1, 1))
    again.load_state_dict(state)
    rest = [i for b in again.train_dataloader() for i in ids_of(b)]
    assert not set(taken) & set(rest)  # nothing drawn again in the pass
    first_b = [i for i in rest if dataset_of(i) == "b"][:8]
    assert abs(sum(dataset_of(i) == "b" for i in rest[:32]) - 16) <= 1  # the new 1:1 applies at once
    assert first_b


def test_stream_declarations_are_checked(two_datasets, tmp_path):
    with pytest.raises(ValueError, match="give datatags or streams, not both"):
        ImageLatentDataModule(datatags=["WDS:x"], streams=[{"datatags": ["WDS:y"], "weight": 1}])
    with pytest.raises(ValueError, match=r"streams\[0\] = .*exactly one of 'weight', 'proportion' or 'repeat'"):
        ImageLatentDataModule(streams=[{"datatags": ["WDS:y"], "weight": 1, "repeat": 2}])
    with pytest.raises(ValueError, match="epoch_end='total' needs epoch_samples"):
        make(two_datasets, tmp_path, epoch_end="total")


def test_the_mix_config_parses():
    result = subprocess.run([sys.executable, "-m", "fastgen_dm.cli.main", "fit", "--config", str(REPO / "configs" / "mix.yaml"), "--print_config"],
                            capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.dumps("weight")[1:-1] in result.stdout


def test_a_stream_with_its_own_member_names_mixes_in_under_the_same_keys(two_datasets, tmp_path):
    import tarfile

    renamed = tmp_path / "renamed"  # dataset b, its latents stored as .vae.pth
    renamed.mkdir()
    for shard in sorted((two_datasets / "b").glob("*.tar")):
        with tarfile.open(shard) as src, tarfile.open(renamed / shard.name, "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member)
                member.name = member.name.replace(".latent.pth", ".vae.pth")
                dst.addfile(member, data)
    own = {"datatags": [f"WDS:{renamed}"], "weight": 1, "key_map": {"real": "vae.pth", "condition": "txt_emb.pth"}}
    dm = ImageLatentDataModule(streams=[{"datatags": [f"WDS:{two_datasets}/a"], "weight": 3}, own], batch_size=16, num_workers=0, index_dir=str(tmp_path / "index"))
    dm.prepare_data()
    batches = list(dm.train_dataloader())
    assert {dataset_of(i) for b in batches for i in ids_of(b)} == {"a", "renamed"}
    assert all(set(b) == set(batches[0]) and b["real"].shape[1:] == batches[0]["real"].shape[1:] for b in batches)
    with pytest.raises(ValueError, match=r"^streams\[1\].key_map \{'real': 'vae.pth'\} must map the same outputs as key_map"):
        ImageLatentDataModule(streams=[{"datatags": [f"WDS:{two_datasets}/a"], "weight": 3}, {**own, "key_map": {"real": "vae.pth"}}], batch_size=16)
    plain = ImageLatentDataModule(streams=[{"datatags": [f"WDS:{two_datasets}/a"], "weight": 3}, {k: v for k, v in own.items() if k != "key_map"}], batch_size=16, num_workers=0, index_dir=str(tmp_path / "index"))
    with pytest.raises(ValueError, match=r"^key_map: no sample of the 2 shards checked has \['latent.pth'\]"):
        plain.setup("fit")  # the stream's members are named otherwise: said at setup
