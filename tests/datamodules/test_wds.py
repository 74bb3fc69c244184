"""The WebDataset family: exactly once, read once, counts and offsets, ignore index, bad shards, resume."""

import json
import re
import tarfile

import pytest
import torch

import fastgen_dm.read.shard_reader as read_wds
from fastgen_dm.datamodules.latents import ImageLatentDataModule, PairDataModule, PathDataModule, VideoLatentDataModule
from fastgen_dm.datamodules.webdataset import WDSDataModule
from fastgen_dm.prepare.demo_wds import write_demo_shards
from helpers import LATENT_SHARD_SAMPLES as NUM
from helpers import make_wds


def make(folder, tmp_path, cls=ImageLatentDataModule, **kwargs):
    return make_wds(folder, tmp_path, cls, **kwargs)


def ids_of(loader):
    return [f"{s.rsplit('/', 1)[-1]}/{k}" for b in loader for s, k in zip(b["shard"], b["fname"])]


def test_batch_layout(latent_shards, tmp_path):
    batch = next(iter(make(latent_shards, tmp_path).train_dataloader()))
    assert set(batch) >= {"fname", "shard", "real", "condition", "neg_condition"}
    assert batch["real"].shape == (16, 4, 32, 32) and batch["real"].dtype == torch.float32
    assert batch["condition"].shape == (16, 8, 32)
    assert batch["neg_condition"].shape == (16, 8, 32)
    assert len(batch["fname"]) == len(batch["shard"]) == 16


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_sample_once_per_epoch_in_the_same_order_for_any_worker_count(latent_shards, tmp_path, num_workers):
    ids = ids_of(make(latent_shards, tmp_path, num_workers=num_workers, seed=4).train_dataloader())
    assert len(ids) == NUM == len(set(ids))
    assert ids == ids_of(make(latent_shards, tmp_path, num_workers=0, seed=4).train_dataloader())


def test_each_sample_byte_range_is_read_once_and_nothing_else(latent_shards, tmp_path, monkeypatch):
    reads = []
    real_fetch = read_wds.ShardReader._fetch

    def spy(self, runs):
        reads.extend((run.shard.url, run.start, run.end) for run in runs)
        return real_fetch(self, runs)

    dm = make(latent_shards, tmp_path)
    monkeypatch.setattr(read_wds.ShardReader, "_fetch", spy)  # the epoch only (setup reads a few samples to check key_map)
    list(dm.train_dataloader())
    by_shard = {}
    for url, start, end in reads:
        by_shard.setdefault(url, []).append((start, end))
    samples = {s.url: s.index for s in dm.train_stream.source.shards}
    for url, runs in by_shard.items():
        runs.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(runs, runs[1:]))  # no byte read twice
        covered = sum(((samples[url].starts >= start) & (samples[url].ends <= end)).sum() for start, end in runs)
        assert covered == samples[url].count  # every sample's bytes inside exactly one request
    assert len(reads) < NUM  # requests serve several neighbouring samples
    sample_bytes = sum(end - start for _, start, end in reads)
    shard_bytes = sum(p.stat().st_size for p in latent_shards.glob("*.tar"))
    assert sample_bytes <= shard_bytes  # tar padding and end blocks are never read


def test_prepare_data_indexes_local_shards_and_a_count_file_alone_also_works(latent_shards, tmp_path):
    indexed = make(latent_shards, tmp_path)
    assert list((tmp_path / "index").glob("*.fgi"))
    assert all(s.index is not None for s in indexed.train_stream.source.shards)
    counted = ImageLatentDataModule(
        [f"WDS:{latent_shards}"], batch_size=16, num_workers=0, shard_count_file="shard_counts.json", index_dir=str(tmp_path / "none")
    )
    counted.setup("fit")  # no prepare_data: counts from the file, offsets found by each reader
    assert all(s.index is None for s in counted.train_stream.source.shards)
    assert sorted(ids_of(counted.train_dataloader())) == sorted(ids_of(indexed.train_dataloader()))


def test_two_datatags_with_the_same_shard_names_are_different_shards(tmp_path):
    for name in ("a", "b"):
        write_demo_shards(tmp_path / name, "pair", num_samples=20, samples_per_shard=10)
    dm = PairDataModule([f"WDS:{tmp_path / 'a'}", f"WDS:{tmp_path / 'b'}"], batch_size=8, num_workers=0, index_dir=str(tmp_path / "i"))
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["fname"]) for b in batches) == 40
    assert {"noise", "real", "condition"} <= set(batches[0])


def test_ignore_index_removes_samples_and_counts(latent_shards, tmp_path):
    ignore = tmp_path / "ignore.json"
    ignore.write_text(json.dumps({"00000.tar": ["00000003", "00000007"], "00004.tar": ["00000229"]}))
    dm = make(latent_shards, tmp_path, ignore_index_paths=[str(ignore)])
    assert dm.train_stream.num_samples == NUM - 3
    ids = ids_of(dm.train_dataloader())
    assert len(ids) == NUM - 3 and "00000.tar/00000003" not in ids and "00004.tar/00000229" not in ids


