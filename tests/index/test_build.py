"""fastgen_dm.index.build: sample keys and byte ranges of tar shards, found by walking their headers."""

import gzip
import logging
import os
import re
import tarfile
import uuid

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from helpers import latent_samples, webdataset_samples, write_tar, write_wds

from fastgen_dm.format.tar import ShardReadError, split_sample
from fastgen_dm.index import build
from fastgen_dm.index.build import index_shard, index_shards
from fastgen_dm.storage import ByteCounter


def samples_by_offsets(index):
    with open(index.url.removeprefix("file://"), "rb") as f:
        data = f.read()
    return [split_sample(data[s:e], index.url, int(s)) for s, e in zip(index.starts, index.ends)]


# A shard of every member kind webdataset meets: directories (also inside a sample), meta files,
# names without an extension, upper-case suffixes, dots in folder names, a symlink, keys that
# come back later (a new sample), empty members.
TRICKY_MEMBERS = [
    ("__meta__", b"meta"),
    ("x.y/", None),
    ("x.y/000001.Latent.PTH", b"L1"),
    ("x.y/000001.json", b"{}"),
    ("x.y/sub/", None),
    ("x.y/000001.txt", b""),
    ("README", b"no extension: skipped"),
    ("x.y/000002.latent.pth", b"L2" * 300),
    ("__x__/info.txt", b"meta folder"),
    ("000003.jpg", b"J3" * 257),
    ("x.y/000001.cls", b"7"),
    ("x.y/000001.", b"empty suffix"),
]


def write_tricky(path):
    path = write_tar(path, TRICKY_MEMBERS)
    with tarfile.open(path, "a") as tf:  # a symlink after everything; webdataset skips non-regular members
        info = tarfile.TarInfo("x.y/000004.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "000003.jpg"
        tf.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["latents", "tricky"])
def test_keys_match_webdataset(tmp_path, kind):
    url = write_wds(tmp_path / "s.tar", latent_samples(40)) if kind == "latents" else write_tricky(tmp_path / "s.tar")
    index = index_shard(url)
    expected = webdataset_samples(url)
    assert index.keys == tuple(key for key, _ in expected)
    assert [m for _, m in samples_by_offsets(index)] == [m for _, m in expected]
    assert index.size == os.path.getsize(url)
    assert index.truncated_at is None


def test_tricky_shard_grouping(tmp_path):
    index = index_shard(write_tricky(tmp_path / "s.tar"))
    assert index.keys == ("x.y/000001", "x.y/000002", "000003", "x.y/000001")
    first = samples_by_offsets(index)[0]
    # The directory between members of one sample stays inside its range and is skipped.
    assert first == ("x.y/000001", {"latent.pth": b"L1", "json": b"{}", "txt": b""})


def test_offsets_worked_example(tmp_path):
    # The module docstring's example: ustar headers, data padded to 512.
    url = write_tar(tmp_path / "s.tar", [("a.jpg", b"j" * 10), ("a.json", b"{" * 600), ("b.jpg", b"j" * 10), ("b.json", b"{" * 600)])
    index = index_shard(url)
    assert index.keys == ("a", "b")
    np.testing.assert_array_equal(index.starts, [0, 2560])
    np.testing.assert_array_equal(index.ends, [2560, 5120])
    assert index.starts.dtype == np.int64 and index.count == 2 and len(index) == 2
    assert index.byte_range(0, 2) == (0, 5120)


def test_hidden_members_are_skipped(tmp_path):
    url = write_tar(tmp_path / "s.tar", [("d/._000001.jpg", b"apple"), ("d/000001.jpg", b"j"), (".DS_Store", b"x")])
    index = index_shard(url)
    assert index.keys == ("d/000001",)
    assert index.starts[0] == 1024  # after the hidden member's header and data


