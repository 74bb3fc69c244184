"""The tar format of WebDataset shards: member headers, sample grouping and the one error type.

A shard is a plain (uncompressed) tar. Samples follow webdataset's convention: a member
``dir/name.ext1.ext2`` has key ``dir/name`` and suffix ``ext1.ext2`` (lower-cased), and
consecutive members with one key form one sample (:func:`sample_members`). A member's first
header starts where the previous member's data ends, rounded up to 512 (a 512-byte block)::

    offset    0: pax header a.jpg  512: pax records ("28 mtime=...\\n")   (webdataset writes these)
    offset 1024: header a.jpg     1536: data (10 B, padded to 512)
    offset 2048: pax header a.json ...

Headers are parsed here, not by :mod:`tarfile`: ustar, GNU (``L`` long names) and pax
(``path`` and ``size`` records), octal and base-256 numbers. Every field the walk relies on is
checked (checksum, size, type, record framing) and a bad one ends the walk with a
:class:`ShardReadError` naming the offset, so damaged bytes can never make a walk loop or run
past the file. :func:`walk_members` parses header by header; :func:`scan_members` parses a
whole buffer of headers with numpy at once (what indexing uses) and falls back to the
header-by-header parser for anything but the plain ustar and webdataset pax layouts.
"""

from __future__ import annotations

import logging
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

BLOCK = 512  # tar headers and data paddings are multiples of it
INDEX_BLOCK_BYTES = 32 << 10  # bytes fetched per request while walking headers (one request per member at most)
STREAM_BLOCK_BYTES = 8 << 20  # bytes fetched per request when a whole shard is read in order
SCAN_MAX_BYTES = 4 << 20  # largest buffer scan_members reads at once, where headers lie densely
MAX_EXTENDED_BYTES = 1 << 20  # a pax or long-name header's data is read whole: long names need a few KiB

_ZERO_BLOCK = bytes(BLOCK)
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_REGULAR_TYPES = frozenset(b"0\x007")  # regular file, old-style regular file, contiguous file
_NO_DATA_TYPES = frozenset(b"123456")  # links, devices, directories, fifos: tarfile ignores their size field
_PAX_TYPES = frozenset(b"xgX")  # pax extended header, pax global header, Solaris extended header
_LONG_NAME, _LONG_LINK, _SPARSE, _PAX_GLOBAL = ord("L"), ord("K"), ord("S"), ord("g")
_PLAIN_PAX_KEYS = (b"mtime=", b"atime=", b"ctime=")  # records that change nothing a walk uses
_OCTAL_WEIGHTS = 8 ** np.arange(10, -1, -1, dtype=np.int64)  # the 11 digits of a 12-byte number field


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


def split_name(name: str) -> tuple[str, str] | None:
    """Key and suffix of a tar member name, or None when webdataset ignores the member.

    ``"a/b/000001.latent.PTH"`` -> ``("a/b/000001", "latent.pth")``: the key ends at the first
    dot of the base name. Ignored: names without a dot in their base name, webdataset's meta
    files (``__key__``, ``__x__/...``) and, unlike webdataset, base names starting with a dot
    (``._000001.jpg`` written by macOS; webdataset would file it under the key ``dir/``).
    """
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot <= base:  # no dot in the base name, or a hidden base name
        return None
    if "\n" in name and "." in name[name.rfind("/", 0, name.find("\n")) + 1 : base]:
        return None  # webdataset's regex cannot skip a folder with a dot after a newline ("." stops at "\n")
    if name.startswith("__"):
        slash = name.find("/")
        head = name[:slash] if slash != -1 else name.removesuffix("\n")  # regex "$" also matches before a final newline
        if len(head) >= 4 and head.endswith("__"):
            return None  # "__x__" or "__x__/...": webdataset's meta files
    return name[:dot], name[dot + 1 :].lower()


class TarMember(NamedTuple):
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


def sample_members(members: Iterable[TarMember]) -> Iterator[tuple[str, str, TarMember]]:
    """``(key, suffix, member)`` for each member webdataset puts in a sample, in tar order.

    Consecutive members with one key are one sample; directories, links, meta files and names
    without a suffix are left out (:func:`split_name`).
    """
    for member in members:
        parts = split_name(member.name) if member.regular else None
        if parts is not None:
            yield parts[0], parts[1], member


