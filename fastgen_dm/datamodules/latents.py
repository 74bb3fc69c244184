"""Shard families of precomputed tensors, with FastGen's defaults: latents, KD pairs and KD paths.

Each is a :class:`WDSDataModule` with other default members; every argument of that class
applies. ``neg_condition`` is read once from ``neg_condition.pth`` in the first datatag's folder
when that file exists (``files_map`` points it elsewhere).
"""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from fastgen_dm.datamodules.webdataset import WDSDataModule
from fastgen_dm.index.datatags import Shard
from fastgen_dm.index.shard_index import ShardIndex
from fastgen_dm.storage.atomic import write_atomic
from fastgen_dm.plan.buckets import BUCKET_TAILS, BucketTail, targets_from
from fastgen_dm.transform.latent import LatentBucketCrop

logger = logging.getLogger(__name__)

_NEG = {"neg_condition": "neg_condition.pth"}
#: ``buckets="shapes"`` with more distinct shapes than this is an error (each bucket leaves a tail)
MAX_SHAPE_BUCKETS = 64


class _BucketedLatents(WDSDataModule):
    """Latent shape buckets for the latent families: the ``real`` latent's shape from the index."""

    #: target columns a family takes: (H, W) for image latents, also (H, W, T) for video latents
    bucket_columns: tuple[int, ...] = (2,)

    #: ``buckets="shapes"``: the targets are the latent shapes the data holds, found at ``prepare_data``
    shape_buckets = False

    def _set_buckets(self, buckets: list[list[int]] | Literal["shapes"] | None, bucket_tail: BucketTail) -> None:
        if bucket_tail not in BUCKET_TAILS:
            raise ValueError(f"bucket_tail={bucket_tail!r} is unknown; use one of {BUCKET_TAILS}")
        if buckets is None:
            return
        if buckets == "shapes":
            self.shape_buckets = True
        else:
            self.bucket_targets = targets_from(buckets, columns=self.bucket_columns, ratios=False)
        self.bucket_tail = bucket_tail
        self.bucket_sizes_of = self.spec.key_map["real"] if "real" in self.spec.key_map else next(iter(self.spec.key_map.values()))

    @property
    def bucketed(self) -> bool:
        return self.shape_buckets or self.bucket_targets is not None

    def resolve_bucket_targets(self, shards: Sequence[Shard]) -> None:
        """``buckets="shapes"``: every latent shape in the index, once per node (``index_dir/shapes-<digest>.json``).

        Each shard's distinct shapes are taken from its index (a pass over the index's sizes, not
        over the data), their union sorted by (H, W[, T]); latents of unknown shape are left to
        the reader. More than :data:`MAX_SHAPE_BUCKETS` shapes is an error: list the targets.
        """
        if not self.shape_buckets or self.bucket_targets is not None:
            return
        assert self.bucket_sizes_of is not None
        columns = max(self.bucket_columns)
        path = Path(self.index_dir) / f"shapes-{self.shards_digest(shards, str(columns).encode())}.json"
        if path.exists():
            shapes = json.loads(path.read_text())
        else:
            found: set[tuple[int, ...]] = set()
            for shard in shards:
                if shard.index is None or shard.index.sizes is None:
                    raise ValueError(f"buckets='shapes' needs each latent's shape, and the index of {shard.url} has none; run `fastgen index --sizes {self.bucket_sizes_of} WDS:{posixpath.dirname(shard.url)}`")
                sizes = shard.index.sizes_for(self.bucket_sizes_of, 3)
                known = sizes[(sizes[:, :2] > 0).all(axis=1)]
                rows = known[:, [1, 0, 2]] if columns == 3 else known[:, [1, 0]]  # (W, H, T) -> (H, W[, T])
                found.update(map(tuple, np.unique(rows, axis=0).tolist()))
                if len(found) > MAX_SHAPE_BUCKETS:
                    raise ValueError(f"buckets='shapes' finds more than {MAX_SHAPE_BUCKETS} latent shapes; list the targets instead, e.g. buckets=[[32, 32], [24, 48]]")
            if not found:
                raise ValueError(f"buckets='shapes' finds no latent of known shape in {len(shards)} shards")
            shapes = sorted(found)
            write_atomic(path, json.dumps(shapes).encode())
        self.bucket_targets = np.asarray(shapes, dtype=np.int64)
        logger.info("buckets='shapes': %d latent shapes %s", len(shapes), shapes[:8])

    def sample_transform(self) -> LatentBucketCrop | None:
        if self.bucket_targets is None:
            return None
        key = "real" if "real" in self.spec.key_map else next(iter(self.spec.key_map))
        return LatentBucketCrop(tuple(tuple(int(v) for v in row) for row in self.bucket_targets), (key,))

    def bucket_dims(self, index: ShardIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The latent's (W, H[, T]) from the index (``fastgen index --sizes latent.pth``); unknown: 1 x 1, judged when read."""
        assert self.bucket_sizes_of is not None and self.bucket_targets is not None
        sizes = index.sizes_for(self.bucket_sizes_of, 3).astype(np.int64)
        sizes[(sizes[:, :2] <= 0).any(axis=1), :2] = 1
        return sizes[:, 0], sizes[:, 1], sizes[:, 2] if self.bucket_targets.shape[1] == 3 else None


_BUCKETS_DOC = """buckets: Latent shape buckets: a list of latent ``[H, W]`` targets{frames}, or
            ``"shapes"``: every latent shape the index holds (at most 64), found once per node.
            Each sample goes to the nearest aspect ratio, then the largest target it covers,
            and is center-cropped to it (latents are never resized); every global step takes
            every GPU's batch from one bucket; batches carry ``bucket``. One smaller than every
            target of its ratio is bad data. Needs the latents' shapes in the index: ``fastgen
            index --sizes latent.pth WDS:<location>`` (``prepare_data`` records them for local
            data it indexes).
        bucket_tail: Each bucket's rest of fewer than one global step: ``"drop"``, ``"pad"`` or ``"carry"``."""


class ImageLatentDataModule(_BucketedLatents):
    __doc__ = f"""Image latents and text embeddings: ``real`` = ``latent.pth``, ``condition`` = ``txt_emb.pth``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        {_BUCKETS_DOC.format(frames="")}
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(
        self, datatags: list[str] | None = None, batch_size: int = 32, buckets: list[list[int]] | Literal["shapes"] | None = None, bucket_tail: BucketTail = "drop", **kwargs: Any
    ) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, **kwargs)
        self._set_buckets(buckets, bucket_tail)
        self._validate_buckets()


class VideoLatentDataModule(_BucketedLatents):
    __doc__ = f"""Video latents [C, T, H, W] and text embeddings (``latent.pth``, ``txt_emb.pth``).

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        num_workers: DataLoader workers per GPU (video latents are large: few workers suffice).
        {_BUCKETS_DOC.format(frames=", or ``[H, W, T]`` to also take the first T latent frames")}
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG
    bucket_columns = (2, 3)

    def __init__(
        self,
        datatags: list[str] | None = None,
        batch_size: int = 2,
        num_workers: int | None = 2,
        buckets: list[list[int]] | Literal["shapes"] | None = None,
        bucket_tail: BucketTail = "drop",
        **kwargs: Any,
    ) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, num_workers=num_workers, **kwargs)
        self._set_buckets(buckets, bucket_tail)
        self._validate_buckets()


class PairDataModule(WDSDataModule):
    """Single-step distillation pairs: ``real`` (``latent.pth``), ``noise`` (``noise.pth``), ``condition``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "noise": "noise.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(self, datatags: list[str] | None = None, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, **kwargs)


class PathDataModule(WDSDataModule):
    """Multi-step distillation paths: ``real``, ``path`` [steps, C, ...] (``path.pth``), ``condition``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "latent.pth", "path": "path.pth", "condition": "txt_emb.pth"}
    default_files_map = _NEG

    def __init__(self, datatags: list[str] | None = None, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(datatags=datatags, batch_size=batch_size, **kwargs)
