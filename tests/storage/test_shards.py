"""Datatags and shard lists: parsing, numeric order, ranges, repetition."""

import re

import pytest

from fastgen_dm.storage import ShardFile, fit_shard_count, list_shards, parse_datatag, select_shards


def test_shards_sort_by_their_number_then_name(tmp_path):
    for name in ("10.tar", "2.tar", "shard-1.tar", "b.tar", "a.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"x" * len(name))
    names = [f.url.rsplit("/", 1)[-1] for f in list_shards(str(tmp_path))]
    assert names == ["shard-1.tar", "2.tar", "10.tar", "a.tar", "b.tar"]
    assert list_shards(str(tmp_path))[0].size == len("shard-1.tar")
    assert list_shards(f"file://{tmp_path}")[0].url == f"file://{tmp_path}/shard-1.tar"


def test_ranges_are_inclusive_positions_and_num_shards_truncates_or_repeats():
    files = [ShardFile(f"{i}.tar", 1) for i in range(5)]
    assert [f.url for f in select_shards(files, 1, 3)] == ["1.tar", "2.tar", "3.tar"]
    assert [f.url for f in fit_shard_count(files, 2)] == ["0.tar", "1.tar"]
    assert [f.url for f in fit_shard_count(files[:2], 5)] == ["0.tar", "1.tar", "0.tar", "1.tar", "0.tar"]
    with pytest.raises(ValueError, match=re.escape("shard range [3, 1] is empty or negative")):
        select_shards(files, 3, 1)


@pytest.mark.parametrize("tag", ["s3://bucket/x", "WDS:", "wds:/x", None])
def test_malformed_datatags_are_named(tag):
    with pytest.raises(ValueError, match=re.escape(f"datatag {tag!r} is malformed")):
        parse_datatag(tag)


def test_pipe_urls_are_refused():
    with pytest.raises(ValueError, match=re.escape("'pipe:' URLs run shell commands and are refused")):
        list_shards("pipe:curl http://127.0.0.1/x")


def test_fetch_once_resumes_a_partial_copy_and_renames_only_when_complete(tmp_path):
    from fastgen_dm.storage import fetch_once

    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    (dest.parent / "copy.bin.part").write_bytes(source.read_bytes()[:1234])  # an interrupted earlier run
    assert fetch_once(f"file://{source}", dest, show_progress=False) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]


def test_fetching_from_a_host_that_does_not_resolve_says_so(tmp_path):
    import re

    from fastgen_dm.storage import fetch_once

    # .invalid never resolves (RFC 2606), online or not.
    url = "http://cifar.invalid/cifar-10-python.tar.gz"
    message = f"cannot fetch {url!r}: the host cifar.invalid could not be reached ("
    with pytest.raises(FileNotFoundError, match=re.escape(message) + r".*\); are you offline\?$"):
        fetch_once(url, tmp_path / "cifar.tar.gz", show_progress=False)


def test_fetching_a_missing_local_file_says_it_does_not_exist(tmp_path):
    from fastgen_dm.storage import fetch_once

    with pytest.raises(FileNotFoundError, match="it does not exist$"):
        fetch_once(str(tmp_path / "nope.zip"), tmp_path / "copy.zip", show_progress=False)
