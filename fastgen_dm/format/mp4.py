"""A video's (width, height, frames) from an ISO-BMFF file (mp4, mov, m4v) by its boxes, not its data.

The file is a sequence of boxes (4-byte size, 4-byte type; size 1: a 64-bit size follows; size 0:
to the end of the file). Only the top-level headers are read, skipping over each box (the media
data, ``mdat``, is never read), and the ``moov`` box whole, wherever it lies (before or after
``mdat``). In it, the first track whose handler (``mdia/hdlr``) is ``vide`` gives its width and
height (``tkhd``, 16.16 fixed point; else the visual sample entry in ``stsd``) and its frames
(``stbl/stsz`` or ``stz2`` sample count; else the sum of ``stts`` counts).

Malformed input is no size, never an exception or a long read: a box smaller than its header, one
past its parent's end, more than :data:`MAX_BOXES` boxes, a nesting deeper than
:data:`MAX_DEPTH`, or a ``moov`` above :data:`MAX_MOOV_BYTES` gives None. Fragmented files
(samples in ``moof`` boxes) report 0 frames. Other containers (webm, avi) are not ISO-BMFF: None.

Example: a 640x360, 48-frame h264 mp4 -> ``(640, 360, 48)``, reading the first 4 KiB (and the
``moov`` when it is at the end: two or three more reads).
"""

from __future__ import annotations

import struct
from typing import Callable

import numpy as np

VIDEO_EXTENSIONS = frozenset({"mp4", "m4v", "mov"})
MAX_MOOV_BYTES = 64 << 20
MAX_BOXES = 10_000
MAX_DEPTH = 8
HEAD_BYTES = 4096

_CONTAINERS = {b"trak", b"mdia", b"minf", b"stbl"}
_U32 = struct.Struct(">I")


class _Malformed(Exception):
    pass


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, body start, body end) of the boxes in ``data[start:end]``."""
    out = []
    at = start
    while at + 8 <= end:
        size, kind = _U32.unpack_from(data, at)[0], data[at + 4 : at + 8]
        header = 8
        if size == 1:
            if at + 16 > end:
                raise _Malformed
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise _Malformed
        out.append((kind, at + header, at + size))
        if len(out) > MAX_BOXES:
            raise _Malformed
        at += size
    return out


def _track(data: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """(width, height, frames) of the ``trak`` box body ``data[start:end]`` if it is a video track."""
    found: dict[bytes, tuple[int, int]] = {}

    def walk(a: int, b: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Malformed
        for kind, body, stop in _boxes(data, a, b):
            if kind in _CONTAINERS:
                walk(body, stop, depth + 1)
            else:
                found.setdefault(kind, (body, stop))

    walk(start, end, 0)
    hdlr = found.get(b"hdlr")
    if hdlr is None or data[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
        return None
    width = height = 0
    if b"tkhd" in found:
        body, stop = found[b"tkhd"]
        if stop - body >= 8:
            width, height = (v >> 16 for v in struct.unpack_from(">II", data, stop - 8))
    if (not width or not height) and b"stsd" in found:
        body, stop = found[b"stsd"]  # version/flags, entry count, then the first entry: its box header, 6 + 2 + 16 bytes, width, height
        if stop - body >= 8 + 8 + 24 + 4:
            width, height = struct.unpack_from(">HH", data, body + 8 + 8 + 24)
    frames = 0
    for kind in (b"stsz", b"stz2"):
        if kind in found and found[kind][1] - found[kind][0] >= 12:
            frames = _U32.unpack_from(data, found[kind][0] + 8)[0]
            break
    if not frames and b"stts" in found:
        body, stop = found[b"stts"]
        entries = _U32.unpack_from(data, body + 4)[0] if stop - body >= 8 else 0
        entries = min(entries, (stop - body - 8) // 8)
        # (sample count, duration) pairs; summed in numpy: a 64 MiB moov holds 8M of them
        frames = int(np.frombuffer(data, ">u4", count=2 * entries, offset=body + 8)[0::2].sum(dtype=np.uint64))
    return width, height, frames


def video_dims(read: Callable[[int, int], bytes], size: int) -> tuple[int, int, int] | None:
    """(width, height, frames) of the first video track of the ``size``-byte file ``read(start, end)`` returns.

    ``read`` is called for the first :data:`HEAD_BYTES`, then for each top-level box header past
    them and the ``moov`` box. None when the file is not ISO-BMFF, has no video track, or is
    malformed (see the module docs).
    """
    try:
        head = read(0, min(HEAD_BYTES, size))
        at, boxes = 0, 0
        while at + 8 <= size:
            header = head[at : at + 16] if at + 16 <= len(head) else read(at, min(at + 16, size))
            if len(header) < 8:
                return None
            box_size, kind = _U32.unpack_from(header)[0], header[4:8]
            header_bytes = 8
            if box_size == 1:
                if len(header) < 16:
                    return None
                box_size, header_bytes = struct.unpack_from(">Q", header, 8)[0], 16
            elif box_size == 0:
                box_size = size - at
            if box_size < header_bytes or at + box_size > size:
                return None
            if kind == b"moov":
                if box_size > MAX_MOOV_BYTES:
                    return None
                moov = head[at : at + box_size] if at + box_size <= len(head) else read(at, at + box_size)
                if len(moov) != box_size:
                    return None
                for child, body, stop in _boxes(moov, header_bytes, box_size):
                    if child == b"trak":
                        dims = _track(moov, body, stop)
                        if dims is not None:
                            return dims
                return None
            at += box_size
            boxes += 1
            if boxes > MAX_BOXES:
                return None
        return None
    except (_Malformed, struct.error, IndexError):
        return None
