"""Byte offsets of the samples in WebDataset tar shards, found by walking member headers.

A shard is a plain (uncompressed) tar. Samples follow webdataset's convention: a member
``dir/name.ext1.ext2`` has key ``dir/name`` and suffix ``ext1.ext2`` (lower-cased), and
consecutive members with one key form one sample. For each sample the index keeps where its
first member's header starts and where its last member's data ends (rounded up to the next
512-byte header), so a reader can fetch exactly ``[starts[i], ends[j - 1])`` for samples
``i..j-1`` and nothing else. Example, a shard of two samples of two members each (sizes 10 and
600 bytes, ustar headers of 512 bytes)::

    offset    0: header a.jpg    512: data (10 B, padded to 512)
    offset 1024: header a.json  1536: data (600 B, padded to 1024)
    offset 2560: header b.jpg   ...
    -> keys ("a", "b"), starts [0, 2560], ends [2560, 5120]

Walking the headers seeks over member data: indexing a shard of 1 MB members reads a few
percent of it (:func:`index_shard`). The index of many shards is one JSON file
(:func:`save_index`, :func:`load_index`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import tarfile
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import numpy as np

from fastgen_dm.storage import is_local, open_url, resolve_fs

logger = logging.getLogger(__name__)

INDEX_FORMAT = "fastgen-wds-index"
INDEX_VERSION = 1

BLOCK = tarfile.BLOCKSIZE  # 512: tar headers and data paddings are multiples of it
INDEX_BLOCK_BYTES = 32 << 10  # bytes fetched per request while walking headers (one request per member at most)
STREAM_BLOCK_BYTES = 8 << 20  # bytes fetched per request when a whole shard is read in order

# webdataset.tariterators: ``base_plus_ext`` and the meta-file rules of ``tar_file_iterator``.
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class ShardReadError(ValueError):
    """A shard (or a byte range of it) is not a readable tar: truncated, corrupt or unsupported.

    Args:
        url: The shard, as listed.
        offset: Byte offset in the shard where the damage was found.
        cause: What is wrong (a message or the underlying exception).
    """

    def __init__(self, url: str, offset: int, cause: str | BaseException) -> None:
        super().__init__(url, offset, cause)  # args as given, so the error pickles across processes
        self.url = url
        self.offset = offset
        self.cause = cause

    def __str__(self) -> str:
        cause = self.cause if isinstance(self.cause, str) else f"{type(self.cause).__name__}: {self.cause}"
        return f"{self.url}: {cause} (at byte {self.offset})"


@dataclass
class ByteCounter:
    """Bytes and requests fetched from storage, to measure read amplification.

    Read amplification of an epoch is ``bytes_read / total shard bytes``: 1.0 when every byte is
    read once. One counter per worker; it is not thread-safe.
    """

    bytes_read: int = 0
    requests: int = 0

    def add(self, num_bytes: int) -> None:
        """Count one request that returned ``num_bytes``."""
        self.bytes_read += num_bytes
        self.requests += 1


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """Keys and byte ranges of the samples of one tar shard.

    Args:
        url: The shard URL exactly as listed; it is the shard's identity (two datatags each
            holding ``00000.tar`` are two shards).
        size: Bytes of the shard file when it was indexed.
        keys: Sample keys in tar order.
        starts: int64 of shape (count,): offset of each sample's first member header (its pax
            or GNU long-name header when it has one).
        ends: int64 of shape (count,): offset just past each sample's last member data, rounded
            up to 512 (where the next header starts).
        truncated_at: None for a whole shard; for a damaged shard indexed with
            ``partial_ok=True``, the offset where the damage was found (the samples listed are
            the complete ones before it).
    """

    url: str
    size: int
    keys: tuple[str, ...]
    starts: np.ndarray = field(repr=False)
    ends: np.ndarray = field(repr=False)
    truncated_at: int | None = None

    def __post_init__(self) -> None:
        starts = np.array(self.starts, dtype=np.int64)  # a copy, made read-only: the index is shared by reference
        ends = np.array(self.ends, dtype=np.int64)
        starts.setflags(write=False)
        ends.setflags(write=False)
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "ends", ends)
        object.__setattr__(self, "keys", tuple(self.keys))
        _validate_ranges(self)

    @property
    def count(self) -> int:
        """Number of samples."""
        return len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def without(self, ignored: frozenset[str]) -> "ShardIndex":
        """This index minus the samples whose key is in ``ignored``."""
        if not ignored:
            return self
        keep = np.array([k not in ignored for k in self.keys], dtype=bool)
        return ShardIndex(self.url, self.size, tuple(k for k, m in zip(self.keys, keep) if m), self.starts[keep], self.ends[keep])

    def byte_range(self, first: int, stop: int) -> tuple[int, int]:
        """The one byte run ``(start, end)`` holding samples ``first .. stop - 1``.

        Example: ``byte_range(2, 5) == (starts[2], ends[4])``.
        """
        if not 0 <= first < stop <= self.count:
            raise ValueError(f"{self.url}: sample range [{first}, {stop}) is not within the shard's {self.count} samples")
        return int(self.starts[first]), int(self.ends[stop - 1])


def _validate_ranges(index: ShardIndex) -> None:
    n = len(index.keys)
    if index.starts.shape != (n,) or index.ends.shape != (n,):
        raise ValueError(
            f"{index.url}: index has {n} keys but starts of shape {index.starts.shape} and ends of shape {index.ends.shape}"
        )
    if n == 0:
        return
    problems = []
    if index.starts[0] < 0:
        problems.append(f"starts[0]={index.starts[0]} is negative")
    bad = np.flatnonzero(index.ends <= index.starts)
    if bad.size:
        problems.append(f"sample {bad[0]} ends ({index.ends[bad[0]]}) at or before it starts ({index.starts[bad[0]]})")
    bad = np.flatnonzero(index.starts[1:] < index.ends[:-1])
    if bad.size:
        problems.append(f"sample {bad[0] + 1} starts ({index.starts[bad[0] + 1]}) before sample {bad[0]} ends")
    if index.ends[-1] > index.size:
        problems.append(f"the last sample ends at {index.ends[-1]}, past the shard size {index.size}")
    if problems:
        raise ValueError(f"{index.url}: inconsistent shard index: {'; '.join(problems)}")


def split_name(name: str) -> tuple[str, str] | None:
    """Key and suffix of a tar member name, or None when webdataset ignores the member.

    ``"a/b/000001.latent.PTH"`` -> ``("a/b/000001", "latent.pth")``. Ignored: names without a
    dot in their base name, webdataset's meta files (``__key__``, ``__x__/...``) and, unlike
    webdataset, base names starting with a dot (``._000001.jpg`` written by macOS; webdataset
    would file it under the key ``dir/``).
    """
    if posixpath.basename(name).startswith("."):
        return None
    if "/" not in name and name.startswith("__") and name.endswith("__"):
        return None
    if _META.match(name):
        return None
    match = _BASE_PLUS_EXT.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


@dataclass(frozen=True)
class TarMember:
    """One member of a tar, as its headers describe it.

    Args:
        name: Full member path (after pax / GNU long-name headers).
        header_offset: Offset of its first header block (the pax or long-name header, if any).
        data_offset: Offset of its data.
        size: Bytes of data.
        regular: Whether it is a regular file (directories, links and devices are not).
        next_offset: Where the next header starts: the data end rounded up to 512.
    """

    name: str
    header_offset: int
    data_offset: int
    size: int
    regular: bool
    next_offset: int


def _first_error(f: BinaryIO, url: str, base_offset: int, err: Exception) -> ShardReadError:
    f.seek(0)
    head = f.read(BLOCK)
    if not head:
        return ShardReadError(url, base_offset, "empty file, not a tar")
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return ShardReadError(
                url, base_offset, f"{kind}-compressed tar; byte-range reads need an uncompressed tar (rewrite it without {kind})"
            )
    return ShardReadError(url, base_offset, f"not a tar file, or a corrupt first member header ({err})")


def walk_members(f: BinaryIO, url: str, size: int, base_offset: int = 0, warn_missing_end: bool = True) -> Iterator[TarMember]:
    """Yield the members of the tar in ``f`` in order, seeking over their data.

    Stricter than :mod:`tarfile`, which ends quietly at a cut or corrupt header: here a partial
    header, a non-tar header or data running past the end raise. The tar may end without its
    two zero blocks (a byte range of a shard never has them); ``warn_missing_end`` logs that.

    Args:
        f: Seekable binary file positioned anywhere; offsets are relative to its start.
        url: Shard URL for the errors.
        size: Bytes in ``f``.
        base_offset: Added to every offset reported (``f`` holds a range starting there).
        warn_missing_end: Log a warning when the tar ends without the end-of-archive blocks.

    Raises:
        ShardReadError: Truncated or corrupt tar; ``offset`` is where (plus ``base_offset``).
    """
    f.seek(0)
    try:
        tf = tarfile.TarFile(fileobj=f, mode="r", encoding="utf-8", errors="surrogateescape")
    except (tarfile.TarError, EOFError, UnicodeError) as err:
        raise _first_error(f, url, base_offset, err) from err
    last: TarMember | None = None
    while True:
        if last is not None and last.next_offset > size:
            raise ShardReadError(
                url, base_offset + last.header_offset,
                f"member {last.name!r} needs {last.next_offset - last.data_offset} bytes of data (with padding) but the "
                f"file has {max(size - last.data_offset, 0)}: truncated",
            )
        try:
            info = tf.next()
        except (tarfile.TarError, EOFError, UnicodeError) as err:
            raise ShardReadError(url, base_offset + tf.offset, f"corrupt member header ({err})") from err
        if info is None:
            break
        tf.members = []  # tarfile keeps every TarInfo otherwise; the index keeps what it needs
        if info.type == tarfile.GNUTYPE_SPARSE or info.sparse is not None:
            raise ShardReadError(
                url, base_offset + info.offset, f"member {info.name!r} is a sparse file; shards cannot hold sparse files"
            )
        last = TarMember(info.name, info.offset, info.offset_data, info.size, info.isreg(), tf.offset)
        yield last
    # tarfile stops at the first block it cannot parse as a header; tell the end marker from damage.
    f.seek(tf.offset)
    tail = f.read(BLOCK)
    if len(tail) == 0:
        if warn_missing_end:
            logger.warning("%s ends without the tar end-of-archive blocks; it may have been cut at a member boundary", url)
    elif len(tail) < BLOCK:
        raise ShardReadError(url, base_offset + tf.offset, f"truncated member header ({len(tail)} of {BLOCK} bytes)")
    elif tail.count(0) != BLOCK:
        raise ShardReadError(url, base_offset + tf.offset, "corrupt member header (bad checksum or format)")


class RangeSource:
    """Exact byte-range reads of one file: seek+read for local files, ``fs.cat_file`` otherwise.

    No request reads past the ``end`` it is given (s3fs's file objects read ahead by default,
    which would read bytes another worker owns). Open lazily; close with :meth:`close` or ``with``.

    Args:
        url: Path, ``file://`` or fsspec URL.
        storage_options: fsspec options for remote URLs.
        counter: Adds each request's bytes.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, counter: ByteCounter | None = None) -> None:
        self.url = url
        self.counter = counter
        self._fs, self._path = resolve_fs(url, storage_options)
        self._local: BinaryIO | None = open(self._path, "rb", buffering=0) if is_local(url) else None
        self._size: int | None = None

    @property
    def size(self) -> int:
        """Bytes in the file (one stat or HEAD request, once)."""
        if self._size is None:
            self._size = os.fstat(self._local.fileno()).st_size if self._local is not None else int(self._fs.size(self._path))
        return self._size

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; fewer when the file ends before ``end``."""
        assert 0 <= start <= end, (start, end)
        if start == end:
            return b""
        if self._local is not None:
            self._local.seek(start)
            parts, want = [], end - start
            while want > 0:  # a raw read may return less than asked for large sizes
                part = self._local.read(want)
                if not part:
                    break
                parts.append(part)
                want -= len(part)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        elif self._size is not None and start >= self._size:
            data = b""
        else:
            try:
                data = self._fs.cat_file(self._path, start=start, end=end)
            except OSError:
                # S3 answers a range starting past the end with an error (416), not with nothing.
                if start < self.size:
                    raise
                data = b""
        if self.counter is not None:
            self.counter.add(len(data))
        return data

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> RangeSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockReader(io.RawIOBase):
    """A seekable file over a :class:`RangeSource` fetching at least ``block_bytes`` per request.

    It keeps the last fetched block and never fetches a byte twice when reads move forward,
    so seeking over member data costs nothing and reading in order reads each byte once.
    """

    def __init__(self, source: RangeSource, block_bytes: int) -> None:
        super().__init__()
        if block_bytes < BLOCK:
            raise ValueError(f"block_bytes must be >= {BLOCK}, got {block_bytes}")
        self._source = source
        self._block_bytes = block_bytes
        self._pos = 0
        self._buf = b""
        self._buf_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._source.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        size = self._source.size
        start = self._pos
        stop = size if n is None or n < 0 else min(start + n, size)
        if stop <= start:
            return b""
        buf_end = self._buf_start + len(self._buf)
        if self._buf_start <= start and stop <= buf_end:
            out = self._buf[start - self._buf_start : stop - self._buf_start]
        else:
            head, fetch_from = b"", start
            if self._buf_start <= start < buf_end:  # keep the cached part; fetch only what follows it
                head, fetch_from = self._buf[start - self._buf_start :], buf_end
            fetch_to = min(max(stop, fetch_from + self._block_bytes), size)
            self._buf, self._buf_start = self._source.read(fetch_from, fetch_to), fetch_from
            out = head + self._buf[: stop - fetch_from]
        self._pos = start + len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def index_shard(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    partial_ok: bool = False,
    counter: ByteCounter | None = None,
    block_bytes: int = INDEX_BLOCK_BYTES,
) -> ShardIndex:
    """Keys and byte ranges of the samples of one shard, reading its headers only.

    Args:
        url: Shard path, ``file://`` or fsspec URL; kept as given in the result.
        storage_options: fsspec options for remote URLs.
        partial_ok: On a truncated or corrupt shard, return the samples before the damage
            (without the last one, which may have lost members) and set ``truncated_at``,
            instead of raising.
        counter: Adds the bytes fetched (e.g. to compare with the shard size).
        block_bytes: Bytes fetched per request. Each member costs at most one request of this
            size, so a shard of 1 MB members is indexed reading about 3% of it; small members
            share requests.

    Raises:
        ShardReadError: The shard is empty, not a tar, compressed, truncated or corrupt (unless
            ``partial_ok``).
    """
    keys: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    with RangeSource(url, storage_options, counter) as source:
        size = source.size
        try:
            for member in walk_members(BlockReader(source, block_bytes), url, size):
                parts = split_name(member.name) if member.regular else None
                if parts is None:
                    continue
                if not keys or parts[0] != keys[-1]:
                    keys.append(parts[0])
                    starts.append(member.header_offset)
                    ends.append(member.next_offset)
                else:
                    ends[-1] = member.next_offset
        except ShardReadError as err:
            if not partial_ok:
                raise
            # The sample in progress may have had more members after the damage: drop it.
            logger.warning("%s; indexing the %d complete samples before it", err, max(len(keys) - 1, 0))
            return ShardIndex(url, size, tuple(keys[:-1]), starts[:-1], ends[:-1], truncated_at=err.offset)
    return ShardIndex(url, size, tuple(keys), starts, ends)


def index_shards(
    urls: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
    num_threads: int = 8,
    show_progress: bool = True,
    previous: Mapping[str, ShardIndex] | None = None,
    partial_ok: bool = False,
    block_bytes: int = INDEX_BLOCK_BYTES,
) -> list[ShardIndex]:
    """Index many shards in parallel threads (the work is waiting on storage), in input order.

    Args:
        urls: Shard URLs; each appears once.
        storage_options: fsspec options for remote URLs.
        num_threads: Shards indexed at once.
        show_progress: Show a tqdm bar.
        previous: An earlier index (e.g. from :func:`load_index`): a shard found there with an
            unchanged size is reused without reading it (one stat or HEAD request).
        partial_ok: See :func:`index_shard`; otherwise the first damaged shard raises.
        block_bytes: See :func:`index_shard`.

    Raises:
        ShardReadError: A damaged shard (unless ``partial_ok``).
        ValueError: ``num_threads`` below 1 or a URL listed twice.
    """
    from tqdm.auto import tqdm

    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    urls = list(urls)
    if len(set(urls)) != len(urls):
        twice = sorted({u for u in urls if urls.count(u) > 1})
        raise ValueError(f"urls lists {twice[:3]} more than once; each shard must appear once")
    previous = previous or {}

    def one(url: str) -> tuple[ShardIndex, bool]:
        old = previous.get(url)
        if old is not None and (old.truncated_at is None or partial_ok):
            fs, path = resolve_fs(url, storage_options)
            if int(fs.size(path)) == old.size:
                return old, True
        return index_shard(url, storage_options, partial_ok=partial_ok, block_bytes=block_bytes), False

    results: list[ShardIndex | None] = [None] * len(urls)
    reused = 0
    with ThreadPoolExecutor(max_workers=num_threads) as pool, tqdm(
        total=len(urls), unit="shard", desc="index shards", disable=not show_progress
    ) as bar:
        futures = {pool.submit(one, url): k for k, url in enumerate(urls)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                results[futures[future]], was_reused = future.result()
                reused += was_reused
                bar.update(1)
    logger.info("indexed %d shards (%d reused unchanged)", len(urls), reused)
    return [r for r in results if r is not None]


def _shard_json(index: ShardIndex) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "size": index.size,
        "keys": list(index.keys),
        "starts": index.starts.tolist(),
        "ends": index.ends.tolist(),
    }
    if index.truncated_at is not None:
        entry["truncated_at"] = index.truncated_at
    return entry


def save_index(path: str, shards: Sequence[ShardIndex], storage_options: Mapping[str, Any] | None = None) -> None:
    """Write the index of ``shards`` as one JSON file, atomically.

    Layout: ``{"format": "fastgen-wds-index", "version": 1, "shards": {"<url>": {"size": int,
    "keys": [...], "starts": [...], "ends": [...]}}}`` (plus ``"truncated_at"`` for a shard
    indexed partially). A local file is written under a temporary name and renamed into place;
    a remote one is uploaded in one request, so readers never see half a file either way.

    Raises:
        ValueError: Two shards with one URL.
    """
    table: dict[str, Any] = {}
    for shard in shards:
        if shard.url in table:
            raise ValueError(f"save_index({path!r}): shard {shard.url!r} appears twice")
        table[shard.url] = _shard_json(shard)
    data = json.dumps({"format": INDEX_FORMAT, "version": INDEX_VERSION, "shards": table}, separators=(",", ":")).encode()
    fs, fs_path = resolve_fs(path, storage_options)
    if not is_local(path):
        fs.pipe_file(fs_path, data)
        return
    target = os.path.abspath(fs_path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_index(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, ShardIndex]:
    """Read an index written by :func:`save_index`: shard URL -> :class:`ShardIndex`, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not JSON, another format or version, or inconsistent entries; the message
            names the file.
    """
    with open_url(path, "rb", storage_options) as f:
        raw = f.read()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a fastgen shard index: not JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path} is not a fastgen shard index: format is {found!r}, expected {INDEX_FORMAT!r}")
    if doc.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{path}: shard index version {doc.get('version')!r} is not supported (supported: {INDEX_VERSION}); "
            "rebuild it with `fastgen index`"
        )
    shards = doc.get("shards")
    if not isinstance(shards, dict):
        raise ValueError(f"{path}: 'shards' must be an object mapping shard URL to its entry, got {type(shards).__name__}")
    out: dict[str, ShardIndex] = {}
    for url, entry in shards.items():
        try:
            out[url] = ShardIndex(
                url, int(entry["size"]), tuple(entry["keys"]), entry["starts"], entry["ends"], entry.get("truncated_at")
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: bad entry for shard {url!r}: {type(err).__name__}: {err}") from err
    return out
