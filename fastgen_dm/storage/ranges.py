"""Exact byte-range reads of files by URL, and a seekable file that fetches them in blocks.

Object stores charge per request, so readers ask for exact ranges (:class:`RangeSource`) or for
blocks of at least ``block_bytes`` (:class:`BlockReader`), never for read-ahead past what they own.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping

from fastgen_dm.storage.fs import is_local, resolve_fs

_MIN_BLOCK_BYTES = 512  # one tar block: the smallest read a header walk makes

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
        if block_bytes < _MIN_BLOCK_BYTES:
            raise ValueError(f"block_bytes must be >= {_MIN_BLOCK_BYTES}, got {block_bytes}")
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
