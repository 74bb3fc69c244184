"""Shared fixtures: small EDM datasets written with the package's own writer."""

import pytest

from helpers import write_zip

from fastgen_dm.prepare import write_demo_zip


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
