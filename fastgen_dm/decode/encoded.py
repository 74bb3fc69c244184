"""Encoded payloads that DataLoader workers pass on undecoded, for decoding after the transfer to the device.

Deliberately not ``bytes``, tuples or dataclasses: Lightning's batch transfer and the
DataLoader's pinning walk into sequences item by item (a 50 KB JPEG would be rebuilt from
50,000 ints), and pass any other object through untouched.
"""

from __future__ import annotations


class EncodedJPEG:
    """A JPEG's bytes (``data``), left for :func:`~fastgen_dm.decode.jpeg.decode_jpegs` after the transfer."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def __repr__(self) -> str:
        return f"EncodedJPEG(<{len(self.data)} bytes>)"


class EncodedVideo:
    """A video member's bytes with where it came from: the clip's random start is seeded by these.

    ``draw``: the sample's draw number in resampled mode (each draw its own clip), else None.
    """

    __slots__ = ("data", "url", "key", "epoch", "draw")

    def __init__(self, data: bytes, url: str, key: str, epoch: int, draw: int | None = None) -> None:
        self.data, self.url, self.key, self.epoch, self.draw = bytes(data), url, key, epoch, draw

    def __repr__(self) -> str:
        return f"EncodedVideo(<{len(self.data)} bytes>, {self.url!r}, {self.key!r}, epoch={self.epoch}, draw={self.draw})"
