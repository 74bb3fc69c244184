"""Read samples to a batch: decode each, run the family's per-sample step, check the schema, collate.

One :class:`BatchDecoder` per reader process counts every sample into its
:class:`~fastgen_dm.read.BadDataPolicy`: bad ones (unreadable, undecodable, off-schema) are
skipped, filtered ones (``presets_filter``, a missing member) counted apart.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from fastgen_dm.batch.collate import wds_batch
from fastgen_dm.decode.sample import SampleFilteredOut, SampleSpec
from fastgen_dm.read import BadDataPolicy


class SampleOrigin(NamedTuple):
    """Where a sample comes from, for transforms that seed per sample (e.g. a video's clip start).

    ``draw``: in resampled mode, where a sample can be drawn many times, the reader's count of
    samples drawn before this one (so each draw gets its own clip); None in epoch mode.
    ``bucket``: the bucket (row of the targets) the plan drew the sample for; None without buckets.
    """

    url: str
    key: str
    epoch: int
    draw: int | None = None
    bucket: int | None = None


#: A family's per-sample step after decoding: ``(sample, origin) -> sample``; raising = bad data.
SampleTransform = Callable[[dict[str, Any], SampleOrigin], dict[str, Any]]

#: Keys whose full shape must match across samples; other tensors must match in dtype and rank.
FIXED_SHAPE_KEYS = ("real", "noise", "path")


def _has_non_finite(value: torch.Tensor | np.ndarray) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not bool(np.isfinite(value).all())
    return (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all())


def _signature(value: Any) -> tuple[str, tuple[int, ...]] | None:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return str(value.dtype), tuple(value.shape)
    return None


class BatchDecoder:
    """Turns read samples into batches, counting bad and filtered ones (one per reader process).

    The reader's first batch fixes each tensor key's dtype and rank (and, for
    ``FIXED_SHAPE_KEYS``, its shape) by majority, so one odd sample among good ones is the one
    counted as bad, whichever comes first; a later sample that differs is bad data too, not a
    batch that fails to collate. ``check_finite`` also counts tensors holding NaN or Inf as bad.
    With buckets each bucket has its own schema (its own ``real`` shape), fixed by its first batch.
    """

    def __init__(
        self,
        spec: SampleSpec,
        constants: Mapping[str, Any],
        policy: BadDataPolicy,
        transform: SampleTransform | None = None,
        check_finite: bool = False,
        specs_by_url: Mapping[str, SampleSpec] | None = None,
    ) -> None:
        self.spec, self.constants, self.policy, self.transform = spec, constants, policy, transform
        self.specs_by_url = specs_by_url or {}  # a mixed stream's own key_map, per shard
        self.check_finite = check_finite
        self.filtered = 0
        self.schema: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._bucket_schemas: dict[int | None, dict[str, tuple[str, tuple[int, ...]]]] = {None: self.schema}

    def _fix_schema(self, samples: Sequence[Mapping[str, Any]]) -> None:
        """Each key's most common signature among ``samples`` (FIXED_SHAPE_KEYS by full shape)."""
        votes: dict[str, Counter[tuple[str, tuple[int, ...]]]] = {}
        for sample in samples:
            for key, value in sample.items():
                signature = _signature(value)
                if signature is not None:
                    vote = signature if key in FIXED_SHAPE_KEYS else (signature[0], (0,) * len(signature[1]))
                    votes.setdefault(key, Counter())[vote] += 1
        for key, counter in votes.items():
            self.schema.setdefault(key, counter.most_common(1)[0][0])

    def _check(self, sample: Mapping[str, Any]) -> None:
        for key, value in sample.items():
            signature = _signature(value)
            if signature is None:
                continue
            if self.check_finite and _has_non_finite(value):
                raise ValueError(f"{key!r} holds NaN or Inf values (check_finite=True)")
            expected = self.schema.setdefault(key, signature)
            dtype, shape = signature
            same_shape = shape == expected[1] if key in FIXED_SHAPE_KEYS else len(shape) == len(expected[1])
            if dtype != expected[0] or not same_shape:
                described = f"{expected[0]}{list(expected[1])}" if key in FIXED_SHAPE_KEYS else f"{expected[0]} with {len(expected[1])} dimensions"
                raise ValueError(f"{key!r} is {dtype}{list(shape)}, but the dataset's are {described}")

    def batch(
        self, items: Sequence[tuple[str, str, Any]], epoch: int, first_draw: int | None = None, *, bucket: int | None = None
    ) -> dict[str, Any] | None:
        """``items``: (shard url, key, members or exception); None when every sample was dropped.

        ``first_draw``: the draw number of the first item (resampled mode), None in epoch mode.
        ``bucket``: the plan's bucket of this batch (passed to the transform, and the batch's
        ``bucket`` entry); None without buckets.
        """
        self.schema = self._bucket_schemas.setdefault(bucket, {})
        decoded = []
        for k, (url, key, members) in enumerate(items):
            if isinstance(members, Exception):
                self.policy.skip(url, key, members)
                continue
            try:
                sample = self.specs_by_url.get(url, self.spec).decode(members)
                if self.transform is not None:
                    draw = None if first_draw is None else first_draw + k
                    sample = self.transform(sample, SampleOrigin(url, key, epoch, draw, bucket))
            except SampleFilteredOut:
                self.filtered += 1
                self.policy.ok()
                continue
            except Exception as err:  # undecodable or incomplete sample: counted by the policy
                self.policy.skip(url, key, err)
                continue
            decoded.append((url, key, sample))
        if not self.schema:
            self._fix_schema([sample for _, _, sample in decoded])
        samples, fnames, shards = [], [], []
        for url, key, sample in decoded:
            try:
                self._check(sample)
            except ValueError as err:
                self.policy.skip(url, key, err)
                continue
            self.policy.ok()
            samples.append(sample)
            fnames.append(key)
            shards.append(url)
        if not samples:
            return None
        batch = wds_batch(samples, fnames, shards, self.constants)
        if bucket is not None:
            batch["bucket"] = bucket
        return batch
