"""The zip family's stream: batches of an EDM zip or folder following the sample plan."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from fastgen_dm.batch import zip_batch
from fastgen_dm.decode.zip_item import decode_item
from fastgen_dm.index import EDMIndex
from fastgen_dm.plan import SamplePlan, TailPolicy, rank_batches, worker_batch_ids
from fastgen_dm.read import BadDataPolicy, EDMReader, keep_stepping, skipped_name
from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES
from fastgen_dm.streams.planned import PlannedStream
from fastgen_dm.streams.zip_cache import open_cache
from fastgen_dm.transform import scale_to_unit


class EDMStream(PlannedStream):
    """Batches of an EDM dataset, following the sample plan.

    Item ``i`` of the plan is raw item ``raw_idx[i]``, mirrored when ``flip[i]`` (``xflip``
    doubles the dataset as EDM does).
    """

    def __init__(
        self,
        index: EDMIndex,
        *,
        item_shape: tuple[int, ...],
        item_dtype: np.dtype,
        raw_idx: np.ndarray,
        flip: np.ndarray,
        use_labels: bool,
        batch_size: int,
        seed: int,
        shuffle: bool,
        tail: TailPolicy,
        scale_on_cpu: bool,
        cache_file: str | None,
        max_skip_fraction: float,
        storage_options: Mapping[str, Any] | None,
        skipped_index_dir: str | None = None,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    ) -> None:
        self.index = index
        self.item_shape = item_shape
        self.item_dtype = item_dtype
        self.raw_idx = raw_idx
        self.flip = flip
        self.labels = index.labels if use_labels else None
        self.num_classes = index.num_classes if use_labels else 0
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.tail = tail
        self.scale_on_cpu = scale_on_cpu
        self.cache_file = cache_file
        self.max_skip_fraction = max_skip_fraction
        self.skipped_index_dir = skipped_index_dir
        self.reader = EDMReader(index.source, index.is_zip, storage_options, max_member_bytes=max_member_bytes)

    @property
    def num_samples(self) -> int:
        return len(self.raw_idx)

    def plan_for(self, epoch: int, start: int) -> SamplePlan:
        return SamplePlan(
            len(self.raw_idx), self.batch_size, self.world_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle, start=start, tail=self.tail
        )

    def iter_batches(self, plan: SamplePlan, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        batches = rank_batches(plan, self.rank)
        policy = self.bad_data_policy(worker_id)
        store = open_cache(self.cache_file) if self.cache_file else None
        try:
            lost_or_loaded = (self._load(batches[j], store, policy) for j in worker_batch_ids(len(batches), num_workers, worker_id))
            yield from keep_stepping(lost_or_loaded, f"rank {self.rank} worker {worker_id}")
        finally:
            self.reader.close()
            policy.write_skipped(self.skipped_index_dir, skipped_name(self.rank, f"worker{worker_id}", plan.epoch))

    def _load(self, items: np.ndarray, store: np.ndarray | None, policy: BadDataPolicy) -> dict[str, Any] | None:
        raw = self.raw_idx[items]
        if store is not None:
            order = np.argsort(raw)
            arrays = np.empty((len(raw), *store.shape[1:]), dtype=store.dtype)
            arrays[order] = store[raw[order]]  # sorted reads are sequential in the file
            kept = np.ones(len(raw), dtype=bool)
        else:
            arrays = np.empty((len(raw), *self.item_shape), dtype=self.item_dtype)
            kept = np.zeros(len(raw), dtype=bool)
            for k, i in enumerate(raw):
                kept[k] = self._read_item(int(i), arrays[k], policy)
            arrays = arrays[kept]
        if not kept.any():
            return None
        flips = self.flip[items][kept]
        arrays[flips] = arrays[flips][..., ::-1]
        raw = raw[kept]
        batch = zip_batch(arrays, None if self.labels is None else self.labels[raw], self.num_classes, raw)
        if self.scale_on_cpu and batch["real"].dtype == torch.uint8:
            batch["real"] = scale_to_unit(batch["real"])
        return batch

    def _read_item(self, i: int, out: np.ndarray, policy: BadDataPolicy) -> bool:
        member = self.index.members[i]
        try:
            array = decode_item(member, self.reader.read(member))
            if array.shape != out.shape or array.dtype != out.dtype:
                raise ValueError(f"item is {array.dtype}{list(array.shape)}; the dataset is {out.dtype}{list(out.shape)}")
        except Exception as err:  # any decode failure is bad data, handled by the policy
            policy.skip(self.index.source, member, err)
            return False
        out[...] = array
        policy.ok()
        return True