def test_validation_reads_every_sample_once_unshuffled(latent_shards, tmp_path):
    dm = make(latent_shards, tmp_path, val_datatags=[f"WDS:{latent_shards}"])
    ids = ids_of(dm.val_dataloader())
    assert ids == sorted(ids) and len(ids) == NUM


def test_resume_from_state_dict_continues_the_stream(latent_shards, tmp_path):
    dm = make(latent_shards, tmp_path, seed=9)
    loader = iter(dm.train_dataloader())
    seen = []
    for _ in range(4):
        batch = next(loader)
        seen += [f"{s}/{k}" for s, k in zip(batch["shard"], batch["fname"])]
        dm.cursor.step()
    resumed = make(latent_shards, tmp_path, seed=9, num_workers=2)
    resumed.load_state_dict(dm.state_dict())
    rest = [f"{s}/{k}" for b in resumed.train_dataloader() for s, k in zip(b["shard"], b["fname"])]
    full = [f"{s}/{k}" for b in make(latent_shards, tmp_path, seed=9).train_dataloader() for s, k in zip(b["shard"], b["fname"])]
    assert seen + rest == full


def test_resampled_mode_streams_endlessly_and_is_seeded(latent_shards, tmp_path):
    def first(n, seed):
        loader = iter(make(latent_shards, tmp_path, resampled=True, seed=seed, shuffle_buffer_bytes=1 << 16).train_dataloader())
        return [k for _ in range(n) for k in next(loader)["fname"]]

    a = first(20, seed=1)  # 320 samples > 230: it keeps going
    assert len(a) == 320 and a == first(20, seed=1) and a != first(20, seed=2)


@pytest.mark.parametrize("cls", [VideoLatentDataModule, PathDataModule])
def test_other_families_deliver_their_members(tmp_path, cls):
    kind = {VideoLatentDataModule: "video_latent", PathDataModule: "path"}[cls]
    write_demo_shards(tmp_path / kind, kind, num_samples=12, samples_per_shard=5)
    batch = next(iter(make(tmp_path / kind, tmp_path, cls=cls, batch_size=2).train_dataloader()))
    if cls is VideoLatentDataModule:
        assert batch["real"].shape == (2, 16, 5, 8, 8)
    else:
        assert batch["path"].shape[:2] == (2, 4)


# -- bad data and bad configuration ---------------------------------------------------------


def copy_truncated(src, dst, cut):
    dst.mkdir()
    for file in sorted(src.iterdir()):
        (dst / file.name).write_bytes(file.read_bytes())
    victim = dst / "00001.tar"
    victim.write_bytes(victim.read_bytes()[:cut])
    return dst


def test_a_truncated_shard_is_skipped_counted_and_written_out(latent_shards, tmp_path, caplog):
    folder = copy_truncated(latent_shards, tmp_path / "broken", cut=200_000)
    dm = ImageLatentDataModule(
        [f"WDS:{folder}"], batch_size=16, num_workers=0, shard_count_file="shard_counts.json",
        index_dir=str(tmp_path / "none"), max_skip_fraction=0.5, skipped_index_dir=str(tmp_path / "skipped"),
    )  # fmt: skip
    dm.setup("fit")
    ids = ids_of(dm.train_dataloader())
    assert NUM - 50 < len(ids) < NUM
    (written,) = (tmp_path / "skipped").glob("*.json")
    skipped = json.loads(written.read_text())
    assert list(skipped) == ["00001.tar"] and len(skipped["00001.tar"]) == NUM - len(ids)
    assert "skipping bad sample" in caplog.text and "00001.tar" in caplog.text
    # the written file is an ignore index: the next run skips those samples up front
    again = make(folder, tmp_path, shard_count_file="shard_counts.json", ignore_index_paths=[str(written)], max_skip_fraction=0.0)
    assert again.train_stream.num_samples == len(ids)


def test_too_many_bad_samples_is_a_clear_error(latent_shards, tmp_path):
    folder = copy_truncated(latent_shards, tmp_path / "broken", cut=100_000)
    dm = ImageLatentDataModule([f"WDS:{folder}"], batch_size=16, num_workers=0, shard_count_file="shard_counts.json", index_dir=str(tmp_path / "n"))
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=r"samples were bad \(max_skip_fraction=0.01\)"):
        list(dm.train_dataloader())


