"""The storage layer against a real S3 protocol: ``moto_server`` on 127.0.0.1 (tests/s3server.py)."""

from __future__ import annotations

import json
import os
import tarfile

import fsspec
import pytest
import torch

from s3server import start_s3_server

from fastgen_dm import ImageFolderDataModule
from fastgen_dm.prepare import write_demo_zip
from fastgen_dm.prepare.demo_wds import write_demo_shards
from fastgen_dm.storage import exists, fetch_once, open_url


def test_server_is_on_loopback_with_safe_options(s3_server) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    options = s3_server.storage_options
    assert options["client_kwargs"]["endpoint_url"] == s3_server.endpoint_url
    assert options["use_listings_cache"] is False


def test_a_server_starts_and_stops_without_touching_os_environ() -> None:
    before = dict(os.environ)
    with start_s3_server() as server:
        bucket = server.make_bucket("fastgen-own-server")
        assert server.filesystem().ls(bucket) == []
    assert server._proc.poll() is not None
    assert dict(os.environ) == before


def test_open_url_reads_and_writes(s3_server, s3_bucket) -> None:
    url = f"s3://{s3_bucket}/dir/hello.bin"
    options = s3_server.storage_options
    assert not exists(url, options)
    with open_url(url, "wb", storage_options=options) as f:
        f.write(b"hello s3")
    assert exists(url, options)
    with open_url(url, storage_options=options) as f:
        assert f.read() == b"hello s3"


def test_listing_after_a_write_is_fresh(s3_server, s3_bucket) -> None:
    """With the fixture's options, a listing taken before a write does not hide the new object."""
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    fs.pipe(f"{s3_bucket}/shards/00000.tar", b"a")
    assert fs.ls(f"{s3_bucket}/shards") == [f"{s3_bucket}/shards/00000.tar"]
    s3_server.filesystem().pipe(f"{s3_bucket}/shards/00001.tar", b"b")  # another instance writes
    assert fs.ls(f"{s3_bucket}/shards") == [f"{s3_bucket}/shards/00000.tar", f"{s3_bucket}/shards/00001.tar"]


def test_fetch_once_copies_atomically(s3_server, s3_bucket, tmp_path) -> None:
    source = tmp_path / "source.bin"
    payload = os.urandom(3 << 20)
    source.write_bytes(payload)
    url = s3_server.upload(source, f"s3://{s3_bucket}/data/blob.bin")
    dest = tmp_path / "local" / "blob.bin"
    assert fetch_once(url, dest, storage_options=s3_server.storage_options, show_progress=False) == dest
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]  # no temporary left behind
    dest.write_bytes(b"already here")
    fetch_once(url, dest, storage_options=s3_server.storage_options, show_progress=False)
    assert dest.read_bytes() == b"already here"  # an existing file is kept


def test_a_missing_object_is_a_clear_error(s3_server, s3_bucket, tmp_path) -> None:
    url = f"s3://{s3_bucket}/nope/missing.zip"
    options = s3_server.storage_options
    assert not exists(url, options)
    with pytest.raises(FileNotFoundError, match=f"cannot fetch '{url}': it does not exist"):
        fetch_once(url, tmp_path / "missing.zip", storage_options=options, show_progress=False)
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):
        open_url(url, storage_options=options).close()


def test_image_folder_datamodule_fetches_from_s3(s3_server, s3_bucket, tmp_path) -> None:
    zip_path = write_demo_zip(tmp_path / "upload" / "demo.zip", num_images=40, num_classes=4)
    s3_path = s3_server.upload(zip_path, f"s3://{s3_bucket}/demo.zip")
    local = tmp_path / "data" / "demo.zip"
    dm = ImageFolderDataModule(
        dataset_path=str(local),
        s3_path=s3_path,
        storage_options=s3_server.storage_options,
        batch_size=8,
        num_workers=0,
        pin_memory=False,
    )
    dm.prepare_data()
    assert local.read_bytes() == zip_path.read_bytes()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["real"].shape == (8, 3, 32, 32) and batch["real"].dtype == torch.float32
    assert batch["condition"].shape == (8, 4)


def test_demo_shards_upload_list_and_stream(s3_server, s3_bucket, tmp_path) -> None:
    """What the WebDataset DataModule will do: list the shards on S3 and read them."""
    folder = tmp_path / "wds" / "pair"
    shards = write_demo_shards(folder, "pair", num_samples=20, samples_per_shard=8)
    prefix = f"s3://{s3_bucket}/latents/pair"
    s3_server.upload(folder, prefix)

    fs, root = fsspec.core.url_to_fs(prefix, **s3_server.storage_options)
    names = sorted(path.rsplit("/", 1)[1] for path in fs.ls(root))
    assert names == ["00000.tar", "00001.tar", "00002.tar", "neg_condition.pth", "shard_counts.json"]
    assert sorted(fs.glob(f"{root}/*.tar")) == [f"{root}/{s.name}" for s in shards]
    counts = json.loads(fs.cat(f"{root}/shard_counts.json"))
    assert counts == {"00000.tar": 8, "00001.tar": 8, "00002.tar": 4}
    for shard in shards:
        assert fs.size(f"{root}/{shard.name}") == shard.stat().st_size

    # Stream one shard back through fsspec, front to back, and compare with the local file.
    with open_url(f"{prefix}/00001.tar", storage_options=s3_server.storage_options) as f, tarfile.open(
        fileobj=f, mode="r|"
    ) as tar:
        remote = {m.name: tar.extractfile(m).read() for m in tar}
    with tarfile.open(shards[1]) as tar:
        assert remote == {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(remote)[:3] == ["00000008.latent.pth", "00000008.noise.pth", "00000008.txt_emb.pth"]
    assert len(remote) == 8 * 3