def test_index_walk_seeks_over_member_data(tmp_path):
    url = write_tar(tmp_path / "s.tar", [(f"{k // 2:04d}.{'ab'[k % 2]}.bin", bytes(1 << 20)) for k in range(20)])
    counter = ByteCounter()
    index = index_shard(url, counter=counter)
    assert index.count == 10
    assert counter.bytes_read < 0.05 * index.size
    assert counter.requests <= 21


def test_remote_index_walk_requests_few_bytes(tmp_path, monkeypatch):
    # Spy on the filesystem itself (not on our counter): what storage is asked for.
    path = write_tar(tmp_path / "s.tar", [(f"{k // 2:04d}.{'ab'[k % 2]}.bin", bytes(1 << 20)) for k in range(20)])
    url = f"memory://fastgen-test-{uuid.uuid4().hex}/s.tar"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(url, open(path, "rb").read())
    asked, real = [], MemoryFileSystem.cat_file

    def spy(self, p, start=None, end=None, **kwargs):
        asked.append((start, end))
        return real(self, p, start, end, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", spy)
    monkeypatch.setattr(MemoryFileSystem, "open", lambda *a, **kw: pytest.fail("the walk must not open a buffered file"))
    try:
        index = index_shard(url)
    finally:
        fs.rm(url)
    assert index.count == 10 and index.url == url
    assert all(start is not None and end is not None for start, end in asked)
    assert sum(end - start for start, end in asked) < 0.05 * index.size


def test_index_of_small_members_reads_few_requests(tmp_path):
    url = write_wds(tmp_path / "s.tar", latent_samples(200))
    counter = ByteCounter()
    index_shard(url, counter=counter)
    assert counter.bytes_read <= os.path.getsize(url)
    assert counter.requests < 200  # small members share the 32 KiB blocks


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_member_names(tmp_path, fmt):
    folder = "/".join(["d" * 40] * 3)  # 122 characters: beyond the 100 of a plain header
    long_key = f"{folder}/{'k' * 60}" if fmt != tarfile.USTAR_FORMAT else f"{folder}/k"  # ustar: prefix + name
    members = [(f"{long_key}.latent.pth", b"x" * 700), (f"{long_key}.json", b"{}"), ("short.json", b"[]")]
    url = write_tar(tmp_path / "s.tar", members, fmt)
    index = index_shard(url)
    assert index.keys == (long_key, "short")
    assert samples_by_offsets(index) == [(long_key, {"latent.pth": b"x" * 700, "json": b"{}"}), ("short", {"json": b"[]"})]
    assert [k for k, _ in webdataset_samples(url)] == list(index.keys)


def test_pax_headers_belong_to_their_sample(tmp_path):
    url = write_wds(tmp_path / "s.tar", latent_samples(3))
    index = index_shard(url)
    with open(url, "rb") as f:
        data = f.read()
    for start in index.starts:  # webdataset writes a pax header before each member
        assert data[start + 156 : start + 157] == tarfile.XHDTYPE


def test_file_url(tmp_path):
    path = write_wds(tmp_path / "s.tar", latent_samples(5))
    url = f"file://{path}"
    index = index_shard(url)
    assert index.url == url
    assert index.keys == index_shard(path).keys


def test_empty_tar(tmp_path):
    index = index_shard(write_tar(tmp_path / "s.tar", []))
    assert index.count == 0 and index.starts.shape == (0,)


# --- damaged shards ---------------------------------------------------------------------------


def cut(src, dest, length):
    with open(src, "rb") as f:
        data = f.read(length)
    with open(dest, "wb") as f:
        f.write(data)
    return str(dest)


def test_truncated_in_member_data(tmp_path, intact):
    url, full = intact
    second = int(full.starts[3]) + 512 + 1536  # sample 3's .json header: after .jpg's header and 1500 B data
    bad = cut(url, tmp_path / "bad.tar", int(full.starts[3]) + 512 + 700)  # cut inside sample 3's .jpg data
    with pytest.raises(ShardReadError, match=re.escape(f"{bad}: member '000003.jpg' needs 1536 bytes")) as info:
        index_shard(bad)
    assert info.value.url == bad and info.value.offset == full.starts[3]
    partial = index_shard(bad, partial_ok=True)
    assert partial.keys == full.keys[:3]
    np.testing.assert_array_equal(partial.ends, full.ends[:3])
    assert partial.truncated_at == full.starts[3]
    # Cut inside the data of the sample's last member: the sample is still dropped.
    bad = cut(url, tmp_path / "bad2.tar", second + 512 + 1)
    assert index_shard(bad, partial_ok=True).keys == full.keys[:3]


def test_truncated_in_header(tmp_path, intact):
    url, full = intact
    bad = cut(url, tmp_path / "bad.tar", int(full.starts[4]) + 100)
    with pytest.raises(ShardReadError, match=re.escape(f"{bad}: truncated member header (100 of 512 bytes) (at byte {full.starts[4]})")):
        index_shard(bad)
    partial = index_shard(bad, partial_ok=True)
    # Sample 3 may have had more members after the cut: only 0..2 are known complete.
    assert partial.keys == full.keys[:3] and partial.truncated_at == full.starts[4]


def test_corrupt_header_in_the_middle(tmp_path, intact):
    url, full = intact
    with open(url, "rb") as f:
        data = bytearray(f.read())
    data[full.starts[2] : full.starts[2] + 512] = b"garbage!" * 64
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match=re.escape(f"{bad}: corrupt member header (bad checksum or format) (at byte {full.starts[2]})")):
        index_shard(str(bad))
    assert index_shard(str(bad), partial_ok=True).keys == full.keys[:1]


