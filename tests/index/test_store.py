"""fastgen_dm.index.store: the binary index file, written atomically and memory-mapped when local."""

import json
import os
import re
import struct

import numpy as np
import pytest

from helpers import latent_samples, write_wds

from fastgen_dm.index import ShardIndex, index_shard, load_index, save_index, store


def assert_same(a, b):
    assert (a.url, a.size, a.keys, a.truncated_at) == (b.url, b.size, b.keys, b.truncated_at)
    np.testing.assert_array_equal(a.starts, b.starts)
    np.testing.assert_array_equal(a.ends, b.ends)
    assert b.starts.dtype == np.int64 and b.ends.dtype == np.int64


def header(path):
    with open(path, "rb") as f:
        magic, version, length = struct.unpack("<8sIQ", f.read(20))
        return magic, version, json.loads(f.read(length))


def test_save_load_round_trip(tmp_path, intact):
    url, full = intact
    other = index_shard(write_wds(tmp_path / "other.tar", latent_samples(7)))
    partial = ShardIndex("s3://b/t/00000.tar", 9000, ("k",), [0], [1024], truncated_at=1024)
    empty = ShardIndex("s3://b/t/00001.tar", 10240, (), [], [])
    path = str(tmp_path / "idx" / "fastgen_index.fgi")
    save_index(path, [full, other, partial, empty])
    loaded = load_index(path)
    assert list(loaded) == [url, other.url, partial.url, empty.url]
    for shard in (full, other, partial, empty):
        assert_same(shard, loaded[shard.url])
    magic, version, doc = header(path)
    assert (magic, version) == (b"FGINDEX\0", 2)
    assert doc["shards"][0] == {"url": url, "size": full.size, "count": 6, "truncated_at": None}
    assert doc["shards"][2]["truncated_at"] == 1024 and doc["shards"][3]["count"] == 0
    assert doc["arrays"]["starts"] == {"dtype": "<i8", "offset": doc["arrays"]["starts"]["offset"], "length": 6 + 7 + 1}
    assert all(spec["offset"] % 64 == 0 for spec in doc["arrays"].values())
    assert sorted(os.listdir(tmp_path / "idx")) == ["fastgen_index.fgi"]
    assert load_index(f"file://{path}").keys() == loaded.keys()


def test_no_shards_round_trip(tmp_path):
    path = str(tmp_path / "i.fgi")
    save_index(path, [])
    assert load_index(path) == {}


def test_ignored_keys_removed_before_saving_stay_removed(tmp_path, intact):
    _, full = intact
    path = str(tmp_path / "i.fgi")
    fewer = full.without({"000001", "000004"})
    save_index(path, [fewer])
    loaded = load_index(path)[full.url]
    assert loaded.keys == ("000000", "000002", "000003", "000005")
    assert_same(fewer, loaded)


def test_local_index_is_memory_mapped(tmp_path, intact):
    _, full = intact
    path = str(tmp_path / "i.fgi")
    save_index(path, [full, ShardIndex("b.tar", full.size, full.keys, full.starts, full.ends)])
    loaded = load_index(path)
    shard = loaded[full.url]
    for array in (shard.starts, shard.ends, shard.keys.offsets, shard.keys.blob):
        assert isinstance(array.base, np.memmap) or isinstance(array, np.memmap), type(array)
        assert not array.flags.writeable
    # Both shards view one mapping of the file: nothing per sample was copied at load.
    assert np.shares_memory(shard.keys.blob, loaded["b.tar"].keys.blob)
    assert loaded["b.tar"].keys == full.keys


def test_remote_index_is_read_whole(intact):
    _, full = intact
    save_index("memory://fastgen-test/idx.fgi", [full])
    loaded = load_index("memory://fastgen-test/idx.fgi")[full.url]
    assert_same(full, loaded)
    assert not loaded.starts.flags.writeable


def test_save_index_is_atomic(tmp_path, intact, monkeypatch):
    _, full = intact
    path = tmp_path / "index.fgi"
    path.write_text("previous")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_index(str(path), [full])
    assert path.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["index.fgi", "intact.tar"]  # no temporary file left behind


def test_save_index_over_the_index_it_was_loaded_from(tmp_path, intact):
    _, full = intact
    path = str(tmp_path / "i.fgi")
    save_index(path, [full])
    again = load_index(path)  # memory-mapped, then replaced while mapped (incremental `fastgen index`)
    save_index(path, list(again.values()))
    assert_same(full, load_index(path)[full.url])


def test_save_index_refuses_a_url_twice(tmp_path, intact):
    _, full = intact
    with pytest.raises(ValueError, match=re.escape(f"shard {full.url!r} appears twice")):
        save_index(str(tmp_path / "i.fgi"), [full, full])


def good_file(tmp_path, intact):
    path = tmp_path / "good.fgi"
    save_index(str(path), [intact[1]])
    return path.read_bytes()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda good: b"", "is empty, not a fastgen shard index; rebuild it with `fastgen index`"),
        (lambda good: b'{"format": "fastgen-wds-index", "version": 1, "shards": {}}', "is a JSON shard index of an older fastgen-dm; rebuild it with `fastgen index`"),
        (lambda good: b"PK\x03\x04" + good[4:], "is not a fastgen shard index (its first bytes are b'PK\\x03\\x04"),
        (lambda good: good[:8] + struct.pack("<I", 7) + good[12:], "shard index version 7 is not supported (supported: 2); rebuild it with `fastgen index`"),
        (lambda good: good[:30], "is truncated (30 bytes, its header alone needs"),
        (lambda good: good[:-40], "is truncated (" ),
        (lambda good: good[:20] + b"[" + good[21:], "corrupt shard index header (JSONDecodeError"),
    ],
)
def test_load_index_errors_name_the_file(tmp_path, intact, damage, message):
    path = tmp_path / "fastgen_index.fgi"
    path.write_bytes(damage(good_file(tmp_path, intact)))
    with pytest.raises(ValueError, match=re.escape(f"{path}") + ".*" + re.escape(message)) as info:
        load_index(str(path))
    assert "\n" not in str(info.value)


def test_load_index_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_index(str(tmp_path / "nope.fgi"))


def test_sizes_keep_the_member_they_are_of_and_older_files_without_it_load(tmp_path):
    def shard(name, sizes=None, sizes_of=None):
        return ShardIndex(f"/d/{name}.tar", 2048, ("a",), [0], [1024], sizes=sizes, sizes_of=sizes_of)

    path = str(tmp_path / "i.fgi")
    save_index(path, [shard("0", [[8, 6, 4]], "mp4"), shard("1", [[4, 4, 2]], "mp4")])
    loaded = load_index(path)
    assert [(s.sizes.tolist(), s.sizes_of) for s in loaded.values()] == [([[8, 6, 4]], "mp4"), ([[4, 4, 2]], "mp4")]
    assert header(path)[2]["sizes_of"] == "mp4"
    save_index(path, [shard("0", [[8, 6]]), shard("1", [[4, 4]])])  # as written before the member was recorded
    assert "sizes_of" not in header(path)[2]
    assert [(s.sizes.tolist(), s.sizes_of) for s in load_index(path).values()] == [([[8, 6]], None), ([[4, 4]], None)]
    # all or none: sizes of two members (or of some shards only) are not written
    for shards in ([shard("0", [[8, 6, 4]], "mp4"), shard("1", [[4, 4, 2]], "latent.pth")], [shard("0", [[8, 6]], "jpg"), shard("1")]):
        save_index(path, shards)
        assert all(s.sizes is None and s.sizes_of is None for s in load_index(path).values())
