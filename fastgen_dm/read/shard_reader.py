"""Read planned samples of tar shards as contiguous byte runs, several requests in flight.

A worker's batch names samples as ``(shard, sample)`` pairs. The reader sorts them by shard and
offset, merges samples that are neighbours in the shard into one run ``[starts[i], ends[j])``,
and fetches all runs of the batch at once (``fs.cat_ranges`` for object stores, which sends them
concurrently; ``os.pread`` for local files). :meth:`ShardReader.prefetch` keeps the next batches'
requests in flight on a background thread while the current batch is decoded. Nothing outside
the planned samples is read: no tar padding, no end blocks, no other worker's bytes.

A shard without known offsets (only a count is known) is indexed once per node: the first
process that needs it walks its member headers and stores the result in ``offsets_dir``; every
other worker and rank on the node loads that file instead of walking again.
"""

from __future__ import annotations

import fcntl
import logging
import hashlib
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fastgen_dm.index.datatags import Shard
from fastgen_dm.format.tar import ShardReadError
from fastgen_dm.index.build import index_shard
from fastgen_dm.index.shard_index import ShardIndex
from fastgen_dm.index.store import load_index, save_index
from fastgen_dm.plan import sample_runs
from fastgen_dm.read.shard_bytes import ByteCounter, split_sample
from fastgen_dm.storage import StorageReadError, is_local, resolve_fs

logger = logging.getLogger(__name__)

#: (shard url, sample key, members or the error that made the sample unreadable)
Item = tuple[str, str, "dict[str, bytes] | Exception"]
Sample = tuple[str, "dict[str, bytes] | Exception"]

_MAX_OPEN_FILES = 64
_MAX_CACHED_OFFSETS = 256  # shard indexes a reader keeps in memory (a few MB each at most)


class _Run:
    """One request: samples ``first .. first + len(wanted) - 1`` of a shard are consecutive there."""

    __slots__ = ("shard", "samples", "positions", "start", "end")

    def __init__(self, shard: Shard, samples: list[int], positions: list[int], start: int, end: int) -> None:
        self.shard, self.samples, self.positions, self.start, self.end = shard, samples, positions, start, end