def test_cut_at_member_boundary_is_read_with_a_warning(tmp_path, intact, caplog):
    url, full = intact
    bad = cut(url, tmp_path / "bad.tar", int(full.starts[4]))
    with caplog.at_level(logging.WARNING, logger="fastgen_dm.format.tar"):
        index = index_shard(bad)
    assert index.keys == full.keys[:4] and index.truncated_at is None
    assert "ends without the tar end-of-archive blocks" in caplog.text and bad in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file, not a tar (at byte 0)"),
        (b"hello, world\n" * 100, "not a tar file, or a corrupt first member header"),
        (b"short", "not a tar file, or a corrupt first member header"),
    ],
)
def test_not_a_tar(tmp_path, content, message):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    with pytest.raises(ShardReadError, match=re.escape(f"{path}: {message}")):
        index_shard(str(path))
    partial = index_shard(str(path), partial_ok=True)
    assert partial.count == 0 and partial.truncated_at == 0


def test_compressed_tar_is_refused_with_a_hint(tmp_path, intact):
    url, _ = intact
    path = tmp_path / "s.tar.gz"
    path.write_bytes(gzip.compress(open(url, "rb").read()))
    with pytest.raises(ShardReadError, match="gzip-compressed tar; byte-range reads need an uncompressed tar"):
        index_shard(str(path))


# --- many shards ------------------------------------------------------------------------------


def test_index_shards_keeps_order_and_reuses_unchanged(tmp_path, monkeypatch):
    urls = [write_wds(tmp_path / f"{k:05d}.tar", latent_samples(3 + k, seed=k)) for k in range(5)]
    first = index_shards(urls, num_threads=3, show_progress=False)
    assert [s.url for s in first] == urls
    assert [s.count for s in first] == [3, 4, 5, 6, 7]

    calls = []
    real = build.index_shard
    monkeypatch.setattr(build, "index_shard", lambda url, *a, **kw: calls.append(url) or real(url, *a, **kw))
    write_wds(urls[2], latent_samples(9, seed=99))  # rewritten: another size
    previous = {s.url: s for s in first}
    again = index_shards(urls, num_threads=2, show_progress=False, previous=previous, num_processes=1)  # in process: the spy sees the calls
    assert calls == [urls[2]]
    assert [s.count for s in again] == [3, 4, 9, 6, 7]
    assert all(again[k] is first[k] for k in (0, 1, 3, 4))


