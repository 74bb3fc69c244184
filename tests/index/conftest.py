"""Fixtures of the index tests."""

import pytest

from helpers import write_tar

from fastgen_dm.index import index_shard


@pytest.fixture
def intact(tmp_path):
    """A ustar shard of 6 samples with two members each, and its index."""
    members = []
    for k in range(6):
        members += [(f"{k:06d}.jpg", bytes([k]) * 1500), (f"{k:06d}.json", b"{}")]
    url = write_tar(tmp_path / "intact.tar", members)
    return url, index_shard(url)