def test_undecodable_member_is_bad_data_not_a_crash(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    import io

    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i in range(10):
            for suffix, data in (("latent.pth", b"garbage" if i == 3 else None), ("txt_emb.pth", None)):
                if data is None:
                    buf = io.BytesIO()
                    torch.save(torch.zeros(2), buf)
                    data = buf.getvalue()
                info = tarfile.TarInfo(f"{i:04d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    dm = make(folder, tmp_path, batch_size=10, max_skip_fraction=0.5)
    (batch,) = list(dm.train_dataloader())
    assert len(batch["fname"]) == 9 and "0003" not in batch["fname"]


def test_a_key_missing_from_the_shards_fails_at_setup(latent_shards, tmp_path):
    with pytest.raises(ValueError, match=re.escape("key_map: no sample of")):
        make(latent_shards, tmp_path, key_map={"real": "latent.npy"})


@pytest.mark.parametrize(
    ("tag", "error", "message"),
    [
        ("s3:/nope", ValueError, "datatag 's3:/nope' is malformed"),
        ("WDS:/definitely/not/here", FileNotFoundError, "datatag 'WDS:/definitely/not/here': /definitely/not/here does not exist"),
    ],
)
def test_bad_datatags_name_the_tag(tag, error, message, tmp_path):
    with pytest.raises(error, match=re.escape(message)):
        dm = WDSDataModule([tag], num_workers=0, index_dir=str(tmp_path))
        dm.prepare_data()
        dm.setup("fit")


def test_an_empty_folder_names_the_tag(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape("holds no .tar shards")):
        make(tmp_path / "empty", tmp_path)


def test_remote_data_without_counts_says_how_to_index(latent_shards, tmp_path, monkeypatch):
    dm = ImageLatentDataModule([f"WDS:file://{latent_shards}"], num_workers=0, index_dir=str(tmp_path / "i"))
    monkeypatch.setattr("fastgen_dm.index.datatags.is_local", lambda url: False)
    with pytest.raises(ValueError, match=re.escape(f"build the index with `fastgen index 'WDS:file://{latent_shards}'`")):
        dm.setup("fit")


def test_an_old_json_index_says_to_rebuild_it(tmp_path):
    folder = tmp_path / "old"
    write_demo_shards(folder, "image_latent", num_samples=20, samples_per_shard=10)
    (folder / "fastgen_index.json").write_text('{"format": "fastgen-wds-index", "version": 1, "shards": {}}')
    dm = ImageLatentDataModule([f"WDS:{folder}"], batch_size=4, num_workers=0, index_dir=str(tmp_path / "i"))
    with pytest.raises(ValueError, match=re.escape(f"{folder}/fastgen_index.json is a JSON shard index of an older fastgen-dm; rebuild it with `fastgen index`")):
        dm.setup("fit")
    dm.prepare_data()  # local data: prepare_data builds a new index instead, which then wins
    dm.setup("fit")
    assert sum(s.count for s in dm.train_stream.source.shards) == 20


def test_a_sample_of_the_wrong_dtype_is_bad_data_not_a_collate_error(tmp_path):
    import io

    folder = tmp_path / "mixed"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i in range(8):
            for suffix, tensor in (("latent.pth", torch.zeros(3, dtype=torch.float16 if i == 5 else torch.float32)), ("txt_emb.pth", torch.zeros(2))):
                buf = io.BytesIO()
                torch.save(tensor, buf)
                info = tarfile.TarInfo(f"{i:04d}.{suffix}")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    dm = make(folder, tmp_path, batch_size=8, shuffle=False, max_skip_fraction=0.5)
    (batch,) = list(dm.train_dataloader())
    assert batch["real"].dtype == torch.float32 and "0005" not in batch["fname"]


def test_deterministic_order_resumes_with_sampler_start_idx(latent_shards, tmp_path):
    full = ids_of(make(latent_shards, tmp_path, deterministic=True).train_dataloader())
    assert full == sorted(full)
    late = make(latent_shards, tmp_path, deterministic=True, sampler_start_idx=NUM + 48)
    assert ids_of(late.train_dataloader()) == full[48:]


def test_resampled_mode_draws_anew_after_a_restart_instead_of_replaying(latent_shards, tmp_path):
    def first_keys(state=None):
        dm = make(latent_shards, tmp_path, resampled=True, seed=3)
        if state is not None:
            dm.load_state_dict(state)
        return next(iter(dm.train_dataloader()))["fname"]

    dm = make(latent_shards, tmp_path, resampled=True, seed=3)
    iter(dm.train_dataloader())
    for _ in range(3):
        dm.cursor.step()
    state = dm.state_dict()
    assert state["position"] == 3 * 16
    assert first_keys() == first_keys()  # deterministic from the same position
    assert first_keys(state) == first_keys(state) != first_keys()  # a restart continues elsewhere


def test_the_data_seed_follows_seed_everything_unless_given(latent_shards, tmp_path, monkeypatch):
    import lightning

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored as it was after the test
    lightning.seed_everything(1234)
    assert make(latent_shards, tmp_path).seed == 1234
    assert make(latent_shards, tmp_path, seed=7).seed == 7
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert make(latent_shards, tmp_path).seed == 0