def test_index_shards_reuses_unchanged_remote_shards(tmp_path):
    root = f"memory://fastgen-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    urls = [f"{root}/{k:05d}.tar" for k in range(3)]
    for k, url in enumerate(urls):
        fs.pipe_file(url, open(write_wds(tmp_path / f"{k}.tar", latent_samples(3 + k, seed=k)), "rb").read())
    try:
        first = index_shards(urls, show_progress=False)
        fs.pipe_file(urls[1], open(write_wds(tmp_path / "new.tar", latent_samples(9, seed=9)), "rb").read())
        again = index_shards(urls, show_progress=False, previous={s.url: s for s in first})
    finally:
        fs.rm(root, recursive=True)
    assert again[0] is first[0] and again[2] is first[2]
    assert again[1] is not first[1] and again[1].count == 9


def test_index_shards_in_processes_gives_the_same_indexes(tmp_path, intact):
    url, full = intact
    urls = [url] + [write_wds(tmp_path / f"{k:05d}.tar", latent_samples(3 + k, seed=k)) for k in range(3)]
    alone = index_shards(urls, show_progress=False)
    forked = index_shards(urls, show_progress=False, num_processes=2)
    assert [s.url for s in forked] == urls
    for a, b in zip(alone, forked):
        assert (a.keys, a.size) == (b.keys, b.size)
        np.testing.assert_array_equal(a.ends, b.ends)
    bad = cut(url, tmp_path / "bad.tar", int(full.starts[2]) + 600)
    with pytest.raises(ShardReadError, match=re.escape(bad)):  # the error crosses the process boundary
        index_shards([*urls, bad], show_progress=False, num_processes=2)


def test_index_shards_raises_on_a_damaged_shard(tmp_path, intact):
    url, full = intact
    bad = cut(url, tmp_path / "bad.tar", int(full.starts[2]) + 600)
    with pytest.raises(ShardReadError, match=re.escape(bad)):
        index_shards([url, bad], show_progress=False)
    both = index_shards([url, bad], show_progress=False, partial_ok=True)
    assert [s.count for s in both] == [6, 2] and both[1].truncated_at == full.starts[2]


@pytest.mark.parametrize(
    "urls, threads, processes, message",
    [
        (["a", "a"], 2, 1, "urls lists ['a'] more than once"),
        (["a"], 0, 1, "num_threads must be >= 1, got 0"),
        (["a"], 2, 0, "num_processes must be >= 1 (or None for every core), got 0"),
    ],
)
def test_index_shards_arguments(urls, threads, processes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        index_shards(urls, num_threads=threads, show_progress=False, num_processes=processes)


def test_an_index_is_reused_only_with_the_sizes_of_the_member_asked_for(tmp_path, monkeypatch):
    url = write_wds(tmp_path / "00000.tar", latent_samples(3))
    calls = []
    real = build.index_shard
    monkeypatch.setattr(build, "index_shard", lambda url, *a, **kw: calls.append(kw.get("sizes_of")) or real(url, *a, **kw))
    first = index_shards([url], show_progress=False, sizes_of="latent.pth")
    assert first[0].sizes_of == "latent.pth" and first[0].sizes.shape == (3, 3)
    previous = {url: first[0]}
    assert index_shards([url], show_progress=False, previous=previous, sizes_of="latent.pth")[0] is first[0]
    assert index_shards([url], show_progress=False, previous=previous)[0] is first[0]  # no sizes asked for
    again = index_shards([url], show_progress=False, previous=previous, sizes_of="mp4")  # three columns too, of another member
    assert calls == ["latent.pth", "mp4"] and again[0].sizes_of == "mp4"
    legacy = build.ShardIndex(url, first[0].size, first[0].keys, first[0].starts, first[0].ends, None, first[0].sizes)
    reused = index_shards([url], show_progress=False, previous={url: legacy}, sizes_of="latent.pth")[0]
    assert len(calls) == 2 and reused.sizes_of == "latent.pth"  # an older index of as many columns, now naming its member
