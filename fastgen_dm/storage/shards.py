"""Datatags (``"WDS:<location>"``) and the shard lists they name.

A location is a folder of ``.tar`` shards on local disk, ``file://``, ``s3://``, ``gs://`` or
``http(s)://``. Shards are sorted by the number in their name (``2.tar`` before ``10.tar``),
then by name. A shard's identity is its full URL, so two datatags that both hold
``00000.tar`` are two shards.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple, Sequence

from fastgen_dm.storage.fs import is_local, resolve_fs

DATATAG_PREFIX = "WDS:"
_NUMBER = re.compile(r"(\d+)")


class ShardFile(NamedTuple):
    url: str
    size: int


def parse_datatag(tag: str) -> str:
    """The location of a ``"WDS:<location>"`` datatag.

    Raises:
        ValueError: The tag does not start with ``WDS:`` or names no location.
    """
    if not isinstance(tag, str) or not tag.startswith(DATATAG_PREFIX) or not tag[len(DATATAG_PREFIX) :].strip():
        raise ValueError(
            f"datatag {tag!r} is malformed; expected 'WDS:<folder or URL of .tar shards>', e.g. 'WDS:s3://bucket/shards'"
        )
    return tag[len(DATATAG_PREFIX) :].rstrip("/")


def shard_sort_key(url: str | ShardFile) -> tuple[int, int, str]:
    """Numeric names first, in numeric order (``shard-2`` before ``shard-10``), then by name."""
    name = (url.url if isinstance(url, ShardFile) else url).rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0]
    if stem.isdigit():  # the usual "000123.tar", without a regex: 10^5 shards sort in a blink
        return 0, int(stem), name
    numbers = _NUMBER.findall(stem)
    return (0, int(numbers[-1]), name) if numbers else (1, 0, name)


def list_shards(location: str, storage_options: Mapping[str, Any] | None = None, tag: str | None = None) -> list[ShardFile]:
    """The ``.tar`` shards directly inside ``location`` (URLs in the location's own form, sizes), sorted.

    Raises:
        FileNotFoundError: The location does not exist or cannot be reached (names the tag).
        ValueError: The location holds no ``.tar`` file.
    """
    label = tag or location
    fs, root = resolve_fs(location, storage_options)
    try:
        entries: list[dict[str, Any]]
        if is_local(location):  # one stat an entry (fsspec's local ls takes several): 10^5 shards in a fraction of a second
            with os.scandir(root) as scan:
                entries = [{"name": e.path, "size": e.stat().st_size, "type": "directory" if e.is_dir() else "file"} for e in scan]
        else:
            entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"datatag {label!r}: {location} does not exist") from None  # the whole story
    except (OSError, PermissionError) as err:
        raise FileNotFoundError(f"datatag {label!r}: cannot list {location}: {err}") from None
    files = [(e["name"], int(e.get("size") or 0)) for e in entries if e.get("type") != "directory" and e["name"].endswith(".tar")]
    if not files:
        raise ValueError(f"datatag {label!r}: {location} holds no .tar shards ({len(entries)} other entries)")

    def as_url(path: str) -> str:
        if location.startswith("file://"):
            return f"file://{path}"
        return fs.unstrip_protocol(path) if "://" in location else path

    return sorted((ShardFile(as_url(p), size) for p, size in files), key=shard_sort_key)


def select_shards(urls: Sequence[ShardFile], shard_start: int = 0, shard_end: int | None = None) -> list[ShardFile]:
    """Shards ``shard_start`` to ``shard_end`` (inclusive positions in the sorted list)."""
    if shard_start < 0 or (shard_end is not None and shard_end < shard_start):
        raise ValueError(f"shard range [{shard_start}, {shard_end}] is empty or negative; need 0 <= shard_start <= shard_end")
    return list(urls[shard_start : None if shard_end is None else shard_end + 1])


def fit_shard_count(urls: Sequence[ShardFile], num_shards: int | None) -> list[ShardFile]:
    """Truncate to ``num_shards``, or repeat the list cyclically up to it (None: keep all)."""
    if num_shards is None:
        return list(urls)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1 or None, got {num_shards}")
    return [urls[i % len(urls)] for i in range(num_shards)]
