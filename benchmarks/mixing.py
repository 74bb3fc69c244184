"""How well a loader mixes its samples, from the batches it delivered and the shards' file order.

Pure functions, no I/O: the benchmarks collect ``(shard name, key)`` per delivered sample and
the keys of each shard in file order, and call :func:`measure`.

Three measures (issue 10, "shuffle at least as good as FastGen's"):

- **Distinct shards per batch** (mean and min). Samples written together (one shard: often one
  source, one crawl, one video) are correlated; a batch drawn from one shard is a biased
  gradient step. A uniform random batch of B samples from S equal shards meets about
  ``S * (1 - (1 - 1/S) ** B)`` of them (:func:`uniform_shards_per_batch`).
- **Median step**: the median distance in file order between consecutive samples of the
  stream (what one rank sees, batch after batch, in order), divided by the number of samples.
  An unshuffled stream steps 1/N; a uniformly random order's median is ``1 - 1/sqrt(2)``
  (about 0.293: the median of ``|U - V|`` for independent uniforms).
- **Single-shard batches**: the fraction of batches whose samples all come from one shard.

Example: two shards ``a`` (keys 0, 1) and ``b`` (keys 0, 1) in that file order, file
positions a/0=0, a/1=1, b/0=2, b/1=3. Batches ``[[a/0, b/1], [a/1, b/0]]``: distinct shards
2 and 2; the stream a/0, b/1, a/1, b/0 steps 3, 2, 1, median 2, divided by 4 samples: 0.5;
no single-shard batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Iterable, Sequence

#: One delivered sample: (shard name, sample key). The same shard name as in the file order.
Sample = tuple[str, str]

__all__ = ["RANDOM_MEDIAN_STEP", "Mixing", "Sample", "file_positions", "measure", "table", "uniform_shards_per_batch"]

RANDOM_MEDIAN_STEP = 1 - 1 / math.sqrt(2)


@dataclass(frozen=True)
class Mixing:
    """The mixing of one delivered stream.

    Attributes:
        batches: Batches delivered.
        samples: Samples delivered.
        shards_per_batch_mean: Mean number of distinct shards in a batch.
        shards_per_batch_min: Fewest distinct shards in any batch.
        median_step: Median |file position change| between consecutive samples / dataset size.
        single_shard_fraction: Fraction of batches drawn from one shard only.
    """

    batches: int
    samples: int
    shards_per_batch_mean: float
    shards_per_batch_min: int
    median_step: float
    single_shard_fraction: float


def file_positions(shards: Iterable[tuple[str, Sequence[str]]]) -> dict[Sample, int]:
    """Position in file order of each (shard name, key), for shards given in file order.

    Example: ``[("a", ["0", "1"]), ("b", ["0"])]`` -> ``{("a", "0"): 0, ("a", "1"): 1, ("b", "0"): 2}``.
    """
    positions: dict[Sample, int] = {}
    for name, keys in shards:
        for key in keys:
            if (name, key) in positions:
                raise ValueError(f"sample {key!r} of shard {name!r} appears twice in the file order")
            positions[name, key] = len(positions)
    return positions


def measure(batches: Sequence[Sequence[Sample]], positions: dict[Sample, int]) -> Mixing:
    """The :class:`Mixing` of ``batches`` (in delivery order) against ``positions`` (:func:`file_positions`).

    Raises:
        ValueError: No batches, an empty batch, or a sample missing from ``positions``.
    """
    if not batches:
        raise ValueError("batches is empty: nothing was delivered to measure")
    stream: list[int] = []
    distinct: list[int] = []
    for k, batch in enumerate(batches):
        if not batch:
            raise ValueError(f"batch {k} is empty")
        for sample in batch:
            if sample not in positions:
                raise ValueError(f"batch {k} holds {sample!r}, which is not in the file order (shard names must match)")
            stream.append(positions[sample])
        distinct.append(len({shard for shard, _ in batch}))
    steps = [abs(b - a) for a, b in zip(stream, stream[1:])]
    return Mixing(
        batches=len(batches),
        samples=len(stream),
        shards_per_batch_mean=sum(distinct) / len(distinct),
        shards_per_batch_min=min(distinct),
        median_step=median(steps) / len(positions) if steps else 0.0,
        single_shard_fraction=sum(d == 1 for d in distinct) / len(distinct),
    )


def uniform_shards_per_batch(batch_size: int, num_shards: int) -> float:
    """Expected distinct shards in a uniform random batch (equal shards, drawn with replacement)."""
    return num_shards * (1 - (1 - 1 / num_shards) ** batch_size)


def table(rows: dict[str, Mixing], batch_size: int, num_shards: int) -> str:
    """The measures side by side, one line per loader, with the uniform-random reference last."""
    lines = [
        f"   {'loader':44} {'shards/batch mean':>17} {'min':>5} {'median step':>12} {'one-shard batches':>18}",
    ]
    for name, m in rows.items():
        lines.append(
            f"   {name:44} {m.shards_per_batch_mean:>17.2f} {m.shards_per_batch_min:>5} "
            f"{m.median_step:>12.4f} {m.single_shard_fraction:>17.1%}"
        )
    lines.append(
        f"   {'(uniform random order, for reference)':44} {uniform_shards_per_batch(batch_size, num_shards):>17.2f} "
        f"{'':>5} {RANDOM_MEDIAN_STEP:>12.4f} {'':>18}"
    )
    return "\n".join(lines)
