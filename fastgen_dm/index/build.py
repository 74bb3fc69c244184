"""Build shard indexes: walk each shard's member headers, seeking over the data.

Indexing a shard of 1 MB members reads a few percent of it; a shard of small members is read
whole, a few MiB per request, its headers parsed a buffer at a time
(:func:`fastgen_dm.format.tar.scan_members`). Many shards are indexed in parallel: threads for
object stores (the work is waiting), optionally processes for local files (the work is parsing).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, Mapping, Sequence, cast

import numpy as np

from fastgen_dm.format.image import IMAGE_EXTENSIONS, image_size
from fastgen_dm.format.mp4 import VIDEO_EXTENSIONS, video_dims
from fastgen_dm.format.tensor_header import TENSOR_EXTENSIONS, tensor_shape
from fastgen_dm.format.tar import BLOCK, INDEX_BLOCK_BYTES, ShardReadError, sample_members, scan_members
from fastgen_dm.index.shard_index import KeyList, ShardIndex
from fastgen_dm.storage import BlockReader, ByteCounter, RangeSource, is_local, resolve_fs

logger = logging.getLogger(__name__)

#: Bytes of an image member read first for its size: a JPEG's header with default tables fits;
#: a longer one (EXIF thumbnails, a TIFF's trailing directory) is read again 16 times larger,
#: then whole (WebP: Pillow reads its size only through libwebp, from the whole file).
SIZE_HEAD_BYTES = 4096
#: a tensor file's header is read from its first SIZE_HEAD_BYTES, else from this many (torch.save's pickle of one tensor: ~300)
TENSOR_HEAD_BYTES = 65536
UNKNOWN_SIZE = (0, 0)
_INT32_MAX = 2**31 - 1


def check_sizes_key(sizes_of: str | None) -> None:
    """``sizes_of`` must be None or a member suffix ending in an image or tensor extension (``jpg``, ``latent.pth``)."""
    if sizes_of is not None and sizes_of.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS | TENSOR_EXTENSIONS | VIDEO_EXTENSIONS:
        raise ValueError(
            f"sizes {sizes_of!r} is not the suffix of an image, video or tensor member; give it as the member is named, "
            f"e.g. --sizes jpg, --sizes mp4 or --sizes latent.pth (images: {', '.join(sorted(IMAGE_EXTENSIONS))}; "
            f"videos: {', '.join(sorted(VIDEO_EXTENSIONS))}; tensors: {', '.join(sorted(TENSOR_EXTENSIONS))})"
        )


def size_columns(sizes_of: str) -> int:
    """Columns of the sizes of ``sizes_of`` members: (width, height) for images, (width, height, frames) for videos and tensors."""
    return 3 if sizes_of.rsplit(".", 1)[-1].lower() in TENSOR_EXTENSIONS | VIDEO_EXTENSIONS else 2


def _has_sizes_of(index: ShardIndex, sizes_of: str) -> bool:
    """Whether ``index`` holds the sizes of its ``sizes_of`` members (see :meth:`ShardIndex.sizes_for`)."""
    try:
        index.sizes_for(sizes_of, size_columns(sizes_of))
    except ValueError:
        return False
    return True


def _reused(index: ShardIndex, sizes_of: str | None) -> ShardIndex:
    """``index`` kept for a new index of ``sizes_of``: an older one's sizes now name their member."""
    if sizes_of is None or index.sizes_of == sizes_of:
        return index
    return ShardIndex(index.url, index.size, index.keys, index.starts, index.ends, index.truncated_at, index.sizes, sizes_of, validate=False)


def _member_size(source: RangeSource, url: str, key: str, data_offset: int, size: int, sizes_of: str) -> tuple[int, ...]:
    """The sizes of the member at ``data_offset`` (see :func:`size_columns`), reading its header only; zeros if unreadable."""
    dims = _header_dims(source, url, key, data_offset, size, sizes_of)
    if not all(0 <= v <= _INT32_MAX for v in dims):  # a header may claim anything; the index holds int32
        logger.warning("%s: %s: its header claims the size %s; it is judged when read", url, key, dims)
        return (0,) * len(dims)
    return dims


def _header_dims(source: RangeSource, url: str, key: str, data_offset: int, size: int, sizes_of: str) -> tuple[int, ...]:
    extension = sizes_of.rsplit(".", 1)[-1].lower()
    if extension in VIDEO_EXTENSIONS:
        dims = video_dims(lambda start, end: source.read(data_offset + start, data_offset + end), size)
        if dims is None:
            logger.warning("%s: %s: no video track in its mp4 boxes; it is judged when read", url, key)
            return (0, 0, 0)
        return dims
    if extension in TENSOR_EXTENSIONS:
        for want in (min(SIZE_HEAD_BYTES, size), min(TENSOR_HEAD_BYTES, size)):  # a longer pickle is read again
            shape = tensor_shape(source.read(data_offset, data_offset + want), extension)
            if shape is not None or want >= size:
                break
        if shape is None or len(shape) < 2:
            logger.warning("%s: %s: no tensor shape of at least 2 dimensions in its header; it is judged when read", url, key)
            return (0, 0, 0)
        # (..., H, W) -> width, height; (C, T, H, W) -> and T frames
        return shape[-1], shape[-2], shape[-3] if len(shape) >= 4 else 0
    want = min(SIZE_HEAD_BYTES, size)
    while True:
        try:
            return image_size(source.read(data_offset, data_offset + want), name=f"{url}: {key}")
        except (OSError, SyntaxError, ValueError) as err:
            if want >= size:
                logger.warning("%s: %s: no image size (%s); it goes to the squarest bucket and is judged when read", url, key, err)
                return UNKNOWN_SIZE
            want = min(want * 16, size)


