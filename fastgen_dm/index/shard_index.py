"""Keys and byte ranges of the samples of one tar shard, held as compact arrays.

For each sample the index keeps where its first member's header starts and where its last
member's data ends (rounded up to the next 512-byte header), so a reader can fetch exactly
``[starts[i], ends[j - 1])`` for samples ``i..j-1`` and nothing else. Example, a shard of two
samples of two members each (sizes 10 and 600 bytes, ustar headers of 512 bytes)::

    offset    0: header a.jpg    512: data (10 B, padded to 512)
    offset 1024: header a.json  1536: data (600 B, padded to 1024)
    offset 2560: header b.jpg   ...
    -> keys ("a", "b"), starts [0, 2560], ends [2560, 5120]

Keys are one UTF-8 blob and an offsets array (:class:`KeyList`), never a Python object per key,
so an index of 10^9 samples costs about 24 bytes plus the key per sample, and a memory-mapped one
(:func:`fastgen_dm.index.store.load_index`) costs only the pages a process reads.
"""

from __future__ import annotations

import posixpath
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Collection, Iterable, Iterator, Sequence, overload

import numpy as np


class KeyList(Sequence[str]):
    """Sample keys as one UTF-8 blob and int64 offsets: key ``i`` is ``blob[offsets[i]:offsets[i + 1]]``.

    Example: ``KeyList.from_strings(["a", "bc"])`` holds blob ``b"abc"`` and offsets ``[0, 1, 3]``.
    Keys that are not valid UTF-8 (tar names are bytes) round-trip through ``surrogateescape``.
    Compares equal to any sequence of the same strings (``KeyList.from_strings(["a"]) == ("a",)``).

    Args:
        blob: uint8 of the concatenated keys (may be a memory map).
        offsets: int64 of shape (count + 1,), ascending; need not start at 0 (a slice shares
            its parent's blob).
    """

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets
        if offsets.ndim != 1 or offsets.size < 1:
            raise ValueError(f"KeyList offsets must be a 1-d array of count + 1 entries, got shape {offsets.shape}")

    @classmethod
    def from_strings(cls, keys: Iterable[str]) -> KeyList:
        """The keys of ``keys``, in order, copied into one blob."""
        encoded = [key.encode("utf-8", "surrogateescape") for key in keys]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(blob, offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> KeyList: ...

    def __getitem__(self, i: int | slice) -> str | KeyList:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return KeyList(self.blob, self.offsets[start : max(start, stop) + 1])
            return KeyList.from_strings(self[k] for k in range(start, stop, step))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"key index {i} is out of range for {n} keys")
        i %= n
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        start, stop = int(self.offsets[0]), int(self.offsets[-1])
        data = self.blob[start:stop].tobytes()
        bounds = (self.offsets - start).tolist()
        for a, b in zip(bounds, bounds[1:]):
            yield data[a:b].decode("utf-8", "surrogateescape")

    def compact(self) -> tuple[np.ndarray, np.ndarray]:
        """``(blob, offsets)`` holding just these keys, offsets starting at 0 (what a store writes)."""
        start, stop = int(self.offsets[0]), int(self.offsets[-1])
        return self.blob[start:stop], self.offsets - start

    def __reduce__(self) -> tuple[type[KeyList], tuple[np.ndarray, np.ndarray]]:
        # Only these keys travel: a slice of a loaded index shares the whole file's blob.
        blob, offsets = self.compact()
        return KeyList, (np.array(blob), np.array(offsets))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyList):
            (a_blob, a_off), (b_blob, b_off) = self.compact(), other.compact()
            return np.array_equal(a_off, b_off) and np.array_equal(a_blob, b_blob)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists and tuples, so not hashable

    def __repr__(self) -> str:
        head = ", ".join(repr(k) for k in self[:3])
        return f"KeyList([{head}{', ...' if len(self) > 3 else ''}], count={len(self)})"


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """Keys and byte ranges of the samples of one tar shard.

    Args:
        url: The shard URL exactly as listed; it is the shard's identity (two datatags each
            holding ``00000.tar`` are two shards).
        size: Bytes of the shard file when it was indexed.
        keys: Sample keys in tar order (any sequence of str; held as a :class:`KeyList`).
        starts: int64 of shape (count,): offset of each sample's first member header (its pax
            or GNU long-name header when it has one).
        ends: int64 of shape (count,): offset just past each sample's last member data, rounded
            up to 512 (where the next header starts).
        truncated_at: None for a whole shard; for a damaged shard indexed with
            ``partial_ok=True``, the offset where the damage was found (the samples listed are
            the complete ones before it).
        sizes: None, or int32 of shape (count, 2): each sample's image (width, height), read
            from its header (``fastgen index --sizes jpg``), or (count, 3): a tensor's (width,
            height, frames) (``--sizes latent.pth``; frames 0 for a tensor of fewer than 4
            dimensions); zeros where the sample has no such member or its header is
            unreadable. Buckets need it.
        sizes_of: The member suffix ``sizes`` were read from (``"jpg"``, ``"mp4"``,
            ``"latent.pth"``); None for indexes written before it was recorded.
        validate: Check every range (O(count)); a store that checked them when it was written
            passes False so that loading costs O(shards), and only the first and last ranges
            are checked.
    """

    url: str
    size: int
    keys: KeyList
    starts: np.ndarray = field(repr=False)
    ends: np.ndarray = field(repr=False)
    truncated_at: int | None = None
    sizes: np.ndarray | None = field(default=None, repr=False)
    sizes_of: str | None = None
    _: KW_ONLY
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool) -> None:
        object.__setattr__(self, "starts", _read_only_int64(self.starts))
        object.__setattr__(self, "ends", _read_only_int64(self.ends))
        if not isinstance(self.keys, KeyList):
            object.__setattr__(self, "keys", KeyList.from_strings(self.keys))
        if self.sizes is not None:
            shared = isinstance(self.sizes, np.ndarray) and self.sizes.dtype == np.int32 and not self.sizes.flags.writeable
            sizes = self.sizes if shared else np.array(self.sizes, dtype=np.int32)
            if sizes.ndim != 2 or sizes.shape[0] != len(self.keys) or sizes.shape[1] not in (2, 3):
                raise ValueError(f"{self.url}: sizes has shape {sizes.shape}, need ({len(self.keys)}, 2 or 3): one (width, height[, frames]) per sample")
            sizes.setflags(write=False)
            object.__setattr__(self, "sizes", sizes)
        _validate_ranges(self, everything=validate)

    @property
    def count(self) -> int:
        """Number of samples."""
        return len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def byte_range(self, first: int, stop: int) -> tuple[int, int]:
        """The one byte run ``(start, end)`` holding samples ``first .. stop - 1``.

        Example: ``byte_range(2, 5) == (starts[2], ends[4])``.
        """
        if not 0 <= first < stop <= self.count:
            raise ValueError(f"{self.url}: sample range [{first}, {stop}) is not within the shard's {self.count} samples")
        return int(self.starts[first]), int(self.ends[stop - 1])

    def without(self, ignored: Collection[str]) -> ShardIndex:
        """This index minus the samples whose keys are in ``ignored`` (itself when none are).

        Example: keys ``("a", "b", "c")`` without ``{"b"}`` -> keys ``("a", "c")`` and their ranges.
        """
        if not ignored:
            return self
        keep = np.fromiter((key not in ignored for key in self.keys), dtype=bool, count=self.count)
        if keep.all():
            return self
        kept = KeyList.from_strings(key for key, k in zip(self.keys, keep) if k)
        sizes = None if self.sizes is None else self.sizes[keep]
        return ShardIndex(self.url, self.size, kept, self.starts[keep], self.ends[keep], self.truncated_at, sizes, self.sizes_of)

    def sizes_for(self, sizes_of: str, columns: int) -> np.ndarray:
        """``sizes`` as read from the ``sizes_of`` members, ``columns`` wide (2: images; 3: videos, tensors).

        Example: an index built with ``sizes_of="latent.pth"`` -> its (count, 3) sizes for
        ``sizes_for("latent.pth", 3)``; ``sizes_for("mp4", 3)`` raises (another member's sizes).

        Raises:
            ValueError: No sizes, or those of another member (or, for an index that does not
                record its member, another number of columns); the message gives the command
                that rebuilds it.
        """
        rebuild = f"run `fastgen index --sizes {sizes_of} WDS:{posixpath.dirname(self.url)}` again"
        if self.sizes is None:
            raise ValueError(f"{self.url}: the index holds no sizes, and these buckets need those of its {sizes_of!r} members; {rebuild}")
        if self.sizes_of is not None and self.sizes_of != sizes_of:
            raise ValueError(f"{self.url}: the index holds the sizes of its {self.sizes_of!r} members, and these buckets need those of {sizes_of!r}; {rebuild}")
        if self.sizes.shape[1] != columns:
            held, need = ("(width, height, frames)", "(width, height)") if columns == 2 else ("(width, height)", "(width, height, frames)")
            raise ValueError(f"{self.url}: the index holds {held} sizes, and these buckets need {need} of its {sizes_of!r} members; {rebuild}")
        return self.sizes


def _read_only_int64(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """``values`` as read-only int64, copied unless it already is (the index is shared by reference)."""
    if isinstance(values, np.ndarray) and values.dtype == np.int64 and not values.flags.writeable:
        return values
    out = np.array(values, dtype=np.int64)
    out.setflags(write=False)
    return out


def _validate_ranges(index: ShardIndex, everything: bool = True) -> None:
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
    if everything:
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
