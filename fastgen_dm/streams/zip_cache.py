"""A decoded store of an EDM dataset: one memory-mapped ``.npy`` array that every worker shares.

Built once per node (``prepare_data``) with every core, reused across runs and ranks: its name
carries the dataset's fingerprint, so a changed zip gets a new store instead of stale pixels.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fastgen_dm.decode.zip_item import decode_item
from fastgen_dm.index import EDMIndex
from fastgen_dm.read import EDMReader
from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES, AtomicPath

logger = logging.getLogger(__name__)

_BUILD_BATCH = 256


def cache_path(folder: str, dataset_name: str, fingerprint: str) -> str:
    digest = hashlib.sha1(fingerprint.encode()).hexdigest()[:12]
    return str(Path(folder) / f"{dataset_name}.decoded-{digest}.npy")


def open_cache(path: str) -> np.ndarray:
    """The store, memory-mapped read-only: pages are shared by every process that maps it.

    A plain ndarray view of the map (which keeps it open): ``np.memmap``'s indexing adds Python
    work to every batch's gather.
    """
    return np.load(path, mmap_mode="r").view(np.ndarray)


class _DecodeItems(Dataset):
    def __init__(
        self,
        index: EDMIndex,
        shape: tuple[int, ...],
        dtype: np.dtype,
        storage_options: Mapping[str, Any] | None,
        skip: frozenset[int],
        max_member_bytes: int,
    ):
        self.index, self.shape, self.dtype, self.skip = index, shape, dtype, skip
        self.reader = EDMReader(index.source, index.is_zip, storage_options, max_member_bytes=max_member_bytes)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self.skip:
            return np.zeros(self.shape, self.dtype)  # an ignored item: never planned, never read
        member = self.index.members[i]
        try:
            array = decode_item(member, self.reader.read(member))
        except Exception as err:
            raise ValueError(
                f"{self.index.source}: cannot decode {member}: {err}. List the bad items with "
                "`fastgen verify ... --out ignore.json` and pass ignore_index_paths=['ignore.json']"
            ) from err
        if array.shape != self.shape or array.dtype != self.dtype:
            raise ValueError(
                f"{self.index.source}: {member} is {array.dtype}{list(array.shape)} but the first item is "
                f"{self.dtype}{list(self.shape)}; every item of an EDM dataset must have the same shape"
            )
        return array


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays)


def build_cache(
    path: str,
    index: EDMIndex,
    shape: tuple[int, ...],
    dtype: np.dtype,
    *,
    storage_options: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    skip: Sequence[int] | np.ndarray = (),
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> str:
    """Decode every item of ``index`` but those numbered in ``skip`` (left zero) into ``path``
    unless it exists; atomic.

    Raises:
        ValueError: An item cannot be decoded or differs in shape (the message names it).
    """
    if Path(path).exists():
        return path
    logger.info("decoding %d items of %s into %s", len(index), index.source, path)
    loader = DataLoader(
        _DecodeItems(index, shape, dtype, storage_options, frozenset(int(i) for i in skip), max_member_bytes),
        batch_size=_BUILD_BATCH,
        num_workers=num_workers,
        collate_fn=_stack,
    )
    with AtomicPath(path) as tmp:
        store = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(index), *shape))
        done = 0
        with tqdm(total=len(index), unit="img", desc=f"cache {Path(index.source).name}") as bar:
            for chunk in loader:
                store[done : done + len(chunk)] = chunk
                done += len(chunk)
                bar.update(len(chunk))
        store.flush()
        del store
    return path
