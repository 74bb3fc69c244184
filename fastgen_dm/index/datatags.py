"""What a list of datatags holds: the shards, their sample counts and byte offsets, minus ignored samples.

Counts come, per shard, from the offset index (written by ``fastgen index`` into the location as
``fastgen_index.fgi``, or by ``prepare_data`` into ``index_dir`` for local data), else from a
``shard_count_file``. Offsets let readers fetch exactly their samples' bytes; without them a
reader finds offsets by walking the shard's member headers when it first opens it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastgen_dm.index.shard_index import ShardIndex
from fastgen_dm.index.store import load_index
from fastgen_dm.storage import (
    ShardFile,
    exists,
    fetch_once,
    fit_shard_count,
    is_local,
    list_shards,
    open_url,
    parse_datatag,
    resolve_fs,
    select_shards,
)

logger = logging.getLogger(__name__)

INDEX_NAME = "fastgen_index.fgi"
LEGACY_INDEX_NAME = "fastgen_index.json"  # found only to say that it must be rebuilt


@dataclass(frozen=True)
class Shard:
    """One shard as the plan sees it.

    Args:
        url: Its URL (identity).
        size: Bytes.
        count: Samples the plan schedules (ignored ones excluded).
        index: Keys and byte ranges of those samples; None when only a count is known.
        ignored: Keys never to yield (used when the reader walks headers itself).
    """

    url: str
    size: int
    count: int
    index: ShardIndex | None = field(default=None, repr=False)
    ignored: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)


def local_index_path(index_dir: str, location: str) -> str:
    """Where ``prepare_data`` keeps the index of a local location."""
    digest = hashlib.sha1(location.encode()).hexdigest()[:16]
    return str(Path(index_dir) / f"{digest}.fgi")


def load_ignore_index(paths: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> dict[str, frozenset[str]]:
    """Merge ignore-index JSON files ``{"<shard file name or URL>": ["<key>", ...]}``."""
    merged: dict[str, set[str]] = {}
    for path in paths:
        try:
            with open_url(path, "rb", storage_options) as f:
                table = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"ignore_index_paths: {path} does not exist") from None
        except ValueError as err:
            raise ValueError(f"ignore_index_paths: {path} is not JSON ({err})") from err
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise ValueError(f'ignore_index_paths: {path} must map shard names to key lists: {{"00000.tar": ["key", ...]}}')
        for shard, keys in table.items():
            merged.setdefault(shard, set()).update(map(str, keys))
    return {shard: frozenset(keys) for shard, keys in merged.items()}


def _load_counts(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, int]:
    try:
        with open_url(path, "rb", storage_options) as f:
            table = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard_count_file {path} does not exist") from None
    except (ValueError, RecursionError) as err:
        raise ValueError(f"shard_count_file {path} is not JSON ({type(err).__name__}: {err})") from err
    if not isinstance(table, dict) or not all(type(v) is int and v >= 0 for v in table.values()):
        raise ValueError(f'shard_count_file {path} must map shard file names to sample counts: {{"00000.tar": 1000}}')
    return table


def node_copy_path(index_dir: str, location: str, size: int) -> str:
    """Where ``prepare_data`` keeps a node's copy of a remote location's index of ``size`` bytes
    (a rewritten index has another size, so a stale copy is never taken for it)."""
    digest = hashlib.sha1(location.encode()).hexdigest()[:16]
    return str(Path(index_dir) / f"remote-{digest}-{size}.fgi")


def _remote_index_size(location: str, storage_options: Mapping[str, Any] | None) -> int | None:
    """Bytes of a remote location's index (one HEAD request), None when it has none."""
    fs, path = resolve_fs(f"{location}/{INDEX_NAME}", storage_options)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        return None


def copy_remote_indexes(datatags: Sequence[str], index_dir: str, storage_options: Mapping[str, Any] | None) -> None:
    """Once per node: copy each remote datatag's index into ``index_dir`` (atomically), so that
    every rank and worker of the node maps one local file instead of each downloading it."""
    for tag in datatags:
        location = parse_datatag(tag)
        size = None if is_local(location) else _remote_index_size(location, storage_options)
        if size is not None:
            fetch_once(f"{location}/{INDEX_NAME}", node_copy_path(index_dir, location, size), storage_options)


