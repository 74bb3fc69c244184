"""The shard index file: one binary file of raw little-endian arrays, memory-mapped when local.

Layout (``fastgen_index.fgi``)::

    bytes 0..7     magic  b"FGINDEX\\0"
    bytes 8..11    version, uint32 LE (2)
    bytes 12..19   header length H, uint64 LE
    bytes 20..     header: UTF-8 JSON of O(shards) metadata
                   {"shards": [{"url", "size", "count", "truncated_at"}, ...],
                    "arrays": {"<name>": {"dtype": "<i8", "offset": int, "length": int}, ...},
                    "sizes_of": "<member suffix of the sizes>" (with sizes; older files lack it)}
    then, each at an offset aligned to 64 bytes, the arrays
      first      int64 (shards + 1,): shard s holds samples first[s] .. first[s + 1] - 1
      starts     int64 (samples,)   ends  int64 (samples,)
      key_offsets int64 (samples + 1,): key i is keys[key_offsets[i] : key_offsets[i + 1]]
      keys       uint8 (key bytes,): the UTF-8 keys, concatenated
      sizes      int32 (samples * 2,) or (samples * 3,), optional: each sample's image (width,
                 height) or video or tensor (width, height, frames), written when every shard
                 has those of one member (``fastgen index --sizes``); older files lack it

A local file is memory-mapped: loading costs O(shards) (the JSON and ``first``), and a process
touches only the pages of the shards it reads, pages that every process on the node shares
through the page cache. A remote file is read whole (fetch it once per node).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import numpy as np

from fastgen_dm.index.shard_index import KeyList, ShardIndex
from fastgen_dm.storage import AtomicPath, is_local, open_url, resolve_fs

MAGIC = b"FGINDEX\0"
VERSION = 2  # version 1 was the JSON index (fastgen_index.json)
_PREAMBLE = struct.Struct("<8sIQ")  # magic, version, header length
_ALIGN = 64
_REBUILD = "rebuild it with `fastgen index`"


def save_index(path: str, shards: Sequence[ShardIndex], storage_options: Mapping[str, Any] | None = None) -> None:
    """Write the index of ``shards`` as one binary file, atomically.

    A local file is written under a temporary name and renamed into place; a remote one is
    uploaded in one request, so readers never see half a file either way.

    Raises:
        ValueError: Two shards with one URL.
    """
    seen: set[str] = set()
    for shard in shards:
        if shard.url in seen:
            raise ValueError(f"save_index({path!r}): shard {shard.url!r} appears twice")
        seen.add(shard.url)
    compact = [shard.keys.compact() for shard in shards]
    counts = np.array([shard.count for shard in shards], dtype=np.int64)
    samples = int(counts.sum())
    lengths = {
        "first": (np.int64, len(shards) + 1),
        "starts": (np.int64, samples),
        "ends": (np.int64, samples),
        "key_offsets": (np.int64, samples + 1),
        "keys": (np.uint8, sum(blob.size for blob, _ in compact)),
    }
    # all or none: a loaded index either knows every sample's size, of one member, or none
    kinds = {(0, None) if shard.sizes is None else (int(shard.sizes.shape[1]), shard.sizes_of) for shard in shards}
    with_sizes = len(kinds) == 1 and (0, None) not in kinds
    sizes_of = None
    if with_sizes:
        columns, sizes_of = kinds.pop()
        lengths["sizes"] = (np.int32, columns * samples)
    meta = [
        {"url": shard.url, "size": shard.size, "count": shard.count, "truncated_at": shard.truncated_at}
        for shard in shards
    ]
    table, header, total = _layout(meta, lengths, {} if sizes_of is None else {"sizes_of": sizes_of})
    first = np.zeros(len(shards) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])

    def chunks() -> Iterator[tuple[str, np.ndarray]]:
        yield "first", first
        for shard in shards:
            yield "starts", shard.starts
        for shard in shards:
            yield "ends", shard.ends
        key_base = 0
        for _, offsets in compact:  # one running offset array: each shard's own offsets without their final entry
            yield "key_offsets", offsets[:-1] + key_base
            key_base += int(offsets[-1])
        yield "key_offsets", np.array([key_base], dtype=np.int64)
        for blob, _ in compact:
            yield "keys", blob
        if with_sizes:
            for shard in shards:
                assert shard.sizes is not None
                yield "sizes", shard.sizes.ravel()

    def write(f: BinaryIO) -> None:
        f.write(header)
        for name, array in chunks():
            if f.tell() < table[name]["offset"]:
                f.write(bytes(table[name]["offset"] - f.tell()))
            f.write(np.ascontiguousarray(array, dtype=np.dtype(table[name]["dtype"])).tobytes())
        f.write(bytes(total - f.tell()))  # the padding before empty arrays at the end

    fs, fs_path = resolve_fs(path, storage_options)
    if not is_local(path):
        import io

        buf = io.BytesIO()
        write(buf)
        fs.pipe_file(fs_path, buf.getvalue())
        return
    with AtomicPath(os.path.abspath(fs_path)) as tmp, open(tmp, "wb") as f:
        write(f)


def _layout(meta: list[dict[str, Any]], lengths: Mapping[str, tuple[Any, int]], extra: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], bytes, int]:
    """The array table, the encoded preamble + header (with the ``extra`` fields), and the file size; arrays follow the header at aligned offsets."""
    offset = 0  # header length depends on the offsets' digits: place arrays, encode, repeat until stable
    while True:
        table, at = {}, offset
        for name, (dtype, length) in lengths.items():
            at = -(-at // _ALIGN) * _ALIGN
            table[name] = {"dtype": np.dtype(dtype).newbyteorder("<").str, "offset": at, "length": length}
            at += length * np.dtype(dtype).itemsize
        body = json.dumps({"shards": meta, "arrays": table, **extra}, separators=(",", ":")).encode()
        header = _PREAMBLE.pack(MAGIC, VERSION, len(body)) + body
        if len(header) <= offset:
            return table, header, at
        offset = -(-len(header) // _ALIGN) * _ALIGN


def load_index(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, ShardIndex]:
    """Read an index written by :func:`save_index`: shard URL -> :class:`ShardIndex`, in file order.

    Local files are memory-mapped (the arrays of each :class:`ShardIndex` are read-only views
    of the file); remote files are read whole.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not an index, an old JSON index, another version, or a truncated or
            inconsistent file; the message names the file and says to rebuild it.
    """
    if is_local(path):
        _, local_path = resolve_fs(path, storage_options)
        if os.path.getsize(local_path) == 0:
            raise ValueError(f"{path} is empty, not a fastgen shard index; {_REBUILD}")
        data: np.ndarray = np.memmap(local_path, dtype=np.uint8, mode="r")
    else:
        with open_url(path, "rb", storage_options) as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    head = data[: _PREAMBLE.size].tobytes()
    if head[:1] in (b"{", b"["):
        raise ValueError(f"{path} is a JSON shard index of an older fastgen-dm; {_REBUILD} (it writes fastgen_index.fgi)")
    if len(head) < _PREAMBLE.size or head[:8] != MAGIC:
        raise ValueError(f"{path} is not a fastgen shard index (its first bytes are {head[:8]!r}, not {MAGIC!r}); {_REBUILD}")
    _, version, header_len = _PREAMBLE.unpack(head)
    if version != VERSION:
        raise ValueError(f"{path}: shard index version {version} is not supported (supported: {VERSION}); {_REBUILD}")
    end = _PREAMBLE.size + header_len
    if data.size < end:
        raise ValueError(f"{path} is truncated ({data.size} bytes, its header alone needs {end}); {_REBUILD}")
    try:
        doc = json.loads(data[_PREAMBLE.size : end].tobytes())
        arrays = {name: _array(data, spec, path) for name, spec in doc["arrays"].items()}
        return _shards(doc["shards"], arrays, path, doc.get("sizes_of"))
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt shard index header ({type(err).__name__}: {err}); {_REBUILD}") from err


def _array(data: np.ndarray, spec: Mapping[str, Any], path: str) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    start, length = int(spec["offset"]), int(spec["length"])
    stop = start + length * dtype.itemsize
    if start < 0 or length < 0 or stop > data.size:
        raise ValueError(f"{path} is truncated ({data.size} bytes, its arrays need {stop}); {_REBUILD}")
    return data[start:stop].view(dtype)


def _shards(meta: list[dict[str, Any]], arrays: dict[str, np.ndarray], path: str, sizes_of: str | None) -> dict[str, ShardIndex]:
    first, key_offsets, keys = arrays["first"], arrays["key_offsets"], arrays["keys"]
    starts, ends = arrays["starts"], arrays["ends"]
    sizes = None
    if "sizes" in arrays:
        columns = arrays["sizes"].size // max(starts.size, 1) if starts.size else 2
        if columns not in (2, 3) or arrays["sizes"].size != columns * starts.size:
            raise ValueError(f"{path}: {arrays['sizes'].size} size values for {starts.size} samples; {_REBUILD}")
        sizes = arrays["sizes"].reshape(-1, columns)
    counts = np.array([int(m["count"]) for m in meta], dtype=np.int64)
    if first.shape != (len(meta) + 1,) or not np.array_equal(np.diff(first), counts) or first[-1] != starts.size:
        raise ValueError(f"{path}: the per-shard sample offsets disagree with the shard counts; {_REBUILD}")
    out: dict[str, ShardIndex] = {}
    for s, m in enumerate(meta):
        a, b = int(first[s]), int(first[s + 1])
        try:
            out[m["url"]] = ShardIndex(
                m["url"], int(m["size"]), KeyList(keys, key_offsets[a : b + 1]), starts[a:b], ends[a:b], m["truncated_at"],
                None if sizes is None else sizes[a:b], None if sizes is None else sizes_of, validate=False,
            )  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{path}: bad entry for shard {m['url']!r}: {err}; {_REBUILD}") from err
    return out