def split_sample(blob: bytes, url: str, offset: int) -> tuple[str, dict[str, bytes]]:
    """The key and members of the one sample whose bytes are ``blob``.

    Args:
        blob: Bytes ``[starts[i], ends[i])`` of a shard, as read: the sample's member headers
            and data (members webdataset ignores, such as directories, may be among them).
        url: The shard, for errors.
        offset: Where ``blob`` starts in the shard, for errors.

    Returns:
        ``(key, {suffix: data})``, e.g. ``("a/000001", {"latent.pth": b"...", "json": b"..."})``.

    Raises:
        ShardReadError: A bad or cut header, data running past the blob, no member, members of
            several keys, or a suffix twice (webdataset refuses that too).
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    view = memoryview(blob)
    walk = _walk(_Window(lambda start, end: bytes(view[start:end]), len(blob), INDEX_BLOCK_BYTES), url, base_offset=offset, warn_missing_end=False)
    for member_key, suffix, member in sample_members(walk):
        if key is None:
            key = member_key
        elif member_key != key:
            raise ShardReadError(
                url, offset + member.header_offset,
                f"member {member.name!r} has key {member_key!r} inside the byte range of sample {key!r}; is the index stale?",
            )
        if suffix in members:
            raise ShardReadError(url, offset + member.header_offset, f"sample {key!r} has suffix {suffix!r} twice")
        members[suffix] = bytes(view[member.data_offset : member.data_offset + member.size])
    if key is None:
        raise ShardReadError(url, offset, f"no sample member in the {len(blob)} bytes read; is the index stale?")
    return key, members


def walk_members(
    f: BinaryIO, url: str, size: int, base_offset: int = 0, warn_missing_end: bool = True, read_bytes: int = BLOCK
) -> Iterator[TarMember]:
    """Yield the members of the tar in ``f`` in order, seeking over their data.

    Stricter than :mod:`tarfile`, which ends quietly at a cut or corrupt header: here a partial
    header, a bad header field or data running past the end raise. The tar may end without its
    two zero blocks (a byte range of a shard never has them); ``warn_missing_end`` logs that.

    Args:
        f: Seekable binary file positioned anywhere; offsets are relative to its start. The walk
            seeks before each read, so the caller may read member data from ``f`` in between.
        url: Shard URL for the errors.
        size: Bytes in ``f``.
        base_offset: Added to every offset reported (``f`` holds a range starting there).
        warn_missing_end: Log a warning when the tar ends without the end-of-archive blocks.
        read_bytes: Bytes read at a time. The default reads each header alone, so a caller reading
            member data from ``f`` in between (through a :class:`~fastgen_dm.storage.BlockReader`)
            never makes a block be fetched twice.

    Raises:
        ShardReadError: Truncated or corrupt tar; ``offset`` is where (plus ``base_offset``).
    """
    yield from _walk(_Window(_file_reader(f), size, read_bytes), url, base_offset, warn_missing_end)


def scan_members(
    f: BinaryIO,
    url: str,
    size: int,
    read_bytes: int = INDEX_BLOCK_BYTES,
    max_read_bytes: int = SCAN_MAX_BYTES,
    warn_missing_end: bool = True,
) -> Iterator[TarMember]:
    """The members of the tar in ``f``, as :func:`walk_members` yields them, parsed a buffer at a time.

    Plain ustar headers and webdataset's pax headers (one ``mtime`` record) are parsed with
    numpy for a whole buffer at once (checksums included); any other header goes through the
    header-by-header parser, so the members and the errors are those of :func:`walk_members`.
    Reads grow from ``read_bytes`` up to ``max_read_bytes`` while headers lie densely and fall
    back when the walk seeks over large members. ``warn_missing_end`` is that of :func:`walk_members`.

    Raises:
        ShardReadError: Truncated or corrupt tar, as :func:`walk_members` raises it.
    """
    window = _Window(_file_reader(f), size, read_bytes, max_read_bytes)
    pos, exact_steps = 0, 1
    while True:
        members, stop = _scan_buffer(window.get(pos, window.read_bytes), pos, size)
        yield from members
        if stop > pos:
            pos, exact_steps = stop, 1
            continue
        # No plain header at ``pos``: the exact parser takes a few members, more each time the
        # buffer parse fails again, so a shard of unusual headers is not scanned over and over.
        for member in _walk(window, url, 0, warn_missing_end, start=pos, steps=exact_steps):
            yield member
            pos = member.next_offset
        if stop == pos:  # the exact parser ended the walk
            return
        exact_steps = min(exact_steps * 2, 1024)


# -- header-by-header parsing ----------------------------------------------------------------------


class _BadHeader(Exception):
    """A header (or extended header) that cannot be parsed: ``str`` is the message, ``detail`` the bare reason."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