def _find_index(
    location: str, index_dir: str | None, storage_options: Mapping[str, Any] | None, legacy: bool = True
) -> dict[str, ShardIndex]:
    """The location's index keyed by shard file name ({} when there is none).

    With ``legacy``, an old JSON index left alone in the location raises (load_index says to rebuild it).
    """
    if not is_local(location):
        size = _remote_index_size(location, storage_options)
        if size is None:
            return {}
        copy = None if index_dir is None else node_copy_path(index_dir, location, size)
        # the node's copy when prepare_data made one (memory-mapped, shared by the node), else the remote file
        index = load_index(copy) if copy is not None and Path(copy).exists() else load_index(f"{location}/{INDEX_NAME}", storage_options)
        return {posixpath.basename(url): idx for url, idx in index.items()}
    candidates = [f"{location}/{INDEX_NAME}"]
    if index_dir is not None and is_local(location):
        candidates.append(local_index_path(index_dir, location))
    if legacy:
        candidates.append(f"{location}/{LEGACY_INDEX_NAME}")
    for path in candidates:
        if exists(path, storage_options):
            return {posixpath.basename(url): idx for url, idx in load_index(path, storage_options).items()}
    return {}


def resolve_datatag(
    tag: str,
    shard_start: int = 0,
    shard_end: int | None = None,
    shard_count_file: str | None = None,
    ignore: Mapping[str, frozenset[str]] | None = None,
    index_dir: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    need_counts: bool = True,
) -> list[Shard]:
    """The shards of one datatag, with counts (when ``need_counts``) and offsets where known.

    Raises:
        ValueError: A malformed tag, or shards with no known count (the message says how to index them).
        FileNotFoundError: The location or the count file is missing.
    """
    location = parse_datatag(tag)
    files = select_shards(list_shards(location, storage_options, tag), shard_start, shard_end)
    if not files:
        raise ValueError(f"datatag {tag!r}: shard range [{shard_start}, {shard_end}] selects no shard")
    ignore = ignore or {}
    indexed = _find_index(location, index_dir, storage_options) if need_counts else {}
    counts: dict[str, int] = {}
    if shard_count_file is not None and need_counts:
        path = shard_count_file if "://" in shard_count_file or shard_count_file.startswith("/") else f"{location}/{shard_count_file}"
        counts = _load_counts(path, storage_options)
    shards, unknown = [], []
    for file in files:
        name = posixpath.basename(file.url)
        ignored = ignore.get(file.url, frozenset()) | ignore.get(name, frozenset())
        index = indexed.get(name)
        if index is not None and index.size == file.size:
            if index.truncated_at is not None:  # every run says so: the samples after the damage are not in the index
                logger.warning(
                    "%s is damaged at byte %d: this run reads only its %d samples before that; the rest are lost "
                    "until the shard is rewritten and indexed again (`fastgen index`)", file.url, index.truncated_at, index.count,
                )  # fmt: skip
            index = ShardIndex(file.url, index.size, index.keys, index.starts, index.ends, None, index.sizes, index.sizes_of, validate=False).without(ignored)
            shards.append(Shard(file.url, file.size, index.count, index, ignored))
        elif name in counts:
            shards.append(Shard(file.url, file.size, max(counts[name] - len(ignored), 0), None, ignored))
        elif not need_counts:
            shards.append(Shard(file.url, file.size, 0, None, ignored))
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"datatag {tag!r}: no sample count for {len(unknown)} of {len(files)} shards (e.g. {unknown[:3]}); "
            f"build the index with `fastgen index '{tag}'`, pass shard_count_file, or use resampled=True"
        )
    return shards


def resolve_datatags(
    datatags: Sequence[str],
    *,
    shard_start: int = 0,
    shard_end: int | None = None,
    num_shards: int | None = None,
    shard_count_file: str | None = None,
    ignore_index_paths: Sequence[str] = (),
    index_dir: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    need_counts: bool = True,
) -> list[Shard]:
    """Several datatags as one dataset, truncated or repeated to ``num_shards``."""
    if not datatags:
        raise ValueError("datatags is empty; give at least one 'WDS:<location>'")
    ignore = load_ignore_index(ignore_index_paths, storage_options)
    shards = [
        shard
        for tag in datatags
        for shard in resolve_datatag(tag, shard_start, shard_end, shard_count_file, ignore, index_dir, storage_options, need_counts)
    ]
    by_url = {s.url: s for s in shards}
    picked = fit_shard_count([ShardFile(s.url, s.size) for s in shards], num_shards)
    return [by_url[f.url] for f in picked]


def local_datatags_without_index(datatags: Sequence[str], index_dir: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Local datatags with neither a location index nor one in ``index_dir`` (``prepare_data`` builds those)."""
    missing = []
    for tag in datatags:
        location = parse_datatag(tag)
        if is_local(location) and not _find_index(location, index_dir, storage_options, legacy=False):
            missing.append(tag)
    return missing