class ShardReader:
    """Per-process reader of planned samples.

    Args:
        storage_options: fsspec options for remote shards.
        counter: Adds each request's bytes (to measure read amplification).
        offsets_dir: Node-local folder where offsets found by walking a shard's headers are kept
            for every process of the node; None keeps them in this process only.
    """

    def __init__(
        self,
        storage_options: Mapping[str, Any] | None = None,
        counter: ByteCounter | None = None,
        offsets_dir: str | None = None,
    ) -> None:
        self.storage_options = storage_options
        self.counter = counter
        self.offsets_dir = offsets_dir
        self._offsets: OrderedDict[str, ShardIndex] = OrderedDict()
        self._files: OrderedDict[str, int] = OrderedDict()
        self._filesystems: dict[str, Any] = {}  # one per protocol, resolved once
        self._short: set[str] = set()  # shards found shorter than counted, said once each

    # -- offsets ---------------------------------------------------------------------------
    def offsets(self, shard: Shard) -> ShardIndex:
        """Keys and byte ranges of the shard's planned samples (ignored keys left out)."""
        if shard.index is not None:
            return shard.index
        index = self._offsets.get(shard.url)
        if index is None:
            index = self._walked(shard).without(shard.ignored)
            self._offsets[shard.url] = index
            if len(self._offsets) > _MAX_CACHED_OFFSETS:
                self._offsets.popitem(last=False)
        else:
            self._offsets.move_to_end(shard.url)
        return index

    def _walked(self, shard: Shard) -> ShardIndex:
        if self.offsets_dir is None:
            return index_shard(shard.url, self.storage_options, partial_ok=True)
        digest = hashlib.sha1(shard.url.encode()).hexdigest()[:20]
        path = Path(self.offsets_dir) / f"{digest}-{shard.size}.fgi"
        path.parent.mkdir(parents=True, exist_ok=True)
        # One process of the node walks; the others wait on the lock, then load its result.
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return load_index(str(path))[shard.url]
            index = index_shard(shard.url, self.storage_options, partial_ok=True)
            save_index(str(path), [index])
            return index

    # -- reading ---------------------------------------------------------------------------
    def read(self, shard: Shard, samples: Sequence[int]) -> list[Sample]:
        """``(key, {suffix: bytes})`` of each requested sample of one shard, in request order.

        A sample that cannot be read comes back as ``(key or "#<index>", exception)``; the caller
        counts it. Indices past the shard's real end (it shrank since it was counted) are errors too.
        """
        items = self.read_many([shard], np.zeros(len(samples), np.int64), np.asarray(samples, np.int64))
        return [(key, members) for _, key, members in items]

    def read_many(self, shards: Sequence[Shard], shard_ids: np.ndarray, samples: np.ndarray) -> list[Item]:
        """``(url, key, members)`` of sample ``samples[k]`` of shard ``shards[shard_ids[k]]``, in input order."""
        out: list[Item | None] = [None] * len(samples)
        runs = self._runs(shards, shard_ids, samples, out)
        for run, blob in zip(runs, self._fetch(runs)):
            self._split(run, blob, out)
        assert all(item is not None for item in out)
        return out  # type: ignore[return-value]

    def prefetch(
        self, shards: Sequence[Shard], batches: Iterable[tuple[np.ndarray, np.ndarray]], depth: int = 2
    ) -> Iterator[list[Item]]:
        """:meth:`read_many` of each ``(shard_ids, samples)`` batch, with ``depth`` batches read ahead."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastgen-prefetch") as pool:
            pending: list[Future[list[Item]]] = []
            source = iter(batches)
            try:
                for shard_ids, samples in source:
                    pending.append(pool.submit(self.read_many, shards, shard_ids, samples))
                    if len(pending) > depth:
                        yield pending.pop(0).result()
                while pending:
                    yield pending.pop(0).result()
            finally:
                for future in pending:
                    future.cancel()

    def _runs(self, shards: Sequence[Shard], shard_ids: np.ndarray, samples: np.ndarray, out: list[Item | None]) -> list[_Run]:
        runs: list[_Run] = []
        for s, at in sample_runs(shard_ids, samples):
            shard = shards[s]
            try:
                index = self.offsets(shard)
            except (ShardReadError, OSError) as err:
                for k in at:
                    out[k] = (shard.url, f"#{samples[k]}", err)
                continue
            past = at[samples[at] >= index.count]
            if past.size and shard.url not in self._short:
                self._short.add(shard.url)
                logger.warning(
                    "%s holds %d samples but the plan counts %d (from shard_count_file or a stale index): samples past "
                    "its end are missing and counted as bad; fix the count file or rerun `fastgen index`",
                    shard.url, index.count, shard.count,
                )  # fmt: skip
            for k in past:
                out[k] = (shard.url, f"#{samples[k]}", ShardReadError(shard.url, 0, f"sample {samples[k]} is past the shard's {index.count} samples"))
            at = at[samples[at] < index.count]
            local = samples[at]
            # members outside any sample (webdataset ignores them) can sit between neighbours: not read
            gaps = np.flatnonzero(index.starts[local[1:]] != index.ends[local[:-1]]) + 1
            for part_at, part in zip(np.split(at, gaps), np.split(local, gaps)):
                if part.size:
                    runs.append(_Run(shard, part.tolist(), part_at.tolist(), int(index.starts[part[0]]), int(index.ends[part[-1]])))
        return runs

    def _split(self, run: _Run, blob: bytes | BaseException, out: list[Item | None]) -> None:
        index = self.offsets(run.shard)
        url = run.shard.url
        for sample, k in zip(run.samples, run.positions):
            key = index.keys[sample]
            if isinstance(blob, BaseException):
                out[k] = (url, key, blob if isinstance(blob, Exception) else RuntimeError(str(blob)))
                continue
            begin, stop = int(index.starts[sample]) - run.start, int(index.ends[sample]) - run.start
            if stop > len(blob):
                out[k] = (url, key, ShardReadError(
                    url, run.start + len(blob),
                    f"sample {key!r} needs bytes up to {run.start + stop} but the read from {run.start} ended after "
                    f"{len(blob)} bytes; was the shard truncated or rewritten since it was indexed?",
                ))  # fmt: skip
                continue
            try:
                found, members = split_sample(memoryview(blob)[begin:stop].tobytes(), url, run.start + begin)
            except ShardReadError as err:
                out[k] = (url, key, err)
                continue
            out[k] = (url, found, members)

    def _fetch(self, runs: list[_Run]) -> list[bytes | BaseException]:
        """The bytes of every run, or the error that stopped its request."""
        results: list[bytes | BaseException] = [b""] * len(runs)
        remote: dict[str, list[int]] = {}  # by protocol: one concurrent cat_ranges call each
        for k, run in enumerate(runs):
            if is_local(run.shard.url):
                try:
                    results[k] = self._pread(run.shard.url, run.start, run.end)
                except OSError as err:
                    results[k] = err
            else:
                remote.setdefault(run.shard.url.split("://", 1)[0], []).append(k)
        for ks in remote.values():
            fs = self._remote_fs(runs[ks[0]].shard.url)
            paths = [fs._strip_protocol(runs[k].shard.url) for k in ks]
            blobs = fs.cat_ranges(paths, [runs[k].start for k in ks], [runs[k].end for k in ks], on_error="return")
            for k, path, blob in zip(ks, paths, blobs):
                if isinstance(blob, BaseException):
                    blob = self._failed(fs, path, runs[k], blob)
                results[k] = blob
        if self.counter is not None:
            for blob in results:
                if isinstance(blob, bytes):
                    self.counter.add(len(blob))
        return results

    def _remote_fs(self, url: str) -> Any:
        protocol = url.split("://", 1)[0]
        fs = self._filesystems.get(protocol)
        if fs is None:
            fs = self._filesystems[protocol] = resolve_fs(url, self.storage_options)[0]
        return fs

    @staticmethod
    def _failed(fs: Any, path: str, run: _Run, error: BaseException) -> bytes:
        """What a failed remote request means: a shard that shrank (bad data) or failing storage (raise).

        Object stores refuse a range that starts past the end instead of returning nothing; the
        samples there are then missing, as from a truncated shard, and are counted as bad data.
        """
        try:
            if run.start >= int(fs.size(path)):
                return b""
        except Exception:
            pass  # the size is unknown too: the store itself is failing
        raise StorageReadError(run.shard.url, run.start, run.end, error) from error

    def _pread(self, url: str, start: int, end: int) -> bytes:
        path = url[len("file://") :] if url.startswith("file://") else url
        fd = self._files.get(path)
        if fd is None:
            fd = self._files[path] = os.open(path, os.O_RDONLY)
            if len(self._files) > _MAX_OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        parts, offset = [], start
        while offset < end:  # a pread may return less than asked for
            part = os.pread(fd, end - offset, offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": OrderedDict(), "_filesystems": {}}  # handles stay with their process
