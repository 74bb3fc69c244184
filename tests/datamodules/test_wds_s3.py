"""`s3://` end to end against moto_server on 127.0.0.1: `fastgen index`, then epoch mode over S3."""

from fastgen_dm.cli.main import main
from fastgen_dm.datamodules.latents import PairDataModule
from fastgen_dm.prepare import write_demo_shards


def test_index_then_train_from_s3(s3_server, s3_bucket, tmp_path, capsys):
    write_demo_shards(tmp_path / "pair", "pair", num_samples=30, samples_per_shard=8)
    location = f"s3://{s3_bucket}/kd/pair"
    s3_server.upload(tmp_path / "pair", location)
    import json

    options = json.dumps(s3_server.storage_options)
    assert main(["index", f"WDS:{location}", "--storage-options", options]) == 0
    assert "4 shards, 30 samples" in capsys.readouterr().out

    dm = PairDataModule([f"WDS:{location}"], batch_size=4, num_workers=2, storage_options=s3_server.storage_options)
    dm.prepare_data()
    dm.setup("fit")
    assert all(s.index is not None for s in dm.train_stream.source.shards)  # offsets from the index in the bucket
    batches = list(dm.train_dataloader())
    keys = [k for b in batches for k in b["fname"]]
    assert sorted(keys) == [f"{i:08d}" for i in range(30)]
    assert batches[0]["noise"].shape == batches[0]["real"].shape
    assert batches[0]["shard"][0].startswith(f"s3://{s3_bucket}/kd/pair/")
    assert "neg_condition" in batches[0]  # files_map resolved inside the bucket


def test_an_unreachable_bucket_names_the_tag(s3_server):
    dm = PairDataModule(["WDS:s3://no-such-bucket/x"], num_workers=0, storage_options=s3_server.storage_options)
    import pytest

    with pytest.raises(FileNotFoundError, match="datatag 'WDS:s3://no-such-bucket/x'"):
        dm.setup("fit")


def test_prepare_data_copies_a_remote_index_once_per_node_and_setup_maps_the_copy(s3_server, s3_bucket, tmp_path):
    import json

    import fsspec

    write_demo_shards(tmp_path / "pair", "pair", num_samples=12, samples_per_shard=4)
    location = f"s3://{s3_bucket}/copied"
    s3_server.upload(tmp_path / "pair", location)
    assert main(["index", f"WDS:{location}", "--storage-options", json.dumps(s3_server.storage_options)]) == 0
    index_dir = tmp_path / "index"
    dm = PairDataModule([f"WDS:{location}"], batch_size=4, num_workers=0, storage_options=s3_server.storage_options, index_dir=str(index_dir))
    dm.prepare_data()
    (copy,) = index_dir.glob("remote-*.fgi")
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    remote = f"{s3_bucket}/copied/fastgen_index.fgi"
    fs.pipe_file(remote, b"\0" * fs.size(remote))  # same size, unreadable: only the node's copy can serve setup
    dm.setup("fit")
    assert sorted(k for b in dm.train_dataloader() for k in b["fname"]) == [f"{i:08d}" for i in range(12)]
    assert copy.stat().st_size == fs.size(remote)
