"""Shared fixtures: small EDM datasets written with the package's own writer."""

import pytest

from helpers import LATENT_SHARD_SAMPLES, write_zip

from fastgen_dm.prepare import write_demo_zip
from fastgen_dm.prepare.demo_wds import write_demo_shards


@pytest.fixture(scope="session")
def demo_zip(tmp_path_factory):
    """300 labelled 32x32 RGB images of 4 classes."""
    return str(write_demo_zip(tmp_path_factory.mktemp("demo") / "demo.zip", num_images=300, num_classes=4))


@pytest.fixture
def make_zip(tmp_path):
    """Write a zip of the given uint8 HWC images (and labels) and return its path."""
    counter = iter(range(1000))

    def make(images, labels=None, name=None):
        return write_zip(tmp_path / (name or f"data{next(counter)}.zip"), images, labels)

    return make


# --- S3 (moto_server on loopback); see tests/s3server.py ------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    """A ``moto_server`` on 127.0.0.1 for the whole session: an :class:`s3server.S3Server`.

    Pass ``s3_server.storage_options`` wherever ``storage_options`` is taken; it holds the fake
    credentials, the endpoint and ``use_listings_cache=False`` (no stale listings after writes).
    """
    from s3server import start_s3_server

    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, uniquely named, empty bucket on ``s3_server`` for one test: its name."""
    return s3_server.make_bucket()


@pytest.fixture(scope="module")
def latent_shards(tmp_path_factory):
    """Demo image-latent shards of ``helpers.LATENT_SHARD_SAMPLES`` samples, 50 a shard."""
    folder = tmp_path_factory.mktemp("image_latent")
    write_demo_shards(folder, "image_latent", num_samples=LATENT_SHARD_SAMPLES, samples_per_shard=50)
    return folder