def _corrupt(detail: str) -> _BadHeader:
    return _BadHeader(f"corrupt member header ({detail})", detail)


class _Window:
    """Bytes of a file by offset, fetched ``read_bytes`` or more at a time; keeps the last fetch.

    ``read_bytes`` doubles (up to ``max_read_bytes``) when fetches follow one another densely
    and falls back when the walk seeks far ahead.
    """

    def __init__(self, read: Callable[[int, int], bytes], size: int, read_bytes: int, max_read_bytes: int | None = None) -> None:
        self.size = size
        self.read_bytes = self._min_bytes = read_bytes
        self._max_bytes = max_read_bytes or read_bytes
        self._read = read
        self._buf = b""
        self._start = 0

    def get(self, start: int, n: int) -> bytes:
        """Bytes ``[start, start + n)``, fewer at the end of the file."""
        end = self._start + len(self._buf)
        if self._start <= start and start + n <= end:
            return self._buf[start - self._start : start - self._start + n]
        dense = start <= end + self.read_bytes
        self.read_bytes = min(self.read_bytes * 2, self._max_bytes) if dense else self._min_bytes
        stop = min(self.size, start + max(n, self.read_bytes))
        if self._start <= start < end:  # keep the part already fetched
            self._buf = self._buf[start - self._start :] + self._read(end, stop)
        else:
            self._buf = self._read(start, stop) if start < stop else b""
        self._start = start
        return self._buf[:n]


def _file_reader(f: BinaryIO) -> Callable[[int, int], bytes]:
    def read(start: int, end: int) -> bytes:
        f.seek(start)
        return f.read(end - start)

    return read


def _number(field: bytes, what: str) -> int:
    """A header number: octal digits (space or NUL padded) or base-256 (first byte 0x80 or 0xff)."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if not digits.isdigit() or b"8" in digits or b"9" in digits:
        raise _corrupt(f"{what} field {field!r} is not an octal number")
    return int(digits, 8)


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _number(block[148:156], "checksum")
    except _BadHeader:
        return False
    # Exact byte sums from adler32: each half sums to at most 65,280, below adler's modulus.
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    unsigned = total - sum(block[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored == unsigned:
        return True
    high = sum(1 for b in block[:148] + block[156:] if b >= 128)  # some old tars sum signed bytes
    return stored == unsigned - 256 * high


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """Records ``b"%d %s=%s\\n"`` of a pax header's data, framing checked (the length counts the whole record)."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _BadHeader(f"corrupt pax header (record at {pos} of its data has no decimal length)")
        end = pos + int(digits)
        if end - pos < 5 or end > len(data) or data[end - 1] != 0x0A:
            raise _BadHeader(f"corrupt pax header (record at {pos} of its data claims {int(digits)} bytes)")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not key or not equals:
            raise _BadHeader(f"corrupt pax header (record at {pos} of its data is not 'key=value')")
        records[key] = value
        pos = end
    return records


