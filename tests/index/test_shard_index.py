"""fastgen_dm.index.shard_index: keys as one blob, ranges as read-only int64, ignored keys removed."""

import pickle
import re

import numpy as np
import pytest

from fastgen_dm.index import KeyList, ShardIndex


@pytest.mark.parametrize(
    "keys, starts, ends, size, message",
    [
        (("a",), [0, 1], [1, 2], 10, "index has 1 keys but starts of shape (2,) and ends of shape (2,)"),
        (("a", "b"), [0, 5], [5, 5], 10, "inconsistent shard index: sample 1 ends (5) at or before it starts (5)"),
        (("a", "b"), [0, 4], [5, 9], 10, "inconsistent shard index: sample 1 starts (4) before sample 0 ends"),
        (("a",), [0], [12], 10, "inconsistent shard index: the last sample ends at 12, past the shard size 10"),
        (("a",), [-1], [2], 10, "inconsistent shard index: starts[0]=-1 is negative"),
    ],
)
def test_shard_index_is_validated(keys, starts, ends, size, message):
    with pytest.raises(ValueError, match=re.escape(f"s.tar: {message}")):
        ShardIndex("s.tar", size, keys, starts, ends)


def test_shard_index_arrays_are_read_only_copies():
    starts = [0, 512]
    ends = np.array([512, 1024])
    index = ShardIndex("s.tar", 2048, ["a", "b"], starts, ends)
    assert index.keys == ("a", "b")
    with pytest.raises(ValueError):
        index.starts[0] = 3
    ends[0] = 7
    assert index.ends[0] == 512
    assert index.byte_range(1, 2) == (512, 1024)
    with pytest.raises(ValueError, match=re.escape("s.tar: sample range [1, 3) is not within the shard's 2 samples")):
        index.byte_range(1, 3)


def test_key_list_holds_one_blob_and_offsets():
    keys = KeyList.from_strings(["a", "bc", "", "d/\u00e9"])
    assert keys.blob.dtype == np.uint8 and keys.blob.tobytes() == "abcd/\u00e9".encode()
    np.testing.assert_array_equal(keys.offsets, [0, 1, 3, 3, 7])
    assert len(keys) == 4 and keys[1] == "bc" and keys[-1] == "d/\u00e9" and keys[2] == ""
    assert list(keys) == ["a", "bc", "", "d/\u00e9"]
    assert keys == ("a", "bc", "", "d/\u00e9") and keys == ["a", "bc", "", "d/\u00e9"] and keys != ("a",)
    assert keys[1:3] == ("bc", "") and isinstance(keys[1:3], KeyList) and keys[1:3].blob is keys.blob
    assert keys[::2] == ("a", "")
    assert keys[3:1] == () and len(keys[5:]) == 0
    with pytest.raises(IndexError, match=re.escape("key index 4 is out of range for 4 keys")):
        keys[4]
    assert "bc" in keys and "b" not in keys
    assert keys != "abc"


def test_key_list_round_trips_names_that_are_not_utf8():
    key = b"caf\xe9".decode("utf-8", "surrogateescape")  # a latin-1 tar name
    keys = KeyList.from_strings([key])
    assert keys.blob.tobytes() == b"caf\xe9" and keys[0] == key


def test_without_removes_ignored_keys_and_their_ranges():
    index = ShardIndex("s.tar", 4096, ("a", "b", "c"), [0, 1024, 2048], [1024, 2048, 3072], truncated_at=3072)
    assert index.without(frozenset()) is index and index.without({"zzz"}) is index
    fewer = index.without({"b", "zzz"})
    assert fewer.keys == ("a", "c") and fewer.truncated_at == 3072
    np.testing.assert_array_equal(fewer.starts, [0, 2048])
    np.testing.assert_array_equal(fewer.ends, [1024, 3072])
    assert index.without({"a", "b", "c"}).count == 0


def test_a_key_slice_pickles_only_its_own_keys():
    keys = KeyList.from_strings([f"{k:08d}" for k in range(10_000)])
    part = keys[10:12]
    assert len(pickle.dumps(part)) < 1_000 < len(pickle.dumps(keys))
    again = pickle.loads(pickle.dumps(part))
    assert again == ("00000010", "00000011") and again.offsets[0] == 0


def test_sizes_for_names_the_member_its_sizes_are_of_and_the_command_that_rebuilds_them():
    sized = ShardIndex("/d/00000.tar", 3072, ("a", "b"), [0, 1024], [1024, 2048], sizes=[[8, 6, 4], [8, 6, 0]], sizes_of="latent.pth")
    assert sized.sizes_for("latent.pth", 3).tolist() == [[8, 6, 4], [8, 6, 0]]
    assert sized.without({"b"}).sizes_of == "latent.pth"
    legacy = ShardIndex("/d/00000.tar", 3072, ("a", "b"), [0, 1024], [1024, 2048], sizes=[[8, 6], [4, 4]])  # no member recorded
    bare = ShardIndex("/d/00000.tar", 3072, ("a", "b"), [0, 1024], [1024, 2048])
    assert legacy.sizes_for("jpg", 2).tolist() == [[8, 6], [4, 4]]
    rebuild = "; run `fastgen index --sizes mp4 WDS:/d` again"
    cases = [
        (sized, "/d/00000.tar: the index holds the sizes of its 'latent.pth' members, and these buckets need those of 'mp4'"),
        (legacy, "/d/00000.tar: the index holds (width, height) sizes, and these buckets need (width, height, frames) of its 'mp4' members"),
        (bare, "/d/00000.tar: the index holds no sizes, and these buckets need those of its 'mp4' members"),
    ]
    for index, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message + rebuild)}$"):
            index.sizes_for("mp4", 3)