def index_shard(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    partial_ok: bool = False,
    counter: ByteCounter | None = None,
    block_bytes: int | None = None,
    *,
    sizes_of: str | None = None,
) -> ShardIndex:
    """Keys and byte ranges of the samples of one shard, reading its headers only.

    With ``sizes_of`` (a member suffix, e.g. ``"jpg"``), also each sample's image (width,
    height), from the first :data:`SIZE_HEAD_BYTES` of that member (its offset is known from the
    walk): a shard of 100 KB JPEGs is sized reading about 4% of it. Example:
    ``index_shard("00000.tar", sizes_of="jpg").sizes[0]`` -> ``[640, 480]``. A video suffix
    (``mp4``, ``mov``, ``m4v``) gives (width, height, frames) from its boxes, never its media
    data (:mod:`fastgen_dm.format.mp4`). A tensor suffix
    (``latent.pth``, ``npy``) gives (width, height, frames) of the tensor's shape ``(..., H, W)``
    or ``(C, T, H, W)``, from its file's header (:mod:`fastgen_dm.format.tensor_header`).

    Args:
        url: Shard path, ``file://`` or fsspec URL; kept as given in the result.
        storage_options: fsspec options for remote URLs.
        partial_ok: On a truncated or corrupt shard, return the samples before the damage
            (without the last one, which may have lost members) and set ``truncated_at``,
            instead of raising.
        sizes_of: Member suffix of the image or tensor to size; None: no sizes.
        counter: Adds the bytes fetched (e.g. to compare with the shard size).
        block_bytes: Bytes fetched per request at least; None: one header (512) for local files,
            where a seek is free and only headers are read (about 4% of a shard of 72 KB
            samples), and 32 KiB for remote ones, where a request costs more than its bytes (a
            shard of 1 MB members is then indexed reading about 3% of it). Requests grow up to a
            few MiB while headers lie densely.

    Raises:
        ShardReadError: The shard is empty, not a tar, compressed, truncated or corrupt (unless
            ``partial_ok``).
    """
    if block_bytes is None:
        block_bytes = BLOCK if is_local(url) else INDEX_BLOCK_BYTES
    check_sizes_key(sizes_of)
    wanted = None if sizes_of is None else sizes_of.lower()  # member suffixes are lower case
    keys: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    images: dict[int, tuple[int, int]] = {}  # sample -> (data offset, bytes) of its sizes_of member
    truncated_at: int | None = None
    with RangeSource(url, storage_options, counter) as source:
        size = source.size
        try:
            for key, suffix, member in sample_members(scan_members(cast(BinaryIO, BlockReader(source, block_bytes)), url, size, read_bytes=block_bytes)):
                if not keys or key != keys[-1]:
                    keys.append(key)
                    starts.append(member.header_offset)
                    ends.append(member.next_offset)
                else:
                    ends[-1] = member.next_offset
                if suffix == wanted:
                    images[len(keys) - 1] = (member.data_offset, member.size)
        except ShardReadError as err:
            if not partial_ok:
                raise
            # The sample in progress may have had more members after the damage: drop it.
            logger.warning("%s; indexing the %d complete samples before it", err, max(len(keys) - 1, 0))
            keys, starts, ends, truncated_at = keys[:-1], starts[:-1], ends[:-1], err.offset
        sizes = None
        if sizes_of is not None:
            columns = size_columns(sizes_of)
            unknown = (0,) * columns
            sizes = np.array([_member_size(source, url, key, *images[k], sizes_of) if k in images else unknown for k, key in enumerate(keys)], np.int32).reshape(-1, columns)
    return ShardIndex(url, size, KeyList.from_strings(keys), np.array(starts, np.int64), np.array(ends, np.int64), truncated_at, sizes, sizes_of)


