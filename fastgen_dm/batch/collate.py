"""Batch dictionaries, in FastGen's layout.

Zip family (:func:`zip_batch`): ``real`` [B, C, H, W] (uint8 pixels until scaled, float latents
as stored), ``condition`` float32 one-hot [B, num_classes] (zeros [B, 0] without labels),
``neg_condition`` zeros of the same shape, ``idx`` int64 [B].

WebDataset family (:func:`wds_batch`): ``fname`` and ``shard`` lists, then each sample key
collated, then the constants.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch

from fastgen_dm.decode.sample import RESERVED_KEYS


def one_hot(labels: np.ndarray | None, num_classes: int, batch: int) -> torch.Tensor:
    """float32 [batch, num_classes]; ``labels`` None gives zeros [batch, num_classes]."""
    out = torch.zeros(batch, num_classes, dtype=torch.float32)
    if labels is not None and num_classes:
        out[torch.arange(batch), torch.from_numpy(labels)] = 1.0
    return out


def zip_batch(real: np.ndarray, labels: np.ndarray | None, num_classes: int, idx: np.ndarray) -> dict[str, torch.Tensor]:
    condition = one_hot(labels, num_classes, len(idx))
    return {
        "real": torch.from_numpy(real),
        "condition": condition,
        "neg_condition": torch.zeros_like(condition),
        "idx": torch.from_numpy(np.asarray(idx, dtype=np.int64)),
    }


# --- WebDataset family ----------------------------------------------------------------------------


def _to_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor | None:
    """A tensor sharing memory with ``value``; None for arrays torch cannot hold (strings, objects)."""
    if isinstance(value, torch.Tensor):
        return value
    if value.dtype.kind not in "biufc":
        return None
    if not value.flags.writeable:  # torch warns on read-only arrays; one copy here is harmless
        value = value.copy()
    return torch.from_numpy(np.ascontiguousarray(value))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, straight into shared memory inside a DataLoader worker.

    A worker's batch is moved to shared memory to reach the main process; stacking there in the
    first place saves that copy, and the freed heap copies that otherwise pile up in the worker
    (a few MB per batch of large samples, kept by the allocator).
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first.untyped_storage()._new_shared(len(tensors) * first.numel() * first.element_size())
    out = first.new(storage).view(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def collate_column(values: Sequence[Any]) -> Any:
    """One batch key's B values collated as FastGen's ``default_collate`` would.

    Equal-shape tensors/arrays -> one [B, ...] tensor; ints -> int64 [B]; floats -> float64 [B];
    dicts with the same keys -> a dict of collated columns; anything else -> a list.

    ``[zeros(4, 8), zeros(4, 8)]`` -> tensor [2, 4, 8]; ``[zeros(3), zeros(5)]`` -> list of 2 tensors;
    ``["a", "b"]`` -> ``["a", "b"]``; ``[{"crop_x0": 10}, {"crop_x0": 0}]`` -> ``{"crop_x0": tensor([10, 0])}``
    (the video families' ``cropping_params``).
    """
    values = list(values)
    if all(isinstance(v, (torch.Tensor, np.ndarray)) for v in values):
        tensors = [_to_tensor(v) for v in values]
        if any(t is None for t in tensors):
            return values
        if all(t.shape == tensors[0].shape for t in tensors):  # type: ignore[union-attr]
            return _stack(tensors)  # type: ignore[arg-type]
        return tensors
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        is_int = all(isinstance(v, int) for v in values)
        return torch.tensor(values, dtype=torch.int64 if is_int else torch.float64)
    if values and all(isinstance(v, Mapping) and list(v) == list(values[0]) for v in values):
        return {key: collate_column([v[key] for v in values]) for key in values[0]}
    return values


def _repeat(value: Any, batch: int) -> Any:
    """A constant for ``batch`` samples: tensors expanded to [B, ...] (stride 0, no copy); else B references."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        tensor = _to_tensor(value)
        if tensor is not None:
            return tensor.unsqueeze(0).expand(batch, *tensor.shape)
    return [value] * batch


def wds_batch(
    samples: Sequence[Mapping[str, Any]],
    fnames: Sequence[str],
    shards: Sequence[str],
    constants: Mapping[str, Any],
) -> dict[str, Any]:
    """Collate decoded samples into FastGen's WebDataset batch dictionary.

    Args:
        samples: B outputs of :meth:`SampleSpec.decode` (possibly transformed), all with the same keys.
        fnames: The B sample keys (``__key__``), e.g. ``["000042", "000043"]``.
        shards: The B shard URLs the samples came from.
        constants: The output of :func:`load_constants`, repeated for every sample.

    Returns:
        ``"fname"`` and ``"shard"`` (lists of B), then each sample key: equal-shape tensors/arrays
        stacked to [B, ...] (arrays through ``torch.from_numpy``), ints to int64 [B], floats to
        float64 [B], dicts with equal keys to a dict of such columns (``cropping_params``: int64 [B]
        each), anything else (strings, unequal shapes) a list of B; then each constant:
        a tensor/array of shape S as a [B, *S] view made by ``expand`` (no copy: read it, never write
        to it in place), anything else (a preset string, text) a list of B references to the one value.

    Raises:
        ValueError: Lengths that differ, an empty batch, samples with different keys, or a key
            that appears both in the samples and in ``constants`` (or is reserved).
    """
    batch = len(samples)
    if batch == 0 or len(fnames) != batch or len(shards) != batch:
        raise ValueError(
            f"wds_batch needs one fname and one shard per sample and at least one sample; got "
            f"{batch} samples, {len(fnames)} fnames, {len(shards)} shards"
        )
    keys = list(samples[0])
    for sample, fname in zip(samples, fnames):
        if list(sample) != keys:
            raise ValueError(f"sample {fname!r} has keys {list(sample)}; the batch's first sample has {keys}")
    clash = sorted((set(keys) & set(constants)) | ((set(keys) | set(constants)) & RESERVED_KEYS))
    if clash:
        raise ValueError(
            f"batch keys {clash} clash: sample keys, constants and {sorted(RESERVED_KEYS)} must be distinct"
        )
    out: dict[str, Any] = {"fname": list(fnames), "shard": list(shards)}
    for key in keys:
        out[key] = collate_column([sample[key] for sample in samples])
    for key, value in constants.items():
        out[key] = _repeat(value, batch)
    return out


def drop_rows(batch: Mapping[str, Any], rows: Collection[int]) -> dict[str, Any]:
    """``batch`` without the samples at ``rows``: every list and every tensor of B rows loses them,
    inside nested dicts too (``cropping_params``).

    ``drop_rows({"fname": ["a", "b", "c"], "real": x}, {1})`` -> ``{"fname": ["a", "c"], "real": x[[0, 2]]}``.
    """
    size = len(batch["fname"])
    keep = [i for i in range(size) if i not in rows]
    return _keep_rows(batch, size, keep)


def _keep_rows(batch: Mapping[str, Any], size: int, keep: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            value = value[torch.tensor(keep, device=value.device)]
        elif isinstance(value, list) and len(value) == size:
            value = [value[i] for i in keep]
        elif isinstance(value, Mapping):
            value = _keep_rows(value, size, keep)
        out[key] = value
    return out
