"""Aspect-ratio, resolution and clip-length buckets, and an epoch whose every step is one bucket.

Targets are ``(height, width)`` or ``(height, width, frames)`` rows: a list, or
:func:`aspect_buckets` ("the nearest of N aspect ratios at about P pixels"). A sample goes to
the nearest aspect ratio in log space; among targets of that aspect ratio, to the largest
resolution not above its own (no upscaling), else the smallest; then likewise to the longest
clip not longer than its own (no frame is made up), else the shortest.

The plan treats each bucket as a stream with its own order, as the mix does: draw ``d`` of
bucket ``b`` is position ``d % count[b]`` of its pass ``d // count[b]``, and
:class:`BucketIndex` maps a bucket's positions to sample ids. A bucket's order is any
permutation of its positions (``ShardOrder`` over the bucket's per-shard counts, seeded by
``(seed, bucket)`` and the pass), so nothing per sample is built per epoch; only the bucket of
each sample, which the index records, is O(samples), once.

A global step takes ``world_size`` consecutive *chunks* of ``batch_size`` samples of one bucket,
one chunk a rank: every rank has the same shape at the same step, and every batch is full.
Bucket ``b`` has ``remaining // (world_size * batch_size)`` full steps; the rest of it (fewer
than ``world_size * batch_size`` samples) follows the tail policy:

- ``drop``: left out of this epoch (its pass moves on);
- ``pad``: one more step of the bucket, filled up with the bucket's first samples again;
- ``carry``: left for the next epoch, which draws it before the bucket's next pass.

The buckets' steps are interleaved by :class:`fastgen_dm.plan.interleave.Interleave` with each
bucket's step count as its weight and phases seeded by ``(seed, epoch)``: the steps of a bucket
are spread evenly through the epoch, and bucket ``b`` gets exactly its steps. A step's bucket
and chunk are computed in O(buckets log buckets), for any step.

Resume: :class:`BucketState` holds per bucket the samples drawn, plus the segment it belongs to
(where it began, its world size and batch size, the steps since). Resumed on the same world size
and batch size, the plan continues the very same schedule; on another one, every bucket's
remaining samples are scheduled anew from where it stands, so no sample is lost or repeated.
The limit of that choice: the step order after such a resume differs from the one an
uninterrupted run would have taken, and the tail (dropped, padded or carried samples) is that of
the new world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Mapping, NamedTuple, Sequence

import numpy as np

from fastgen_dm.plan.interleave import Interleave
from fastgen_dm.plan.order import shard_offsets
from fastgen_dm.index.bucket_store import MappedAssignment, assignment_dtype

BucketTail = Literal["drop", "pad", "carry"]
BUCKET_TAILS: tuple[str, ...] = ("drop", "pad", "carry")
_CHUNK = 1 << 16  # samples assigned at once: a (chunk, buckets) table of a few MB
_PHASE_DENOMINATOR = 1 << 32


def aspect_buckets(
    num_ratios: int,
    pixels: int,
    *,
    max_ratio: float = 2.0,
    multiple: int = 64,
    frames: Sequence[int] | None = None,
) -> np.ndarray:
    """Targets at about ``pixels`` pixels for ``num_ratios`` aspect ratios, int64 (M, 2) or (M, 3).

    The ratios (width / height) are spaced evenly in log space over
    ``[1 / max_ratio, max_ratio]`` (one ratio: square); each side is ``sqrt(pixels * ratio)``
    (width) or ``sqrt(pixels / ratio)`` (height) rounded to a multiple of ``multiple`` (at
    least one multiple), and targets that round alike are kept once. With ``frames``, every
    resolution is paired with every clip length.

    Example: ``aspect_buckets(5, 256 * 256)`` -> ``[[384, 192], [320, 192], [256, 256],
    [192, 320], [192, 384]]`` (height, width).
    """
    if num_ratios < 1 or pixels < 1 or multiple < 1 or not max_ratio >= 1:
        raise ValueError(f"need num_ratios, pixels and multiple >= 1 and max_ratio >= 1, got {num_ratios}, {pixels}, {multiple} and {max_ratio}")
    ratios = np.exp(np.linspace(-math.log(max_ratio), math.log(max_ratio), num_ratios)) if num_ratios > 1 else np.ones(1)

    def side(length: np.ndarray) -> np.ndarray:
        return np.maximum(np.round(length / multiple), 1).astype(np.int64) * multiple

    sizes = np.stack([side(np.sqrt(pixels / ratios)), side(np.sqrt(pixels * ratios))], axis=1)
    _, first = np.unique(sizes, axis=0, return_index=True)
    sizes = sizes[np.sort(first)]
    if frames is None:
        return sizes
    lengths = np.asarray(frames, dtype=np.int64)
    if lengths.ndim != 1 or lengths.size == 0 or (lengths < 1).any():
        raise ValueError(f"frames must be a non-empty list of clip lengths >= 1, got {list(frames)}")
    return np.concatenate([np.repeat(sizes, lengths.size, axis=0), np.tile(lengths, len(sizes))[:, None]], axis=1)


def targets_from(buckets: Sequence[Sequence[int]] | Mapping[str, Any], *, columns: Sequence[int] = (2,), ratios: bool = True) -> np.ndarray:
    """A DataModule's ``buckets`` argument as int64 (M, C) target rows, C one of ``columns``.

    ``[[256, 256], [192, 384]]`` -> those rows (height, width; with 3 columns also frames);
    ``{"ratios": 3, "pixels": 65536}`` -> ``aspect_buckets(3, 65536)`` = [[384, 192], [256, 256],
    [192, 384]], also with ``"max_ratio"``, ``"multiple"`` and (where 3 columns are allowed)
    ``"frames"``. ``ratios=False`` takes lists only (latent shapes, which are not resized).
    """
    names = "[[height, width], ...]" if tuple(columns) == (2,) else "[[height, width(, frames)], ...]"
    options = {"ratios", "pixels", "max_ratio", "multiple"} | ({"frames"} if 3 in columns else set())
    if isinstance(buckets, Mapping) and ratios:
        unknown = set(buckets) - options
        if unknown or not {"ratios", "pixels"} <= set(buckets):
            raise ValueError(f"buckets={dict(buckets)}: give 'ratios' and 'pixels' (optionally {sorted(options - {'ratios', 'pixels'})}), e.g. {{'ratios': 5, 'pixels': 65536}}")
        frames = buckets.get("frames")
        return aspect_buckets(
            int(buckets["ratios"]), int(buckets["pixels"]), max_ratio=float(buckets.get("max_ratio", 2.0)),
            multiple=int(buckets.get("multiple", 64)), frames=None if frames is None else [int(f) for f in frames],
        )  # fmt: skip
    try:
        table = np.asarray(buckets, dtype=np.int64)
    except (TypeError, ValueError):
        table = np.zeros((0, 0), np.int64)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] not in columns or (table < 1).any():
        alternative = " or {'ratios': N, 'pixels': P}" if ratios else ""
        raise ValueError(f"buckets={buckets!r}: give {names} (each >= 1){alternative}")
    return table


def _validate_targets(targets: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    table = np.asarray(targets, dtype=np.int64)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] not in (2, 3) or (table < 1).any():
        raise ValueError(f"targets must be rows of (height, width) or (height, width, frames) >= 1, got shape {table.shape}")
    return table


def _prefer_fitting(candidates: np.ndarray, target: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Narrow (n, M) ``candidates`` to the largest target not above the sample's size, else the smallest."""
    fits = target[None, :] <= size[:, None]
    score = np.where(fits, -target[None, :], target[None, :] + np.iinfo(np.int64).max // 2)
    score = np.where(candidates, score, np.iinfo(np.int64).max)
    return candidates & (score == score.min(axis=1, keepdims=True))


def assign_buckets(
    widths: np.ndarray,
    heights: np.ndarray,
    frames: np.ndarray | None = None,
    *,
    targets: Sequence[Sequence[int]] | np.ndarray,
) -> np.ndarray:
    """The bucket (row of ``targets``) of every sample, int64 of the samples' shape.

    Example: targets ``[(256, 256), (192, 384)]`` (height, width); a 640x480 (width x height)
    image has ratio 1.33, nearer 1 than 2 in log space -> bucket 0; 1000x400 -> bucket 1.
    Ties go to the first such target.
    """
    table = _validate_targets(targets)
    widths, heights = np.asarray(widths, dtype=np.int64).ravel(), np.asarray(heights, dtype=np.int64).ravel()
    if widths.shape != heights.shape or (widths.size and (min(widths.min(), heights.min()) < 1)):
        raise ValueError(f"widths and heights must be positive and of one length, got {widths.size} and {heights.size}")
    if (frames is None) != (table.shape[1] == 2):
        raise ValueError(f"targets have {table.shape[1]} columns; give frames exactly when they have three (height, width, frames)")
    lengths = None if frames is None else np.asarray(frames, dtype=np.int64).ravel()
    if lengths is not None and lengths.shape != widths.shape:
        raise ValueError(f"frames has {lengths.size} entries for {widths.size} samples; give one per sample")
    columns = [widths, heights] + ([] if lengths is None else [lengths])
    if widths.size > 64 and all(0 <= int(c.min()) and int(c.max()) < 1 << _KEY_BITS for c in columns):
        # datasets hold few distinct sizes: assign each once (6x faster on a shard of 10^4 photos)
        key = np.zeros(widths.size, np.int64)
        for column in columns:
            key = key << _KEY_BITS | column
        distinct, inverse = np.unique(key, return_inverse=True)
        unpacked = [(distinct >> (_KEY_BITS * (len(columns) - 1 - k))) & ((1 << _KEY_BITS) - 1) for k in range(len(columns))]
        if distinct.size < widths.size // 2:
            return _nearest_targets(unpacked[0], unpacked[1], None if lengths is None else unpacked[2], table)[inverse].reshape(np.shape(widths))
    return _nearest_targets(widths, heights, lengths, table).reshape(np.shape(widths))


_KEY_BITS = 21  # a side or a length below 2^21 packs three to an int64


def _nearest_targets(widths: np.ndarray, heights: np.ndarray, lengths: np.ndarray | None, table: np.ndarray) -> np.ndarray:
    """:func:`assign_buckets` of validated 1-d int64 columns, in chunks of a few MB."""
    target_ratio = np.log(table[:, 1] / table[:, 0])
    target_pixels = table[:, 0] * table[:, 1]
    out = np.empty(widths.size, dtype=np.int64)
    for start in range(0, widths.size, _CHUNK):
        w, h = widths[start : start + _CHUNK], heights[start : start + _CHUNK]
        distance = np.abs(np.log(w / h)[:, None] - target_ratio[None, :])
        # the nearest aspect ratio: targets whose ratio differs only by rounding count as one
        candidates = distance <= distance.min(axis=1, keepdims=True) + 1e-9
        candidates = _prefer_fitting(candidates, target_pixels, w * h)
        if lengths is not None:
            candidates = _prefer_fitting(candidates, table[:, 2], lengths[start : start + _CHUNK])
        out[start : start + _CHUNK] = candidates.argmax(axis=1)
    return out


class BucketIndex:
    """Each sample's bucket, kept compact: one byte a sample in file order (two past 256 buckets).

    Args:
        assignment: The bucket of every sample (file-order numbering over the shards): an array,
            or the node's file mapped (:class:`~fastgen_dm.index.bucket_store.MappedAssignment`),
            which every process of a node shares through the page cache.
        num_buckets: Buckets (rows of the targets); buckets without a sample are kept, empty.
        shard_counts: Samples per shard (None: one shard), summing to the samples.
        counts: ``counts[b, s]`` if known (``load_assignment`` reads them); None counts them.

    ``counts[b, s]`` are bucket ``b``'s samples in shard ``s``: a ``ShardOrder(counts[b])`` orders
    the bucket's positions by shard blocks like any sharded dataset, and :meth:`samples` turns
    its ``(shard, local)`` into sample ids. Per process the index holds the (buckets, shards)
    counts and the grouping of the few shards read last (:data:`KEPT_SHARDS`), never anything
    per sample of the dataset. Example: assignment ``[1, 0, 1, 1]`` in shards ``[2, 2]``:
    bucket 1 holds samples 0 (shard 0) and 2, 3 (shard 1); ``counts[1] = [1, 2]`` and
    ``samples(1, [1], [0]) = [2]``.
    """

    #: shards whose grouping by bucket a process keeps (a batch touches at most ``batch_size``)
    KEPT_SHARDS = 256

    def __init__(
        self,
        assignment: np.ndarray | MappedAssignment,
        *,
        num_buckets: int,
        shard_counts: Sequence[int] | np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        dtype = assignment_dtype(num_buckets)
        self.assignment = assignment if assignment.dtype == dtype else np.asarray(assignment).astype(dtype)
        self.num_buckets = num_buckets
        self.first = shard_offsets([self.assignment.size] if shard_counts is None else shard_counts)
        if self.first[-1] != self.assignment.size:
            raise ValueError(f"shard_counts sum to {self.first[-1]}, the assignment has {self.assignment.size} samples")
        if counts is None:
            counts = np.stack([self._count(s) for s in range(self.first.size - 1)], axis=1) if self.first.size > 1 else np.zeros((num_buckets, 0), np.int64)
        if counts.shape != (num_buckets, self.first.size - 1) or int(counts.sum()) != self.assignment.size:
            raise ValueError(f"counts of shape {counts.shape} do not fit {num_buckets} buckets over {self.first.size - 1} shards of {self.assignment.size} samples")
        self.counts = counts
        self._kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _count(self, shard: int) -> np.ndarray:
        values = np.asarray(self.assignment[self.first[shard] : self.first[shard + 1]], dtype=np.int64)
        if values.size and int(values.max()) >= self.num_buckets:
            raise ValueError(f"assignment holds buckets outside [0, {self.num_buckets}); pass num_buckets=len(targets)")
        return np.bincount(values, minlength=self.num_buckets)

    @property
    def bucket_counts(self) -> np.ndarray:
        """int64 (buckets,): samples per bucket."""
        return self.counts.sum(axis=1, dtype=np.int64)

    def _grouping(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``shard``'s samples by bucket (file order within) and where each bucket's begin."""
        kept = self._kept.get(shard)
        if kept is None:
            if len(self._kept) >= self.KEPT_SHARDS:
                self._kept.pop(next(iter(self._kept)))  # the oldest: reading moves on through the shards
            values = self.assignment[self.first[shard] : self.first[shard + 1]]
            starts = np.zeros(self.num_buckets, np.int64)
            np.cumsum(self.counts[:-1, shard], out=starts[1:])
            kept = self._kept[shard] = (np.argsort(values, kind="stable"), starts)
        return kept

    def samples(self, bucket: int, shard: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Sample ids of bucket ``bucket``'s ``local``-th samples in ``shard`` (int64 arrays)."""
        shard, local = np.asarray(shard, dtype=np.int64), np.asarray(local, dtype=np.int64)
        out = np.empty(shard.shape, np.int64)
        for s in np.unique(shard).tolist():
            chosen = shard == s
            members, starts = self._grouping(s)
            out[chosen] = self.first[s] + members[starts[bucket] + local[chosen]]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _kept={})  # a worker groups the shards it reads itself


@dataclass(frozen=True)
class BucketState:
    """Where a bucketed run stands: all it needs to resume, on any world size.

    Attributes:
        epoch: The epoch.
        drawn: Per bucket, samples drawn since the run began (pass ``drawn // count``).
        anchor: Per bucket, ``drawn`` where the current schedule (segment) began.
        steps: Global steps of the segment taken.
        world_size, batch_size: The segment's; a resume with others starts a new segment.
    """

    epoch: int
    drawn: tuple[int, ...]
    anchor: tuple[int, ...]
    steps: int
    world_size: int
    batch_size: int

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "drawn": list(self.drawn), "anchor": list(self.anchor), "steps": self.steps, "world_size": self.world_size, "batch_size": self.batch_size}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "BucketState":
        return cls(
            int(state["epoch"]), tuple(int(d) for d in state["drawn"]), tuple(int(a) for a in state["anchor"]),
            int(state["steps"]), int(state["world_size"]), int(state["batch_size"]),
        )


class BucketBatch(NamedTuple):
    """One rank's batch of a bucketed step: one bucket, ``batch_size`` slots (int64 / bool arrays)."""

    bucket: int
    positions: np.ndarray  # position in the bucket's pass
    passes: np.ndarray  # the bucket's pass (its permutation is seeded by it)
    padded: np.ndarray  # True where the slot repeats a sample to fill the batch (tail "pad")


class BucketPlan:
    """One epoch (from a state on) of steps that each take every rank's batch from one bucket.

    Args:
        counts: Samples per bucket (:attr:`BucketIndex.bucket_counts`); empty buckets are allowed.
        batch_size: Samples per rank per step.
        world_size: Ranks.
        seed: Seeds the interleaving of the buckets' steps, with the epoch.
        tail: What happens to each bucket's rest of fewer than ``world_size * batch_size``
            samples: ``"drop"``, ``"pad"`` or ``"carry"`` (see the module docs).
        state: Where to start: a :meth:`state_after` (any world size); None starts the run.

    Example::

        >>> plan = BucketPlan([10, 4], batch_size=2, world_size=2, tail="pad")
        >>> plan.num_steps, [plan.step_bucket(s) for s in range(plan.num_steps)]
        (4, [0, 1, 0, 0])
        >>> plan.batch(0, 3).positions.tolist(), plan.batch(1, 3).positions.tolist(), plan.batch(1, 3).padded.tolist()
        ([8, 9], [0, 1], [True, True])
    """

    def __init__(
        self,
        counts: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        tail: BucketTail = "drop",
        state: BucketState | None = None,
    ) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.ndim != 1 or self.counts.size == 0 or (self.counts < 0).any():
            raise ValueError(f"counts must be a non-empty list of samples per bucket >= 0, got {np.asarray(counts).tolist()}")
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be at least 1, got {batch_size} and {world_size}")
        if tail not in BUCKET_TAILS:
            raise ValueError(f"tail {tail!r} is unknown for buckets; use one of {BUCKET_TAILS}")
        self.batch_size, self.world_size, self.seed, self.tail = batch_size, world_size, seed, tail
        self.state = self._start(state)
        self.epoch = self.state.epoch
        self.step_samples = world_size * batch_size
        anchor = np.asarray(self.state.anchor, dtype=np.int64)
        self._anchor = anchor
        self._pass_end = (self.epoch + 1) * self.counts  # drawn at the end of this epoch's pass
        # (buckets,): the segment's samples, full steps, rest and steps per bucket
        self._remaining = self._pass_end - anchor
        self._full = self._remaining // self.step_samples
        self._rest = self._remaining - self._full * self.step_samples
        self._segment_steps = self._full + ((self._rest > 0) if tail == "pad" else 0)
        total = int(self._segment_steps.sum())
        rng = np.random.default_rng([seed, self.epoch])
        phases = [Fraction(int(u), _PHASE_DENOMINATOR) for u in rng.integers(1, _PHASE_DENOMINATOR, size=self.counts.size)]
        self._schedule = Interleave(self._segment_steps.tolist(), phases) if total else None
        self._offset = self.state.steps
        self.num_steps = total - self._offset
        if self._schedule is not None and self._drawn_after(self._offset) != self.state.drawn:
            raise ValueError(f"state.drawn {list(self.state.drawn)} does not follow its segment from {list(self.state.anchor)}; pass a state that BucketPlan.state_after wrote")

    def _start(self, state: BucketState | None) -> BucketState:
        K = self.counts.size
        if state is None:
            return BucketState(0, (0,) * K, (0,) * K, 0, self.world_size, self.batch_size)
        if not len(state.drawn) == len(state.anchor) == K:
            raise ValueError(f"state has {len(state.drawn)} buckets, the plan {K}; resume with the same targets")
        low = state.epoch * self.counts if self.tail != "carry" else np.zeros(K, np.int64)
        drawn = np.asarray(state.drawn)
        if state.epoch < 0 or (drawn < low).any() or (drawn > (state.epoch + 1) * self.counts).any():
            raise ValueError(f"state.drawn {list(state.drawn)} is outside epoch {state.epoch}'s passes of counts {self.counts.tolist()}; pass a state that BucketPlan.state_after wrote")
        if (state.world_size, state.batch_size) != (self.world_size, self.batch_size):
            # another shape of step: every bucket's remaining samples are scheduled anew from here
            return BucketState(state.epoch, state.drawn, state.drawn, 0, self.world_size, self.batch_size)
        return state

    def _drawn_after(self, segment_steps: int) -> tuple[int, ...]:
        """Per bucket drawn after ``segment_steps`` steps of the segment (a pad step draws only the rest)."""
        assert self._schedule is not None
        taken = np.asarray(self._schedule.counts(segment_steps), dtype=np.int64)
        return tuple((self._anchor + np.minimum(taken * self.step_samples, self._remaining)).tolist())

    def _locate(self, step: int) -> tuple[int, int]:
        """(bucket, that bucket's step within the segment) of ``step`` of this plan."""
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step must be in [0, {self.num_steps}), got {step}")
        assert self._schedule is not None
        bucket, index = self._schedule.window(self._offset + step, self._offset + step + 1)
        return int(bucket[0]), int(index[0])

    def step_bucket(self, step: int) -> int:
        """The bucket every rank draws from at ``step`` of this plan (counted from the state)."""
        return self._locate(step)[0]

    def batch(self, rank: int, step: int) -> BucketBatch:
        """Rank ``rank``'s batch at ``step``: chunk ``rank`` of the bucket's step."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        bucket, index = self._locate(step)
        first = int(self._anchor[bucket]) + index * self.step_samples + rank * self.batch_size
        drawn = np.arange(first, first + self.batch_size, dtype=np.int64)
        end, count = int(self._pass_end[bucket]), int(self.counts[bucket])
        padded = drawn >= end  # only in a pad step: past the pass, the pass's first samples again
        drawn = np.where(padded, end - count + (drawn - end) % count, drawn)
        return BucketBatch(bucket, drawn % count, drawn // count, padded)

    @property
    def padded_samples(self) -> int:
        """Slots of this plan that repeat a sample: each pad step still to come fills up its bucket's rest."""
        if self.tail != "pad" or self._schedule is None:
            return 0
        taken = np.asarray(self._schedule.counts(self._offset), dtype=np.int64)
        pending = (self._rest > 0) & (taken < self._segment_steps)
        return int(((self.step_samples - self._rest) * pending).sum())

    @property
    def dropped_samples(self) -> int:
        """Samples of this epoch's passes left out (tail ``drop``)."""
        return int(self._rest.sum()) if self.tail == "drop" else 0

    @property
    def carried_samples(self) -> int:
        """Samples left for the next epoch (tail ``carry``)."""
        return int(self._rest.sum()) if self.tail == "carry" else 0

    @property
    def padded_share(self) -> float:
        """Share of this plan's slots that repeat a sample."""
        return self.padded_samples / max(self.num_steps * self.step_samples, 1)

    @property
    def dropped_share(self) -> float:
        """Share of this segment's samples left out of the epoch."""
        return self.dropped_samples / max(int(self._remaining.sum()), 1)

    def state_after(self, steps: int) -> BucketState:
        """The state once ``steps`` steps of this plan are consumed; after the last, the next epoch's start."""
        if not 0 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in [0, {self.num_steps}], got {steps}")
        if steps < self.num_steps:
            return BucketState(self.epoch, self._drawn_after(self._offset + steps), self.state.anchor, self._offset + steps, self.world_size, self.batch_size)
        if self.tail == "carry":  # the rest opens the next epoch
            drawn = tuple((self._anchor + self._full * self.step_samples).tolist())
        else:  # dropped or padded: the next epoch is the next pass
            drawn = tuple(self._pass_end.tolist())
        return BucketState(self.epoch + 1, drawn, drawn, 0, self.world_size, self.batch_size)

    def resumed(self, state: BucketState, *, world_size: int | None = None, batch_size: int | None = None) -> "BucketPlan":
        """The same buckets from ``state``, on ``world_size`` ranks of ``batch_size`` (default: this plan's)."""
        return BucketPlan(
            self.counts,
            batch_size=self.batch_size if batch_size is None else batch_size,
            world_size=self.world_size if world_size is None else world_size,
            seed=self.seed,
            tail=self.tail,
            state=state,
        )