def index_shards(
    urls: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
    num_threads: int = 8,
    show_progress: bool = True,
    previous: Mapping[str, ShardIndex] | None = None,
    partial_ok: bool = False,
    block_bytes: int | None = None,
    *,
    num_processes: int | None = 1,
    sizes_of: str | None = None,
) -> list[ShardIndex]:
    """Index many shards in parallel, in input order.

    Args:
        urls: Shard URLs; each appears once.
        storage_options: fsspec options for remote URLs.
        num_threads: Remote shards indexed at once (threads: the work is waiting on storage).
        show_progress: Show a tqdm bar.
        previous: An earlier index (e.g. from :func:`fastgen_dm.index.load_index`): a shard
            found there with an unchanged size is reused without reading it (one stat or HEAD
            request).
        partial_ok: See :func:`index_shard`; otherwise the first damaged shard raises.
        block_bytes: See :func:`index_shard`.
        num_processes: Worker processes (forked) for local shards: parsing headers is CPU work
            that threads cannot share. None uses every core (1.5x on 2 idle cores, but slower when
            other jobs hold them; ``benchmarks/bench_index.py``). The default, 1, indexes them in
            this process, so ``prepare_data`` forks nothing inside a training process.
        sizes_of: See :func:`index_shard`; a previous index without sizes is not reused.

    Raises:
        ShardReadError: A damaged shard (unless ``partial_ok``).
        ValueError: ``num_threads`` or ``num_processes`` below 1, or a URL listed twice.
    """
    from tqdm.auto import tqdm

    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1 (or None for every core), got {num_processes}")
    urls = list(urls)
    if len(set(urls)) != len(urls):
        twice = sorted({u for u in urls if urls.count(u) > 1})
        raise ValueError(f"urls lists {twice[:3]} more than once; each shard must appear once")
    check_sizes_key(sizes_of)
    # an unchanged shard is reused only if it has the sizes asked for: of the same member (an
    # index from before the member was recorded: as many columns, images or videos and tensors)
    previous = {url: _reused(old, sizes_of) for url, old in (previous or {}).items() if sizes_of is None or _has_sizes_of(old, sizes_of)}
    results: list[ShardIndex | None] = [None] * len(urls)
    local: list[int] = []
    remote: list[int] = []
    for k, url in enumerate(urls):
        if not is_local(url):
            remote.append(k)  # its size is a HEAD request: checked in the threads, alongside the indexing
        elif _unchanged(url, previous.get(url), storage_options, partial_ok):
            results[k] = previous[url]
        else:
            local.append(k)
    processes = min(num_processes or os.cpu_count() or 1, len(local))
    jobs: list[tuple[Executor, list[int]]] = []
    with tqdm(total=len(urls), unit="shard", desc="index shards", disable=not show_progress) as bar:
        bar.update(len(urls) - len(local) - len(remote))
        if remote:
            jobs.append((ThreadPoolExecutor(max_workers=num_threads), remote))
        if local:
            # fork: a spawned worker would import the whole package (torch, lightning) first.
            pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) if processes > 1 else ThreadPoolExecutor(1)
            jobs.append((pool, local))
        _run(jobs, urls, previous, storage_options, partial_ok, block_bytes, sizes_of, results, bar)
    reused = sum(previous.get(url) is r for url, r in zip(urls, results))
    logger.info("indexed %d shards (%d reused unchanged)", len(urls), reused)
    return [r for r in results if r is not None]


def _unchanged(url: str, old: ShardIndex | None, storage_options: Mapping[str, Any] | None, partial_ok: bool) -> bool:
    """Whether ``old`` still describes the shard: same size (and not partial, unless partial indexes are fine)."""
    if old is None or (old.truncated_at is not None and not partial_ok):
        return False
    fs, path = resolve_fs(url, storage_options)
    return int(fs.size(path)) == old.size


def _index_unless_unchanged(
    url: str, old: ShardIndex | None, storage_options: Mapping[str, Any] | None, partial_ok: bool, block_bytes: int | None, sizes_of: str | None
) -> ShardIndex:
    """``old`` when the shard is unchanged (None: index it anyway), else a fresh index."""
    if _unchanged(url, old, storage_options, partial_ok):
        assert old is not None
        return old
    return index_shard(url, storage_options, partial_ok, None, block_bytes, sizes_of=sizes_of)


def _run(
    jobs: list[tuple[Executor, list[int]]],
    urls: list[str],
    previous: Mapping[str, ShardIndex],
    storage_options: Mapping[str, Any] | None,
    partial_ok: bool,
    block_bytes: int | None,
    sizes_of: str | None,
    results: list[ShardIndex | None],
    bar: Any,
) -> None:
    """Submit every job to its pool and fill ``results`` as they finish; the first error cancels the rest."""
    futures: dict[Future, int] = {}
    options = dict(storage_options) if storage_options else None  # a plain dict pickles to worker processes
    try:
        for pool, ks in jobs:
            for k in ks:
                old = previous.get(urls[k]) if not is_local(urls[k]) else None  # local ones were checked already
                futures[pool.submit(_index_unless_unchanged, urls[k], old, options, partial_ok, block_bytes, sizes_of)] = k
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    error = future.exception()
                    assert error is not None
                    raise error
                results[futures[future]] = future.result()
                bar.update(1)
    finally:
        for pool, _ in jobs:
            pool.shutdown(wait=True, cancel_futures=True)
