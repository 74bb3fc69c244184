"""Read samples out of WebDataset tar shards: exact byte runs, or a whole shard in order.

Read once: a worker told to read samples ``i..j`` of a shard fetches
``[starts[i], ends[j])`` of it (see :class:`fastgen_dm.index.ShardIndex`) with one exact range
request and nothing more, then splits the bytes into samples with :func:`split_sample`::

    runs = [index.byte_range(0, 8), index.byte_range(40, 48)]   # samples 0..7 and 40..47
    for (start, end), blob in zip(runs, read_runs(index.url, runs)):
        ...  # blob[starts[k] - start : ends[k] - start] is sample k; split_sample(...) it

Without an index (resampled mode, counting samples) :func:`iter_shard` reads a whole shard in
order. Samples follow webdataset's grouping (:func:`fastgen_dm.format.tar.sample_members`).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from fastgen_dm.format.tar import STREAM_BLOCK_BYTES, ShardReadError, sample_members, split_sample, walk_members
from fastgen_dm.storage import BlockReader, ByteCounter, RangeSource

__all__ = ["ByteCounter", "ShardReadError", "iter_shard", "read_runs", "split_sample"]


def _validate_runs(url: str, runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    checked: list[tuple[int, int]] = []
    for k, run in enumerate(runs):
        start, end = (int(x) for x in run)
        if not 0 <= start < end:
            raise ValueError(f"read_runs({url!r}): runs[{k}] = {tuple(run)} must satisfy 0 <= start < end")
        if checked and start < checked[-1][1]:
            raise ValueError(
                f"read_runs({url!r}): runs[{k}] = {tuple(run)} starts before runs[{k - 1}] = {checked[-1]} ends; "
                "runs must be ascending and must not overlap"
            )
        checked.append((start, end))
    return checked


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Requests for ``runs``: touching runs share one. [(0,5),(5,9),(12,20)] -> [(0,9,[..2]),(12,20,[..1])]."""
    requests: list[tuple[int, int, list[tuple[int, int]]]] = []
    for start, end in runs:
        if requests and requests[-1][1] == start:
            requests[-1] = (requests[-1][0], end, requests[-1][2] + [(start, end)])
        else:
            requests.append((start, end, [(start, end)]))
    return requests


def read_runs(
    url: str,
    runs: Sequence[tuple[int, int]],
    storage_options: Mapping[str, Any] | None = None,
    counter: ByteCounter | None = None,
) -> Iterator[bytes]:
    """Yield the bytes of each run ``(start, end)`` of a shard, reading nothing else.

    Each request is one exact range read (seek+read for local files, ``fs.cat_file(path,
    start, end)`` otherwise), with no read-ahead past ``end``; runs that touch
    (``end == next start``) share one request. The file opens on the first ``next``.

    Args:
        url: Shard path, ``file://`` or fsspec URL.
        runs: Byte ranges, ascending and not overlapping, e.g. from ``ShardIndex.byte_range``.
        storage_options: fsspec options for remote URLs.
        counter: Adds each request's bytes.

    Raises:
        ValueError: Runs out of order, overlapping or empty (raised at the call).
        ShardReadError: The shard ends before a run does (truncated or rewritten since it was
            indexed); the runs before it, even in the same request, are yielded first.
    """
    requests = _merge(_validate_runs(url, runs))
    return _read_requests(url, requests, storage_options, counter)


def _read_requests(
    url: str,
    requests: list[tuple[int, int, list[tuple[int, int]]]],
    storage_options: Mapping[str, Any] | None,
    counter: ByteCounter | None,
) -> Iterator[bytes]:
    if not requests:
        return
    with RangeSource(url, storage_options, counter) as source:
        for req_start, req_end, parts in requests:
            data = source.read(req_start, req_end)
            if len(parts) == 1 and len(data) == req_end - req_start:
                yield data  # the common case: no copy
                continue
            view = memoryview(data)
            for start, end in parts:
                if end - req_start > len(data):
                    raise ShardReadError(
                        url, req_start + len(data),
                        f"run [{start}, {end}) needs bytes up to {end} but the read from {req_start} ended after "
                        f"{len(data)} bytes; was the shard truncated or rewritten since it was indexed?",
                    )
                yield bytes(view[start - req_start : end - req_start])


def iter_shard(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    counter: ByteCounter | None = None,
    block_bytes: int = STREAM_BLOCK_BYTES,
) -> Iterator[tuple[str, dict[str, bytes] | ShardReadError]]:
    """Yield ``(key, {suffix: data})`` for every sample of a whole shard, reading it in order.

    For resampled mode and for counting. A bad sample (a suffix twice) comes as ``(key,
    ShardReadError)`` and the walk goes on; damage that ends the tar (a cut or corrupt header,
    data past the end) comes once as ``(key or "?", ShardReadError)`` for the sample in progress,
    which may have lost members, and ends the walk.

    Args:
        url: Shard path, ``file://`` or fsspec URL.
        storage_options: fsspec options for remote URLs.
        counter: Adds each request's bytes.
        block_bytes: Bytes per request; each byte is fetched once.
    """
    with RangeSource(url, storage_options, counter) as source:
        f = BlockReader(source, block_bytes)
        key: str | None = None
        members: dict[str, bytes] = {}
        bad: ShardReadError | None = None
        try:
            for member_key, suffix, member in sample_members(walk_members(f, url, source.size)):
                if key is not None and member_key != key:
                    yield key, bad or members
                    members, bad = {}, None
                key = member_key
                f.seek(member.data_offset)
                data = f.read(member.size)
                if len(data) != member.size:
                    raise ShardReadError(
                        url, member.header_offset, f"member {member.name!r} has {len(data)} of its {member.size} bytes: truncated"
                    )
                if suffix in members:
                    bad = ShardReadError(url, member.header_offset, f"sample {key!r} has suffix {suffix!r} twice")
                members[suffix] = data
        except ShardReadError as err:
            yield (key if key is not None else "?"), err
            return
        if key is not None:
            yield key, bad or members
