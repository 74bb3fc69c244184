"""EDM-format datasets (zip or folder of PNGs or ``.npy`` latents): ``ImageFolderDataModule``."""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastgen_dm.datamodules.base import PlannedDataModule, TrainingTail, default_num_workers, validate_training_tail
from fastgen_dm.decode.zip_item import decode_item
from fastgen_dm.index import EDMIndex, scan_edm
from fastgen_dm.index.datatags import load_ignore_index
from fastgen_dm.plan import Cursor, SamplePlan
from fastgen_dm.read import EDMReader
from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES, check_max_member_bytes, exists, fetch_once, is_local, check_storage_options, resolve_fs, without_redacted
from fastgen_dm.streams import EDMStream
from fastgen_dm.streams.zip_cache import build_cache, cache_path

logger = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "FASTGEN_OUTPUT/DATA"


def data_root() -> str:
    """``$DATA_ROOT_DIR``, else ``FASTGEN_OUTPUT/DATA`` (FastGen's default), read when called."""
    return os.environ.get("DATA_ROOT_DIR", DEFAULT_DATA_ROOT)


class ImageFolderDataModule(PlannedDataModule):
    """Any EDM-format dataset: a zip (or folder) of PNG images or ``.npy`` latents with labels.

    Batches: ``real`` float32 [B, C, H, W] (pixels scaled to [-1, 1]; latents as stored),
    ``condition`` float32 one-hot [B, num_classes] (zeros [B, 0] without labels),
    ``neg_condition`` zeros like ``condition``, ``idx`` int64 [B] (the item's index in the zip).

    Every sample is delivered once per epoch across all ranks and workers; the position is kept
    in ``state_dict`` and a resumed run, on any number of GPUs, continues the same order.

    Args:
        dataset_path: Local path of the zip file or folder. Relative paths of the named families
            resolve against ``$DATA_ROOT_DIR`` (default ``FASTGEN_OUTPUT/DATA``).
        s3_path: Any fsspec URL (``s3://...``) copied once per node to ``dataset_path`` in
            ``prepare_data`` when that file is missing.
        batch_size: Samples per GPU per step.
        use_labels: Deliver one-hot class labels as ``condition``; False gives zeros [B, 0].
        cache: Decode every item once, in ``prepare_data`` and with every core, into one uint8
            (or float) memory-mapped ``.npy`` store next to the zip that all workers, ranks and later
            runs share; batches are then slices of it.
        shuffle: Shuffle each epoch by ``(seed, epoch)``.
        sampler_start_idx: Global sample count to start from when no checkpoint is restored
            (epoch ``idx // len``, position ``idx % len``), as FastGen's sampler defines it.
        xflip: Add a horizontally mirrored copy of every item (doubles the epoch, as EDM does).
        max_size: Use at most this many items: a seeded random subset, as EDM chooses it; None uses all.
        random_seed: EDM's (and FastGen's ``ImageLoader`` dataset kwarg) seed of the ``max_size``
            subset; None uses ``seed``.
        use_pyspng: EDM's choice of PNG decoder. Accepted for FastGen configs; the one image
            opener here gives the same pixels either way.
        resolution: Expected image side in pixels; a dataset of another size is an error. None
            accepts what the dataset holds.
        seed: Seed of the shuffle (and of the ``max_size`` subset unless ``random_seed`` is given);
            None: the seed given to ``seed_everything`` (``--seed_everything``), else 0.
        num_workers: DataLoader workers per GPU; None uses every core (up to 8). With ``cache``
            none, whatever is given: a batch is one slice of the store (0.3 ms for 128 32x32
            images), and a worker's hand-off of it cost 1-8 ms (``benchmarks/bench_zip.py``).
        pin_memory: Pin batches for the copy to the GPU.
        persistent_workers: Keep the workers from one epoch to the next; each iteration still
            starts exactly at the saved position.
        prefetch_factor: Batches each worker prepares ahead; None: the DataLoader's default (2).
        multiprocessing_context: How workers start ("fork", "spawn", "forkserver"); None: the
            platform's default.
        replicas: Consecutive GPUs that receive identical batches (a context- or
            sequence-parallel group); the epoch splits over the groups. None: the
            tensor-parallel size of a ``ModelParallelStrategy``, else 1.
        ledger_dir: Folder where each GPU logs the samples of every training step (``fastgen
            ledger STEP --dir DIR`` names them); None: no ledger.
        skip_steps: Steps of an earlier run, as its ledger numbers them, never trained again:
            on a resume their batches are dropped and every other batch stays where the plan
            had it. Needs ``ledger_dir`` and the ledger's world size and batch size.
        normalize_on_device: Deliver uint8 pixels and scale them on the GPU after the transfer.
        tail: The epoch's last step when it does not fill every GPU: "pad" repeats a few samples
            from the start of the epoch (fewer than the number of GPUs) so every GPU gets a
            smaller last batch; "drop" leaves that step out.
        max_skip_fraction: Share of undecodable items tolerated (skipped, counted and logged)
            before training stops with an error; 0 stops at the first. It holds over each GPU's
            whole run (every epoch, worker and resume), after a grace of 1000 samples.
        ignore_index_paths: JSON files ``{"<zip file name>": ["<member>", ...]}`` of items never to
            read, e.g. ``{"cifar10-32x32.zip": ["00000/img00000005.png"]}`` (several merge; what
            ``fastgen verify --out`` and ``skipped_index_dir`` write). Epochs count without them,
            and ``cache`` skips them.
        skipped_index_dir: Folder where each reader writes the items it skipped as bad, in the
            ``ignore_index_paths`` format.
        cache_dir: Folder for the ``cache`` store; None puts it next to ``dataset_path``.
        storage_options: fsspec options (endpoint, credentials) for ``s3_path`` and remote paths.
            Credentials are never written: checkpoints, ``hparams.yaml`` and ``config.yaml`` hold
            ``"<redacted>"`` instead, which a run started from them leaves out (credentials then
            come from the environment, or are passed again).
        max_member_bytes: Cap on one member's (decompressed) size, in bytes: a larger member is a
            bad item, refused before it is read (default 256 MiB). Folder datasets also refuse
            members that are not regular files or that resolve (through links) outside the folder.
        val_fraction: Share of the items (after ``max_size`` and ``ignore_index_paths``) held out
            of training for validation, in [0, 1): at least one item when > 0, chosen by
            ``random_seed`` (None: 0, so the split stays put when ``seed`` changes). 0 holds none.
        val_dataset_path: Another EDM zip or folder to validate on (same ``storage_options``;
            read as it is, without ``cache`` or ``ignore_index_paths``). None: no such set.

    Validation, test and predict read their set once, unshuffled, every item exactly once across
    GPUs (ranks may get different numbers of batches). The validation set is ``val_fraction`` or
    ``val_dataset_path``; without one, ``val_dataloader`` is empty (Lightning skips validation)
    and test and predict read the training items once, without ``xflip`` mirrors.
    """

    #: Where the named families' data lives under ``$DATA_ROOT_DIR``; None: ``dataset_path`` is required.
    default_dataset: str | None = None

    def __init__(
        self,
        dataset_path: str | None = None,
        s3_path: str | None = None,
        batch_size: int = 64,
        use_labels: bool = True,
        cache: bool = False,
        shuffle: bool = True,
        sampler_start_idx: int = 0,
        xflip: bool = False,
        max_size: int | None = None,
        resolution: int | None = None,
        random_seed: int | None = None,
        use_pyspng: bool = True,
        seed: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        multiprocessing_context: Literal["fork", "spawn", "forkserver"] | None = None,
        replicas: int | None = None,
        ledger_dir: str | None = None,
        skip_steps: list[int] | None = None,
        normalize_on_device: bool = False,
        tail: TrainingTail = "pad",
        max_skip_fraction: float = 0.01,
        ignore_index_paths: list[str] | None = None,
        skipped_index_dir: str | None = None,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
        val_fraction: float = 0.0,
        val_dataset_path: str | None = None,
    ) -> None:
        if cache and num_workers:
            logger.info(
                "cache=True: batches are slices of the shared store, assembled in the training process "
                "(num_workers=%d would only add a hand-off per batch, which costs more than the slice)", num_workers,
            )  # fmt: skip
        # the store is built once, decoding in parallel: the given workers, else every core
        build_workers = num_workers or default_num_workers()
        if cache:
            num_workers = 0
        super().__init__(
            batch_size, seed, shuffle, num_workers, pin_memory, normalize_on_device,
            persistent_workers=persistent_workers, prefetch_factor=prefetch_factor, multiprocessing_context=multiprocessing_context,
            replicas=replicas, ledger_dir=ledger_dir, skip_steps=skip_steps,
        )  # fmt: skip
        self.save_hyperparameters()
        self.cache_build_workers = build_workers
        self.dataset_path = self._resolve_dataset_path(dataset_path)
        self.s3_path = s3_path
        self.use_labels = use_labels
        self.cache = cache
        self.sampler_start_idx = sampler_start_idx
        self.xflip = xflip
        self.max_size = max_size
        self.random_seed, self.use_pyspng = random_seed, use_pyspng
        self.resolution = resolution
        self.tail = tail
        self.max_skip_fraction = max_skip_fraction
        self.ignore_index_paths = list(ignore_index_paths or [])
        self.skipped_index_dir = skipped_index_dir
        self.cache_dir = cache_dir
        self.storage_options = without_redacted(check_storage_options(storage_options))
        self.max_member_bytes = check_max_member_bytes(max_member_bytes)
        self.val_fraction = val_fraction
        self.val_dataset_path = val_dataset_path
        self._validate()
        self.stream: EDMStream | None = None
        self.val_stream: EDMStream | None = None  # None: no validation set
        self.pass_stream: EDMStream | None = None  # the training items, once, for test and predict without one

    def _resolve_dataset_path(self, dataset_path: str | None) -> str:
        if dataset_path is not None:
            return dataset_path
        if self.default_dataset is None:
            raise ValueError(f"{type(self).__name__} needs dataset_path: the EDM zip file or folder to read")
        return str(Path(data_root()) / self.default_dataset)

    def _validate(self) -> None:
        if self.sampler_start_idx < 0:
            raise ValueError(f"sampler_start_idx must be >= 0, got {self.sampler_start_idx}")
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"max_size must be >= 1 or None (all items), got {self.max_size}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be >= 1 or None, got {self.resolution}")
        validate_training_tail(self.tail)
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction > 0 and self.val_dataset_path is not None:
            raise ValueError(f"val_fraction={self.val_fraction} and val_dataset_path both give a validation set; give one of them")
        if self.cache and self.cache_dir is None and not is_local(self.dataset_path):
            raise ValueError(f"cache=True with the remote dataset_path {self.dataset_path!r} needs a local cache_dir")

    # -- Lightning hooks -------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Once per node: fetch ``s3_path`` when the file is missing, then build the cache if asked."""
        if not exists(self.dataset_path, self.storage_options):
            if self.s3_path is None:
                raise FileNotFoundError(self._missing_message())
            fetch_once(self.s3_path, self.dataset_path, self.storage_options)
        if self.cache:
            index, shape, dtype = self._scan()
            ignored = self._ignored(index)
            self._build_cache(self._cache_file(index, ignored), index, shape, dtype, ignored)

    def _build_cache(self, path: str, index: EDMIndex, shape: tuple[int, ...], dtype: np.dtype, ignored: np.ndarray) -> None:
        build_cache(
            path, index, shape, dtype, storage_options=self.storage_options, num_workers=self.cache_build_workers, skip=ignored,
            max_member_bytes=self.max_member_bytes,
        )  # fmt: skip

    def _missing_message(self) -> str:
        return f"dataset_path {self.dataset_path!r} does not exist; pass s3_path to fetch it, or create it with `fastgen prepare`"

    def setup(self, stage: str | None = None) -> None:
        if self.stream is not None:
            return
        if not exists(self.dataset_path, self.storage_options):
            raise FileNotFoundError(self._missing_message())
        index, shape, dtype = self._scan()
        ignored = self._ignored(index)
        raw_idx = self._subset(len(index))
        raw_idx = raw_idx[~np.isin(raw_idx, ignored)]
        if len(raw_idx) == 0:
            raise ValueError(f"{self.dataset_path}: every item is in ignore_index_paths {self.ignore_index_paths}")
        raw_idx, val_idx = self._hold_out(raw_idx)
        items = raw_idx
        flip = np.zeros(len(raw_idx), dtype=bool)
        if self.xflip:
            raw_idx, flip = np.tile(raw_idx, 2), np.concatenate([flip, ~flip])
        cache_file = None
        if self.cache:
            cache_file = self._cache_file(index, ignored)
            if not Path(cache_file).exists():
                if self.trainer is not None and self.trainer.world_size > 1:
                    raise RuntimeError(f"cache {cache_file} is missing: prepare_data() builds it; was it skipped?")
                self._build_cache(cache_file, index, shape, dtype, ignored)
        self.stream = EDMStream(
            index, item_shape=shape, item_dtype=dtype, raw_idx=raw_idx, flip=flip, use_labels=self.use_labels,
            batch_size=self.batch_size, seed=self.seed, shuffle=self.shuffle, tail=self.tail,
            scale_on_cpu=not self.normalize_on_device, cache_file=cache_file,
            max_skip_fraction=self.max_skip_fraction, storage_options=self.storage_options,
            skipped_index_dir=self.skipped_index_dir, max_member_bytes=self.max_member_bytes,
        )  # fmt: skip
        self.pass_stream = self._eval_stream(index, shape, dtype, items, cache_file)
        if len(val_idx):
            self.val_stream = self._eval_stream(index, shape, dtype, val_idx, cache_file)
        elif self.val_dataset_path is not None:
            if not exists(self.val_dataset_path, self.storage_options):
                raise FileNotFoundError(f"val_dataset_path {self.val_dataset_path!r} does not exist")
            val_index, val_shape, val_dtype = self._scan(self.val_dataset_path)
            self.val_stream = self._eval_stream(val_index, val_shape, val_dtype, np.arange(len(val_index), dtype=np.int64), None)
        if self.cursor is None:
            n = len(raw_idx)
            self.cursor = Cursor(self.sampler_start_idx // n, self.sampler_start_idx % n)
        self._check_fits_world()

    def _hold_out(self, raw_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(training items, validation items)``: ``val_fraction`` of ``raw_idx`` held out, both sorted.

        Example: 10 items and ``val_fraction=0.2`` give 8 training items and 2 validation items.
        """
        if self.val_fraction == 0:
            return raw_idx, raw_idx[:0]
        count = max(1, round(self.val_fraction * len(raw_idx)))
        if count >= len(raw_idx):
            raise ValueError(f"val_fraction={self.val_fraction} of {len(raw_idx)} items leaves none to train on")
        chosen = np.zeros(len(raw_idx), dtype=bool)
        chosen[np.random.default_rng(self.random_seed or 0).permutation(len(raw_idx))[:count]] = True
        return raw_idx[~chosen], raw_idx[chosen]

    def _eval_stream(self, index: EDMIndex, shape: tuple[int, ...], dtype: np.dtype, raw_idx: np.ndarray, cache_file: str | None) -> EDMStream:
        """One unshuffled pass over ``raw_idx`` of ``index``, every item once across GPUs, no mirrors."""
        return EDMStream(
            index, item_shape=shape, item_dtype=dtype, raw_idx=raw_idx, flip=np.zeros(len(raw_idx), dtype=bool),
            use_labels=self.use_labels, batch_size=self.batch_size, seed=self.seed, shuffle=False, tail="uneven", scale_on_cpu=not self.normalize_on_device, cache_file=cache_file,
            max_skip_fraction=self.max_skip_fraction, storage_options=self.storage_options, max_member_bytes=self.max_member_bytes,
        )  # fmt: skip

    def _check_fits_world(self) -> None:
        assert self.stream is not None
        rank, world = self.placement()
        plan = SamplePlan(self.stream.num_samples, self.batch_size, world, tail=self.tail)
        if plan.num_steps == 0:
            raise ValueError(
                f"{self.dataset_path} has {self.stream.num_samples} samples, fewer than one step of "
                f"batch_size={self.batch_size} x {world} GPUs with tail='drop'; use tail='pad' or a smaller batch_size"
            )

    def _scan(self, path: str | None = None) -> tuple[EDMIndex, tuple[int, ...], np.dtype]:
        """The index, item shape and item dtype of ``path`` (None: ``dataset_path``)."""
        path = path or self.dataset_path
        index = scan_edm(path, self.storage_options, max_member_bytes=self.max_member_bytes)
        reader = EDMReader(index.source, index.is_zip, self.storage_options, max_member_bytes=self.max_member_bytes)
        first = decode_item(index.members[0], reader.read(index.members[0]), index.source)
        if self.resolution is not None and first.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"{path} holds {first.shape[-1]}x{first.shape[-2]} items but resolution={self.resolution}; "
                "pass the dataset's resolution or resolution=None"
            )
        return index, first.shape, first.dtype

    def _subset(self, n: int) -> np.ndarray:
        raw_idx = np.arange(n, dtype=np.int64)
        if self.max_size is not None and n > self.max_size:
            # EDM's choice of subset: shuffle with RandomState(seed), keep the first max_size, sorted.
            subset_seed = self.seed if self.random_seed is None else self.random_seed
            np.random.RandomState(subset_seed % (1 << 31)).shuffle(raw_idx)
            raw_idx = np.sort(raw_idx[: self.max_size])
        return raw_idx

    def _ignored(self, index: EDMIndex) -> np.ndarray:
        """Sorted item numbers that ``ignore_index_paths`` lists for this dataset (by file name or URL)."""
        if not self.ignore_index_paths:
            return np.zeros(0, dtype=np.int64)
        table = load_ignore_index(self.ignore_index_paths, self.storage_options)
        names = {self.dataset_path, index.source, posixpath.basename(self.dataset_path.rstrip("/"))}
        listed = frozenset().union(*(table.get(name, frozenset()) for name in names))
        position = {member: i for i, member in enumerate(index.members)}
        unknown = sorted(listed - position.keys())
        if unknown:
            logger.warning("ignore_index_paths name %d members that %s does not hold, e.g. %s", len(unknown), self.dataset_path, unknown[0])
        return np.array(sorted(position[m] for m in listed if m in position), dtype=np.int64)

    def _cache_file(self, index: EDMIndex, ignored: np.ndarray) -> str:
        # the ignored items' slots stay empty: a store built without them must not serve a run that reads them
        folder = self.cache_dir or str(Path(self.dataset_path).parent)
        fingerprint = index.fingerprint if len(ignored) == 0 else f"{index.fingerprint} ignoring {ignored.tolist()}"
        return cache_path(folder, Path(self.dataset_path).name, fingerprint)

    def _training_stream(self) -> EDMStream | None:
        return self.stream

    # -- inspection ------------------------------------------------------------------------
    def data_files(self) -> list[tuple[str, int]]:
        """The zip, or every file of the folder, with its size."""
        fs, fs_path = resolve_fs(self.dataset_path, self.storage_options)
        if fs.isdir(fs_path):
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            prefix = "" if protocol in ("file", "local") else f"{protocol}://"
            return [(prefix + p, int(info["size"])) for p, info in sorted(fs.find(fs_path, detail=True).items())]
        return [(str(self.dataset_path), int(fs.size(fs_path)))]

    def samples_per_epoch(self) -> int | None:
        return None if self.stream is None else self.stream.num_samples
