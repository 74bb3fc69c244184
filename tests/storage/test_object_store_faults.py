"""Object-store faults through a loopback proxy: transient ones are retried and never bad data; a
stalled store ends in StorageReadError naming the shard and the byte range, never in a hang."""

import json
import re

import pytest

from s3proxy import Fault, S3Proxy

from fastgen_dm.cli.main import main
from fastgen_dm.datamodules.latents import PairDataModule
from fastgen_dm.prepare import write_demo_shards
from fastgen_dm.storage import StorageReadError

NUM = 24
FAST = {"connect_timeout": 1, "read_timeout": 1}  # the harness's patience, not the defaults


@pytest.fixture
def location(s3_server, s3_bucket, tmp_path):
    write_demo_shards(tmp_path / "pair", "pair", num_samples=NUM, samples_per_shard=8)
    url = f"s3://{s3_bucket}/pair"
    s3_server.upload(tmp_path / "pair", url)
    assert main(["index", f"WDS:{url}", "--storage-options", json.dumps(s3_server.storage_options)]) == 0
    return url


def epoch(location, proxy, tmp_path, **options):
    storage = {**proxy.storage_options, "config_kwargs": FAST, **options}
    dm = PairDataModule([f"WDS:{location}"], batch_size=4, num_workers=0, storage_options=storage,
                        index_dir=str(tmp_path / "index"), max_skip_fraction=0.0)  # fmt: skip
    dm.setup("fit")
    return [k for b in dm.train_dataloader() for k in b["fname"]]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fault",
    [Fault("status", times=2, status=503, code="SlowDown"), Fault("status", times=1, status=500, code="InternalError"),
     Fault("reset", times=2, after_bytes=200), Fault("truncate", times=1, after_bytes=1000)],
    ids=["throttled", "5xx", "reset", "truncated-body"],
)  # fmt: skip
def test_transient_faults_are_retried_and_every_sample_arrives(s3_server, location, tmp_path, fault):
    with S3Proxy.in_front_of(s3_server) as proxy:
        proxy.add_fault(fault)  # the first GETs through the proxy
        keys = epoch(location, proxy, tmp_path)
        assert sum(proxy.stats().faults.values()) == fault.times
    assert sorted(keys) == [f"{i:08d}" for i in range(NUM)]  # none lost, none counted bad (the ceiling is 0)


@pytest.mark.timeout(180)
def test_a_stalled_store_is_a_clear_error_naming_the_shard_and_range(s3_server, location, tmp_path):
    with S3Proxy.in_front_of(s3_server) as proxy:
        storage = {**proxy.storage_options, "config_kwargs": FAST}
        dm = PairDataModule([f"WDS:{location}"], batch_size=4, num_workers=0, storage_options=storage, index_dir=str(tmp_path / "i"))
        dm.setup("fit")
        proxy.add_fault(Fault("stall", times=1000, method=None))
        with pytest.raises(StorageReadError, match=re.escape(f"of {location}/") + r"0000\d\.tar failed after its retries"):
            list(dm.train_dataloader())