def _member_at(window: _Window, pos: int) -> TarMember | None:
    """The member whose first header is at ``pos``; None at an end-of-archive block.

    Extended headers (pax, GNU long name/link) come first; like :mod:`tarfile`, the first one
    to give a name (or a size) wins.
    """
    first, size = pos, window.size
    name: str | None = None
    data_size: int | None = None
    while True:
        block = window.get(pos, BLOCK)
        if len(block) < BLOCK:
            if pos != first and not block:
                raise _BadHeader("extended header at the end of the file, without its member")
            raise _BadHeader(f"truncated member header ({len(block)} of {BLOCK} bytes)")
        if block == _ZERO_BLOCK:
            if pos != first:
                raise _BadHeader("extended header followed by the end-of-archive block, without its member")
            return None
        if not _checksum_ok(block):
            raise _corrupt("bad checksum or format")
        kind = block[156]
        n = _number(block[124:136], "size")
        if n < 0:
            raise _corrupt(f"negative size {n}")
        data = pos + BLOCK
        if kind in _PAX_TYPES or kind in (_LONG_NAME, _LONG_LINK):
            if data + n > size:
                raise _BadHeader(f"extended header of {n} bytes runs past the end of the file ({size} bytes)")
            if n > MAX_EXTENDED_BYTES:
                raise _BadHeader(f"extended header of {n} bytes is over the limit of {MAX_EXTENDED_BYTES} bytes (long names need a few KiB)")
            payload = window.get(data, n)
            if kind == _LONG_NAME and name is None:
                name = _text(payload)
            elif kind in _PAX_TYPES:
                records = _pax_records(payload)
                if any(key.startswith(b"GNU.sparse.") for key in records):
                    raise _BadHeader("member is a sparse file (pax GNU.sparse records); shards cannot hold sparse files")
                if kind == _PAX_GLOBAL and (b"path" in records or b"size" in records):
                    raise _BadHeader("pax global header sets 'path' or 'size' for every member; unsupported in shards")
                if name is None and b"path" in records:
                    name = records[b"path"].decode("utf-8", "surrogateescape").rstrip("/")
                if data_size is None and b"size" in records:
                    if not records[b"size"].isdigit():
                        raise _BadHeader(f"corrupt pax header ('size' record {records[b'size']!r} is not a decimal number)")
                    data_size = int(records[b"size"])
            pos = data + _padded(n)
            continue
        own_name = _text(block[0:100])
        if kind == _SPARSE:
            raise _BadHeader(f"member {name or own_name!r} is a sparse file; shards cannot hold sparse files")
        if name is None:
            prefix = _text(block[345:500])
            name = f"{prefix}/{own_name}" if prefix else own_name
        if data_size is not None:
            n = data_size
        regular = kind in _REGULAR_TYPES and not (kind == 0 and own_name.endswith("/"))
        has_data = regular or kind not in _NO_DATA_TYPES
        return TarMember(name, first, data, n, regular, data + _padded(n) if has_data else data)


def _first_error(window: _Window, url: str, base_offset: int, reason: str) -> ShardReadError:
    head = window.get(0, BLOCK)
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return ShardReadError(
                url, base_offset, f"{kind}-compressed tar; byte-range reads need an uncompressed tar (rewrite it without {kind})"
            )
    return ShardReadError(url, base_offset, f"not a tar file, or a corrupt first member header ({reason})")


def _walk(
    window: _Window, url: str, base_offset: int, warn_missing_end: bool, start: int = 0, steps: int | None = None
) -> Iterator[TarMember]:
    """Members from ``start`` on (at most ``steps`` of them), each followed by its data check."""
    pos, size = start, window.size
    while steps is None or steps > 0:
        if pos >= size:
            if size == 0:
                raise ShardReadError(url, base_offset, "empty file, not a tar")
            if warn_missing_end:
                logger.warning("%s ends without the tar end-of-archive blocks; it may have been cut at a member boundary", url)
            return
        try:
            member = _member_at(window, pos)
        except _BadHeader as bad:
            if pos == 0:
                raise _first_error(window, url, base_offset, bad.detail) from None
            raise ShardReadError(url, base_offset + pos, str(bad)) from None
        if member is None:
            return
        yield member
        if member.next_offset > size:
            raise ShardReadError(
                url, base_offset + member.header_offset,
                f"member {member.name!r} needs {member.next_offset - member.data_offset} bytes of data (with padding) but the "
                f"file has {max(size - member.data_offset, 0)}: truncated",
            )
        assert member.next_offset > pos, (url, pos, member)  # sizes are >= 0: every member advances
        pos = member.next_offset
        steps = None if steps is None else steps - 1


# -- a buffer of headers at once -------------------------------------------------------------------


