"""fastgen_dm.read.shard_bytes: exact byte runs of tar shards, samples split out of them, whole-shard reads."""

import io
import re
import tarfile
import uuid

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from helpers import latent_samples, webdataset_samples, write_tar, write_wds

import fastgen_dm.index
from fastgen_dm.index import ByteCounter, index_shard
from fastgen_dm.read import ShardReadError, iter_shard, read_runs, split_sample


def tar_bytes(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def shard(tmp_path):
    """A 30-sample webdataset shard, its index and webdataset's own reading of it."""
    url = write_wds(tmp_path / "00000.tar", latent_samples(30))
    return url, index_shard(url), webdataset_samples(url)


@pytest.fixture
def memory_url():
    """A fresh memory:// folder (fsspec's in-memory filesystem, read like a remote store)."""
    root = f"memory://fastgen-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def cat_calls(monkeypatch):
    """Every ``cat_file(path, start, end)`` made on the memory filesystem."""
    calls = []
    real = MemoryFileSystem.cat_file

    def spy(self, path, start=None, end=None, **kwargs):
        calls.append((start, end))
        return real(self, path, start=start, end=end, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", spy)
    return calls


def samples_of_run(index, run, blob, first, stop):
    return [split_sample(blob[index.starts[k] - run[0] : index.ends[k] - run[0]], index.url, int(index.starts[k])) for k in range(first, stop)]


def test_split_sample_matches_webdataset(shard):
    url, index, expected = shard
    with open(url, "rb") as f:
        data = f.read()
    got = [split_sample(data[s:e], url, int(s)) for s, e in zip(index.starts, index.ends)]
    assert got == expected
    assert set(got[0][1]) == {"latent.pth", "txt_emb.pth", "json"}


def test_runs_of_consecutive_samples_are_single_ranges(shard):
    url, index, expected = shard
    runs = [index.byte_range(0, 5), index.byte_range(10, 20), index.byte_range(25, 30)]
    counter = ByteCounter()
    blobs = list(read_runs(url, runs, counter=counter))
    assert [len(b) for b in blobs] == [end - start for start, end in runs]
    assert counter.requests == 3 and counter.bytes_read == sum(end - start for start, end in runs)
    got = samples_of_run(index, runs[0], blobs[0], 0, 5) + samples_of_run(index, runs[1], blobs[1], 10, 20)
    assert got == expected[0:5] + expected[10:20]


def test_touching_runs_share_one_request(shard):
    url, index, expected = shard
    runs = [(int(s), int(e)) for s, e in zip(index.starts[3:9], index.ends[3:9])]  # one run per sample
    counter = ByteCounter()
    blobs = list(read_runs(url, runs, counter=counter))
    assert counter.requests == 1 and counter.bytes_read == runs[-1][1] - runs[0][0]
    assert [split_sample(b, url, s) for b, (s, _) in zip(blobs, runs)] == expected[3:9]


def test_remote_reads_are_exact_ranges(shard, memory_url, cat_calls):
    path, index, expected = shard
    url = f"{memory_url}/00000.tar"
    fsspec.filesystem("memory").pipe_file(url, open(path, "rb").read())
    runs = [index.byte_range(2, 4), index.byte_range(4, 6), index.byte_range(9, 10)]  # the first two touch
    blobs = list(read_runs(url, runs))
    assert cat_calls == [(runs[0][0], runs[1][1]), runs[2]]
    assert [split_sample(b, url, s) for b, (s, _) in zip(blobs[2:], runs[2:])] == expected[9:10]
    assert samples_of_run(index, runs[0], blobs[0], 2, 4) == expected[2:4]


def test_read_runs_opens_nothing_for_no_runs(tmp_path):
    assert list(read_runs(str(tmp_path / "missing.tar"), [])) == []


@pytest.mark.parametrize(
    "runs, message",
    [
        ([(0, 512), (256, 1024)], "runs[1] = (256, 1024) starts before runs[0] = (0, 512) ends; runs must be ascending"),
        ([(1024, 2048), (0, 512)], "runs[1] = (0, 512) starts before runs[0] = (1024, 2048) ends"),
        ([(512, 512)], "runs[0] = (512, 512) must satisfy 0 <= start < end"),
        ([(-1, 512)], "runs[0] = (-1, 512) must satisfy 0 <= start < end"),
    ],
)
def test_read_runs_checks_runs_at_the_call(runs, message):
    with pytest.raises(ValueError, match=re.escape(f"read_runs('s.tar'): {message}")):
        read_runs("s.tar", runs)


@pytest.mark.parametrize("remote", [False, True])
def test_read_runs_on_a_truncated_shard(shard, tmp_path, memory_url, remote):
    path, index, _ = shard
    cut_at = int(index.starts[12]) + 100
    data = open(path, "rb").read()[:cut_at]
    if remote:
        url = f"{memory_url}/cut.tar"
        fsspec.filesystem("memory").pipe_file(url, data)
    else:
        url = str(tmp_path / "cut.tar")
        open(url, "wb").write(data)
    runs = [(int(s), int(e)) for s, e in zip(index.starts[8:], index.ends[8:])]  # 8..29 in one request
    got = []
    with pytest.raises(ShardReadError, match=re.escape(f"{url}: run [{runs[4][0]}, {runs[4][1]}) needs bytes up to {runs[4][1]} but the read from {runs[0][0]} ended after {cut_at - runs[0][0]} bytes")):
        for blob in read_runs(url, runs):
            got.append(blob)
    assert len(got) == 4  # samples 8..11 are whole and come first
    # A run starting past the end is a ShardReadError too (S3 answers such a range with an error).
    with pytest.raises(ShardReadError, match=re.escape(f"{url}: run [{cut_at + 4096}, {cut_at + 5000}) needs bytes up to {cut_at + 5000} but the read from {cut_at + 4096} ended after 0 bytes")):
        list(read_runs(url, [(cut_at + 4096, cut_at + 5000)]))


def test_file_url(shard):
    path, index, expected = shard
    url = f"file://{path}"
    blobs = list(read_runs(url, [index.byte_range(0, 1)]))
    assert split_sample(blobs[0], url, 0) == expected[0]
    assert list(iter_shard(url)) == expected


# --- split_sample errors ----------------------------------------------------------------------


def test_split_sample_errors():
    two = tar_bytes([("a.jpg", b"1"), ("b.jpg", b"2")])
    with pytest.raises(ShardReadError, match=re.escape("s.tar: member 'b.jpg' has key 'b' inside the byte range of sample 'a'; is the index stale? (at byte 1024)")):
        split_sample(two[:2048], "s.tar", 0)
    with pytest.raises(ShardReadError, match=re.escape("s.tar: member 'b.jpg' has key 'b' inside")) as info:
        split_sample(two[:2048], "s.tar", 5120)
    assert info.value.offset == 5120 + 1024
    dup = tar_bytes([("a.jpg", b"1"), ("a.JPG", b"2")])
    with pytest.raises(ShardReadError, match=re.escape("s.tar: sample 'a' has suffix 'jpg' twice (at byte 1536)")):
        split_sample(dup[:2048], "s.tar", 512)
    one = tar_bytes([("a.jpg", b"x" * 1000)])
    with pytest.raises(ShardReadError, match=re.escape("s.tar: member 'a.jpg' needs 1024 bytes of data (with padding) but the file has 488: truncated (at byte 0)")):
        split_sample(one[:1000], "s.tar", 0)
    with pytest.raises(ShardReadError, match=re.escape("s.tar: truncated member header (300 of 512 bytes) (at byte 2348)")):
        split_sample(one[:1536] + one[:300], "s.tar", 0 + 812)
    with pytest.raises(ShardReadError, match=re.escape("s.tar: empty file, not a tar (at byte 77)")):
        split_sample(b"", "s.tar", 77)
    with pytest.raises(ShardReadError, match=re.escape("s.tar: not a tar file, or a corrupt first member header")):
        split_sample(b"\x01" * 1024, "s.tar", 0)
    meta = tar_bytes([("__meta__", b"m")])
    with pytest.raises(ShardReadError, match=re.escape("s.tar: no sample member in the 1024 bytes read; is the index stale? (at byte 0)")):
        split_sample(meta[:1024], "s.tar", 0)


# --- whole shards -----------------------------------------------------------------------------


def test_iter_shard_matches_webdataset_and_reads_each_byte_once(shard):
    url, index, expected = shard
    counter = ByteCounter()
    assert list(iter_shard(url, counter=counter)) == expected
    assert counter.bytes_read == index.size and counter.requests == 1
    counter = ByteCounter()
    assert list(iter_shard(url, counter=counter, block_bytes=4096)) == expected
    # Small blocks: more requests, still no byte twice (the record padding after the end marker stays unread).
    assert index.ends[-1] + 512 <= counter.bytes_read <= index.size and counter.requests > 40


@pytest.mark.parametrize("cut_in", ["data", "header"])
def test_iter_shard_on_a_truncated_shard(shard, tmp_path, cut_in):
    path, index, expected = shard
    cut_at = int(index.starts[7]) + (2000 if cut_in == "data" else 100)
    url = str(tmp_path / "cut.tar")
    open(url, "wb").write(open(path, "rb").read()[:cut_at])
    got = list(iter_shard(url))
    last_good = 7 if cut_in == "data" else 6  # a cut header may have belonged to sample 6
    assert got[:last_good] == expected[:last_good]
    assert len(got) == last_good + 1
    key, err = got[-1]
    assert key == index.keys[last_good] and isinstance(err, ShardReadError) and err.url == url


@pytest.mark.parametrize("content", [b"", b"not a tar" * 100])
def test_iter_shard_on_a_non_tar(tmp_path, content):
    url = tmp_path / "bad.tar"
    url.write_bytes(content)
    [(key, err)] = list(iter_shard(str(url)))
    assert key == "?" and isinstance(err, ShardReadError) and str(url) in str(err)


def test_iter_shard_skips_over_a_bad_sample(tmp_path):
    url = write_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("b.jpg", b"2"), ("b.jpg", b"3"), ("d/", None), ("c.jpg", b"4")])
    got = list(iter_shard(url))
    assert got[0] == ("a", {"jpg": b"1"}) and got[2] == ("c", {"jpg": b"4"})
    assert got[1][0] == "b" and re.fullmatch(re.escape(f"{url}: sample 'b' has suffix 'jpg' twice (at byte 2048)"), str(got[1][1]))


def test_shard_read_error_is_one_class():
    assert ShardReadError is fastgen_dm.index.ShardReadError


def test_s3_reads_exact_ranges(shard, s3_server, s3_bucket):
    path, local_index, expected = shard
    url = s3_server.upload(path, f"s3://{s3_bucket}/data/00000.tar")
    options = s3_server.storage_options
    counter = ByteCounter()
    index = index_shard(url, options, counter=counter)
    assert index.keys == local_index.keys and index.url == url
    np.testing.assert_array_equal(index.ends, local_index.ends)
    runs = [index.byte_range(0, 3), index.byte_range(3, 5), index.byte_range(20, 22)]
    counter = ByteCounter()
    blobs = list(read_runs(url, runs, options, counter=counter))
    assert counter.requests == 2 and counter.bytes_read == runs[1][1] - runs[0][0] + runs[2][1] - runs[2][0]
    assert samples_of_run(index, runs[2], blobs[2], 20, 22) == expected[20:22]
    with pytest.raises(ShardReadError, match=re.escape(f"{url}: run [{index.size + 512}, {index.size + 1024}) needs bytes up to")):
        list(read_runs(url, [(index.size + 512, index.size + 1024)], options))
    assert list(iter_shard(url, options)) == expected