def _octal_column(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of 12-byte number fields written the common way (11 octal digits, then NUL or space), and which are."""
    digits = fields[:, :11].astype(np.int64) - 48
    ok = ((digits >= 0) & (digits < 8)).all(axis=1) & ((fields[:, 11] == 0) | (fields[:, 11] == 32))
    return digits @ _OCTAL_WEIGHTS, ok


def _checksums_ok(headers: np.ndarray) -> np.ndarray:
    """Whether each header row's checksum field (6 octal digits, NUL, space: tarfile's layout) matches its unsigned sum."""
    field = headers[:, 148:156]
    digits = field[:, :6].astype(np.int64) - 48
    layout = ((digits >= 0) & (digits < 8)).all(axis=1) & (field[:, 6] == 0) & (field[:, 7] == 32)
    stored = digits @ _OCTAL_WEIGHTS[5:]
    total = headers.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    return layout & (stored == total)


def _plain_pax(records: bytes) -> bool:
    """Whether pax data is one record that changes nothing a walk uses, as webdataset writes: ``b"28 mtime=1700000000.5\n"``."""
    space = records.find(b" ", 0, 4)
    return (
        space > 0
        and records[:space].isdigit()
        and int(records[:space]) == len(records)
        and records[-1] == 0x0A
        and records[space + 1 : space + 7] in _PLAIN_PAX_KEYS
    )


def _plain_pax_rows(blocks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """For each row, whether the next row is plain pax data of ``sizes[row]`` bytes with a 2-digit length (:func:`_plain_pax`)."""
    rows = blocks.shape[0]
    out = np.zeros(rows, dtype=bool)
    data = blocks[1:]
    tens, ones = data[:, 0].astype(np.int64) - 48, data[:, 1].astype(np.int64) - 48
    length = tens * 10 + ones
    ok = (tens >= 1) & (tens <= 9) & (ones >= 0) & (ones <= 9) & (data[:, 2] == 32) & (length == sizes[:-1])
    key = data[:, 3:9]
    ok &= np.logical_or.reduce([(key == np.frombuffer(k, np.uint8)).all(axis=1) for k in _PLAIN_PAX_KEYS])
    ok &= data[np.arange(rows - 1), np.clip(length - 1, 0, BLOCK - 1)] == 0x0A
    out[:-1] = ok
    return out


def _scan_buffer(buf: bytes, base: int, size: int) -> tuple[list[TarMember], int]:
    """The members whose headers are plain and lie in ``buf`` (file bytes from ``base``), and where they stop.

    Stops before the first header that is not a plain ustar header (with an optional one-record
    pax header before it), that fails its checksum, whose data runs past ``size``, or that
    lies past ``buf``; the exact parser takes it from there.
    """
    rows = len(buf) // BLOCK
    if rows < 2:
        return [], base
    blocks = np.frombuffer(buf, np.uint8, count=rows * BLOCK).reshape(rows, BLOCK)
    kinds = blocks[:, 156]
    sizes, plain = _octal_column(blocks[:, 124:136])
    plain &= blocks[:, 345] == 0  # no ustar name prefix
    plain &= ~((blocks[:, 0] == 95) & (blocks[:, 1] == 95))  # names starting "__" may be meta files
    no_data = np.isin(kinds, list(_NO_DATA_TYPES))
    next_rows = np.arange(rows) + 1 + np.where(no_data, 0, -(-sizes // BLOCK))
    plain &= next_rows <= (size - base) // BLOCK  # data past the end of the file: the exact parser raises
    candidates = np.flatnonzero(plain)
    plain[candidates] = _checksums_ok(blocks[candidates])  # a bad one stops the walk; the exact parser says why
    # Step per row: 1 regular member, 2 member without data, 3 pax header to check, 4 plain pax header, 0 stop.
    steps = np.select(
        [~plain, np.isin(kinds, list(_REGULAR_TYPES - {0})), no_data, (kinds == 120) & (sizes <= BLOCK)], [0, 1, 2, 3], 0
    )
    steps[(steps == 3) & _plain_pax_rows(blocks, sizes)] = 4
    step_list, next_list = steps.tolist(), next_rows.tolist()
    member_rows: list[int] = []
    group_rows: list[int] = []  # each member's first header row (its pax header's, if any)
    row, first = 0, -1
    while row < rows:
        step = step_list[row]
        if step >= 3:  # a pax header whose data is the next block
            if step == 3 and (row + 1 >= rows or not _plain_pax(buf[(row + 1) * BLOCK : (row + 1) * BLOCK + int(sizes[row])])):
                break
            if first < 0:
                first = row
        elif step == 0:
            break
        else:
            member_rows.append(row)
            group_rows.append(first if first >= 0 else row)
            first = -1
        row = next_list[row]
    stop = base + (first if first >= 0 else row) * BLOCK
    if not member_rows:
        return [], stop
    at = np.array(member_rows, dtype=np.int64)
    names = blocks[at, :100]
    lengths = np.where(names.all(axis=1), 100, np.argmin(names, axis=1)).tolist()  # up to the first NUL
    offsets = (at * BLOCK).tolist()
    columns = (
        [buf[o : o + n].decode("utf-8", "surrogateescape") for o, n in zip(offsets, lengths)],
        (base + np.array(group_rows, dtype=np.int64) * BLOCK).tolist(),
        (base + (at + 1) * BLOCK).tolist(),
        sizes[at].tolist(),
        (steps[at] == 1).tolist(),
        (base + next_rows[at] * BLOCK).tolist(),
    )
    return list(map(TarMember._make, zip(*columns))), stop
