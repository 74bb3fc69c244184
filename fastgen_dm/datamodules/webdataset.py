"""WebDataset shards: the generic ``WDSDataModule`` behind every shard-based family."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
from pathlib import Path
from typing import Any, Collection, Literal, Mapping, Sequence

import numpy as np
import torch

from fastgen_dm.batch import collate_column, drop_rows, load_constants
from fastgen_dm.batch.assemble import SampleTransform
from fastgen_dm.datamodules.base import PlannedDataModule, TrainingTail, validate_training_tail
from fastgen_dm.decode.sample import SampleSpec
from fastgen_dm.index.datatags import (
    copy_remote_indexes,
    Shard,
    local_index_path,
    local_datatags_without_index,
    resolve_datatags,
)
from fastgen_dm.index.bucket_store import load_assignment, save_assignment
from fastgen_dm.index.build import index_shards
from fastgen_dm.index.shard_index import ShardIndex
from fastgen_dm.index.store import save_index
from fastgen_dm.plan import Cursor, TailPolicy
from fastgen_dm.read import BadDataPolicy, StandIn, skipped_name
from fastgen_dm.read.shard_reader import ShardReader
from fastgen_dm.storage import is_local, list_shards, parse_datatag, check_storage_options, without_redacted
from fastgen_dm.streams import PlannedStream, ResampledWDSStream, SampleSource, WDSStream
from fastgen_dm.streams.shard_bucketed import BucketedWDSStream
from fastgen_dm.streams.shard_mixed import MixedWDSStream
from fastgen_dm.streams.shard_resampled import NO_END
from fastgen_dm.plan.buckets import BucketIndex, BucketState, BucketTail, assign_buckets
from fastgen_dm.plan.mixing import MixState

logger = logging.getLogger(__name__)

DEFAULT_INDEX_DIR = "FASTGEN_OUTPUT/index"
DEFAULT_INTERLEAVE = 64
FASTGEN_SHUFFLE_SIZE = 1000  # WDSLoader's default buffer, in samples: the mixing blocks must match
DEFAULT_SHUFFLE_BUFFER_BYTES = 256 << 20


class WDSDataModule(PlannedDataModule):
    """WebDataset shards of precomputed tensors (latents, embeddings, pairs, paths) or any members.

    Batches (FastGen's layout): ``fname`` (sample keys), ``shard`` (shard URLs), one entry per
    ``key_map`` output (tensors stacked to [B, ...]), and the ``files_map`` / ``presets_map``
    constants.

    Epoch mode (default): every sample once per epoch across all GPUs and workers, each sample's
    bytes read by exactly one worker, the same number of batches on every GPU, and a global
    position in ``state_dict`` that resumes exactly on any number of GPUs. It needs per-shard
    sample counts: an index (``prepare_data`` builds one for local data; ``fastgen index``
    writes one for any location) or a ``shard_count_file``.

    Every argument of FastGen's ``WDSLoader``/``BaseWDSLoader`` is accepted with its meaning
    (README, "Coming from FastGen"). A sample lacking a ``key_map`` member is filtered out, as
    FastGen's pipeline drops it (counted apart from bad data, logged with the count, outside
    ``max_skip_fraction``); when the key also has a ``files_map``/``presets_map`` constant, the
    constant stands in for the missing member, as in FastGen's ``_preprocess``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``; a location is a folder of ``.tar`` shards
            (local, ``file://``, ``s3://``, ``gs://``, ``http(s)://``). Several datatags are one dataset.
        batch_size: Samples per GPU per step.
        key_map: Output key -> member suffix; only these members are decoded.
            Example: ``{"real": "latent.pth", "condition": "txt_emb.pth"}``.
        files_map: Output key -> file loaded once and repeated in every batch (relative paths
            resolve against the first datatag's folder). Example: ``{"neg_condition": "neg_condition.pth"}``.
            A key that is also in ``key_map`` is the default of samples lacking that member.
        optional_files: ``files_map`` keys whose file may be missing (then the key is left out).
        presets_map: Output key -> preset string name (``neg_prompt_wan``, ``neg_prompt_cosmos``, ``empty_string``);
            like ``files_map``, a default for a ``key_map`` key of the same name.
        presets_filter: Sample filters, e.g. ``{"score": {"threshold": 5.5, "score_key": "aesthetic_score"}}``
            or ``{"empty_keys": ["condition"]}``. Filtered samples leave their batch smaller.
        txt_extensions: Suffixes decoded as UTF-8 text.
        allow_pickle: Suffixes whose pickle payloads may be loaded (e.g. ``["pkl"]``); trusted data only.
        shard_start: First shard of each datatag (position in its sorted shard list).
        shard_end: Last shard of each datatag, inclusive; None for the last.
        num_shards: Truncate the shard list to this many, or repeat it cyclically up to it; None keeps all.
        shards_per_worker: FastGen's: truncate or repeat the shard list to this many shards per
            DataLoader worker, i.e. ``num_shards = shards_per_worker x GPUs x max(1, num_workers)``,
            fixed at ``setup`` when the number of GPUs is known. None (default) keeps all.
        shard_count_file: JSON ``{"<shard file name>": samples}`` (relative to each datatag's folder,
            or an absolute path/URL); used where no index exists.
        ignore_index_paths: JSON files ``{"<shard file name>": ["<key>", ...]}`` of samples never
            to yield (several merge); counts account for them.
        deterministic: FastGen's fixed, unshuffled order, resumable with ``sampler_start_idx``.
        train: False gives FastGen's single unshuffled pass for the training loader. True
            (default) trains in epoch mode; add ``resampled=True`` for FastGen's endless stream.
        cache_path: FastGen's local folder for copies of remote shards. Readers here fetch only
            the byte ranges they need, so there is nothing to cache: accepted (and unused) with
            local datatags, an error with remote ones.
        resampled: Endless stream drawing shards with replacement (FastGen's training
            behaviour); no epochs, no exact resume, no counts needed.
        epoch_samples: Samples of all GPUs together that make an epoch: in ``resampled`` mode
            (rounded down to whole steps), so the loader has a length for schedulers,
            ``val_check_interval`` and epoch-based callbacks (None: endless; stop with
            ``max_steps``); with ``streams`` and ``epoch_end="total"``, the mix's epoch.
        streams: Datasets to mix, instead of ``datatags``: ``[{"datatags": [...], "weight": 3},
            {"datatags": [...], "weight": 1}]``, or ``"proportion"`` (shares summing to 1) or
            ``"repeat"`` (passes of that stream per epoch), one kind for every stream. Each stream
            is read exactly once per pass in its own shuffled order (a stream that runs out starts
            its next pass); every global step holds each stream's share within 1/2 sample for two
            streams (``(K - 1) / 2`` at most for K). A stream may set its own ``key_map`` (the
            same outputs, from its own member suffixes) and ``presets_filter``; every other
            option is shared.
            A checkpoint resumes every stream exactly on any number of GPUs; resumed with other
            weights, every stream keeps its position and the new weights apply from there.
        epoch_end: How a mix's epoch ends: ``"first_exhausted"`` (the first stream to finish its
            pass ends it) or ``"total"`` (after ``epoch_samples`` samples). ``repeat`` declares
            the epoch itself.
        shuffle: Shuffle shards and samples each epoch by ``(seed, epoch)``.
        read_block_bytes: Bytes of consecutive samples of one shard read with one request (a
            *block*): at least one sample, and at most half a batch, so a batch always mixes
            several shards. Larger blocks mean fewer, larger requests (what object stores want);
            smaller ones more shards per batch. See docs/performance.md.
        interleave: Shards whose blocks alternate in the epoch's order, so consecutive batches of
            a GPU come from many shards; it costs no request. None: 64.
        prefetch_batches: Batches each reader keeps in flight ahead of the one it decodes.
        shuffle_buffer_bytes: Shuffle buffer of ``resampled`` mode, in bytes. None: 256 MiB, or from ``shuffle_size``.
        shuffle_size: FastGen's shuffle buffer, in samples. Epoch mode has no buffer: blocks are
            made small enough that a batch mixes at least as many shards as a buffer of this size
            would (0: blocks as large as ``read_block_bytes`` and half a batch allow). Resampled
            mode: ``shuffle_buffer_bytes = shuffle_size x`` the mean sample size. None: 1000 for
            the blocks, ``shuffle_buffer_bytes`` for resampled mode.
        sampler_start_idx: Global sample count to start at when no checkpoint is restored.
        seed: Seed of every shuffle; None: the seed given to ``seed_everything``
            (``--seed_everything``), else 0.
        tail: Last step when it does not fill every GPU: "pad" or "drop" (see ``ImageFolderDataModule``).
            None: from ``partial``, else "pad".
        partial: FastGen's name for ``tail``: False drops the incomplete last step
            (``tail="drop"``), True delivers it smaller (``tail="pad"``: every GPU gets a smaller
            last batch). None (default): ``tail`` decides.
        empty_check: FastGen's (webdataset's) check that no worker is left without shards. Here
            the plan splits samples, not shards, so no worker is ever left without work; both
            values behave the same, and a dataset with no samples is an error at ``setup``.
        val_datatags: Datatags of a validation set (same options): every sample once across
            GPUs, unshuffled, nothing dropped. Test and predict read it too; without it,
            validation is skipped and test and predict read ``datatags`` once in the same way.
        max_skip_fraction: Share of bad samples (truncated, undecodable) tolerated, skipped and
            counted, before an error stops training. It holds over each GPU's whole run (every
            epoch, worker and resume), after a grace of 1000 samples. Filtered samples do not count.
        check_finite: Count samples whose tensors hold NaN or Inf as bad data (one pass over
            each tensor; off by default).
        skipped_index_dir: Folder where each reader writes the keys it skipped, in the
            ignore-index format that ``ignore_index_paths`` accepts.
        index_dir: Where ``prepare_data`` stores indexes of local datatags.
        num_workers: DataLoader workers per GPU; None uses every core (up to 8).
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
        normalize_on_device: Deliver uint8 pixels and scale them on the GPU (media families).
        storage_options: fsspec options (endpoint, credentials) for remote locations. Credentials
            are never written: checkpoints and configs hold ``"<redacted>"``, which a run started
            from them leaves out (credentials then come from the environment, or are passed again).
    """

    default_key_map: dict[str, str] = {"real": "latent.pth", "condition": "txt_emb.pth"}
    default_files_map: dict[str, str] = {}
    default_presets_map: dict[str, str] = {}
    #: ``key_map`` outputs a family decodes itself in :meth:`sample_transform` (given as bytes).
    raw_keys: tuple[str, ...] = ()
    #: A family with buckets sets these: the (height, width) targets, the tail policy, and the
    #: member suffix whose image sizes the index records (``fastgen index --sizes``).
    bucket_targets: np.ndarray | None = None
    bucket_tail: BucketTail = "drop"
    bucket_sizes_of: str | None = None

    def sample_transform(self) -> SampleTransform | None:
        """A picklable per-sample step after decoding (media families decode and crop here)."""
        return None

    def decode_rows(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, list[Any]], dict[int, BaseException]]:
        """A family's decoding after the transfer (nvJPEG, NVDEC): the keys it produces, one value per
        row, and the rows that failed with their errors (their values are ignored)."""
        return {}, {}

    def __init__(
        self,
        datatags: list[str] | None = None,
        batch_size: int = 32,
        key_map: dict[str, str] | None = None,
        files_map: dict[str, str] | None = None,
        optional_files: list[str] | None = None,
        presets_map: dict[str, str] | None = None,
        presets_filter: dict[str, Any] | None = None,
        txt_extensions: list[str] | None = None,
        allow_pickle: list[str] | None = None,
        shard_start: int = 0,
        shard_end: int | None = None,
        num_shards: int | None = None,
        shards_per_worker: int | None = None,
        shard_count_file: str | None = None,
        ignore_index_paths: list[str] | None = None,
        deterministic: bool = False,
        train: bool = True,
        cache_path: str | None = None,
        resampled: bool = False,
        epoch_samples: int | None = None,
        streams: list[dict[str, Any]] | None = None,
        epoch_end: Literal["first_exhausted", "total"] = "first_exhausted",
        shuffle: bool = True,
        read_block_bytes: int = 2 << 20,
        interleave: int | None = None,
        prefetch_batches: int = 2,
        shuffle_buffer_bytes: int | None = None,
        shuffle_size: int | None = None,
        sampler_start_idx: int = 0,
        seed: int | None = None,
        tail: TrainingTail | None = None,
        partial: bool | None = None,
        empty_check: bool = True,
        val_datatags: list[str] | None = None,
        max_skip_fraction: float = 0.01,
        check_finite: bool = False,
        skipped_index_dir: str | None = None,
        index_dir: str | None = None,
        num_workers: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        multiprocessing_context: Literal["fork", "spawn", "forkserver"] | None = None,
        replicas: int | None = None,
        ledger_dir: str | None = None,
        skip_steps: list[int] | None = None,
        normalize_on_device: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        shuffle = shuffle and train and not deterministic
        super().__init__(
            batch_size, seed, shuffle, num_workers, pin_memory, normalize_on_device,
            persistent_workers=persistent_workers, prefetch_factor=prefetch_factor, multiprocessing_context=multiprocessing_context,
            replicas=replicas, ledger_dir=ledger_dir, skip_steps=skip_steps,
        )  # fmt: skip
        self.save_hyperparameters()
        if streams and datatags:
            raise ValueError("give datatags or streams, not both: each stream names its own datatags")
        self.streams = [_check_stream(k, stream) for k, stream in enumerate(streams or [])]
        self.epoch_end = epoch_end
        self.datatags = [tag for stream in self.streams for tag in stream["datatags"]] if self.streams else list(datatags or [])
        self._restored_mix: dict[str, Any] | None = None
        self._restored_buckets: dict[str, Any] | None = None
        self.val_datatags = list(val_datatags or [])
        self.spec = SampleSpec(
            dict(self.default_key_map if key_map is None else key_map),
            presets_filter,
            tuple(txt_extensions or ("txt", "caption", "text")),
            tuple(allow_pickle or ()),
            tuple(k for k in self.raw_keys if k in (self.default_key_map if key_map is None else key_map)),
        )
        self._stream_specs = [self._own_spec(k, stream) for k, stream in enumerate(self.streams)]
        self.files_map = dict(self.default_files_map if files_map is None else files_map)
        # a family's default constant files may be absent (the key is then left out); a user's may not
        self.optional_files = list(optional_files or (self.default_files_map if files_map is None else []))
        self.presets_map = dict(self.default_presets_map if presets_map is None else presets_map)
        self.shard_start, self.shard_end, self.num_shards = shard_start, shard_end, num_shards
        self.shards_per_worker, self.cache_path, self.empty_check = shards_per_worker, cache_path, empty_check
        self.shard_count_file = shard_count_file
        self.ignore_index_paths = list(ignore_index_paths or [])
        self.resampled = resampled
        self.epoch_samples = epoch_samples
        self.read_block_bytes, self.interleave, self.prefetch_batches = read_block_bytes, interleave, prefetch_batches
        self.shuffle_buffer_bytes, self.shuffle_size = shuffle_buffer_bytes, shuffle_size
        self.sampler_start_idx = sampler_start_idx
        self.tail: TailPolicy = _tail_from(tail, partial)
        self.max_skip_fraction = max_skip_fraction
        self.skipped_index_dir = skipped_index_dir
        self.check_finite = check_finite
        self.index_dir = index_dir or DEFAULT_INDEX_DIR
        self.storage_options = without_redacted(check_storage_options(storage_options))
        self._validate(train)
        self.train_stream: PlannedStream | None = None
        self.val_stream: WDSStream | None = None
        self.pass_stream: WDSStream | None = None  # the training samples, once, for test and predict without val_datatags
        # samples that fail to decode on the device are bad data of the main process
        self.device_bad_data = BadDataPolicy(max_skip_fraction)
        self._device_stand_in: StandIn[dict[str, Any]] = StandIn("the main process")

    def _validate(self, train: bool) -> None:
        for tag in [*self.datatags, *self.val_datatags]:
            parse_datatag(tag)
        if not self.datatags:
            raise ValueError("datatags is empty; give at least one 'WDS:<location>' (or streams to mix)")
        if self.streams and self.resampled:
            raise ValueError("streams mixes epoch-mode datasets exactly; resampled=True draws shards at random: use one or the other")
        if self.streams and self.epoch_end == "total" and self.epoch_samples is None and "repeat" not in self.streams[0]:
            raise ValueError("epoch_end='total' needs epoch_samples, the samples of a mixed epoch; or use epoch_end='first_exhausted'")
        if self.epoch_samples is not None and not self.resampled and not self.streams:
            raise ValueError(f"epoch_samples={self.epoch_samples} declares an epoch of resampled mode or of a mix; epoch mode's epoch is the dataset: add resampled=True or drop it")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ValueError(f"epoch_samples must be at least 1 or None (endless), got {self.epoch_samples}")
        if self.resampled and not train:
            raise ValueError("resampled=True streams endlessly and cannot make the single pass of train=False")
        for name in ("read_block_bytes", "interleave", "shuffle_buffer_bytes", "shards_per_worker"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.shuffle_size is not None:
            if self.shuffle_size < 0:
                raise ValueError(f"shuffle_size must be >= 0 samples (0: no sample shuffle), got {self.shuffle_size}")
            if self.shuffle_buffer_bytes is not None:
                raise ValueError(
                    f"shuffle_size={self.shuffle_size} sets shuffle_buffer_bytes; give one of shuffle_size and shuffle_buffer_bytes, not both"
                )
        if self.shards_per_worker is not None and self.num_shards is not None:
            raise ValueError(
                f"shards_per_worker={self.shards_per_worker} sets num_shards; give one of shards_per_worker and num_shards={self.num_shards}, not both"
            )
        remote = [tag for tag in [*self.datatags, *self.val_datatags] if not is_local(parse_datatag(tag))]
        if self.cache_path is not None and remote:
            raise ValueError(
                f"cache_path={self.cache_path!r}: shards are read by byte range, never copied whole, so there is "
                f"nothing to cache for {remote[0]!r}; leave cache_path None"
            )
        if self.prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")
        self._validate_buckets()
        if self.sampler_start_idx < 0:
            raise ValueError(f"sampler_start_idx must be >= 0, got {self.sampler_start_idx}")
        validate_training_tail(self.tail)

    def _validate_buckets(self) -> None:
        """Buckets and the options they exclude (families that set buckets after ``__init__`` call it again)."""
        if self.bucketed and (self.streams or self.resampled or self.sampler_start_idx):
            raise ValueError("buckets plan an exact epoch of one dataset: leave streams, resampled and sampler_start_idx unset with buckets")

    # -- Lightning hooks -------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Once per node: index local datatags that have no index yet (counts and byte offsets),
        and copy the indexes of remote ones into ``index_dir``, so every process of the node maps
        one local file.

        With a ``shard_count_file`` nothing is indexed here: readers find the offsets of the
        shards they read, once per node (``index_dir/offsets``).
        """
        if self.resampled or self.shard_count_file is not None:
            return
        copy_remote_indexes([*self.datatags, *self.val_datatags], self.index_dir, self.storage_options)
        for tag in local_datatags_without_index([*self.datatags, *self.val_datatags], self.index_dir, self.storage_options):
            location = parse_datatag(tag)
            urls = [f.url for f in list_shards(location, self.storage_options, tag)]
            logger.info("indexing %d shards of %s", len(urls), location)
            shards = index_shards(urls, self.storage_options, partial_ok=True, sizes_of=self.bucket_sizes_of if self.bucketed else None)
            for shard in shards:
                if shard.truncated_at is not None:
                    logger.warning("%s is damaged at byte %d: only its %d samples before that are used", shard.url, shard.truncated_at, shard.count)
            save_index(local_index_path(self.index_dir, location), shards, self.storage_options)
        if self.bucketed:
            planned = self._resolve(self.datatags, need_counts=True, num_shards=self._num_shards())
            self.resolve_bucket_targets(planned)
            self.bucket_index(planned)

    def _own_spec(self, k: int, stream: Mapping[str, Any]) -> SampleSpec | None:
        """Stream ``k``'s own sample spec when it sets ``key_map`` or ``presets_filter``; the same outputs as the DataModule's."""
        if not any(key in stream for key in STREAM_OWN_OPTIONS):
            return None
        key_map = stream.get("key_map", self.spec.key_map)
        if not isinstance(key_map, Mapping) or set(key_map) != set(self.spec.key_map):
            raise ValueError(
                f"streams[{k}].key_map {key_map!r} must map the same outputs as key_map ({sorted(self.spec.key_map)}), "
                "each to this stream's member suffix, so that every batch has one set of keys"
            )
        return dataclasses.replace(self.spec, key_map=dict(key_map), presets_filter=stream.get("presets_filter", self.spec.presets_filter))

    def _num_shards(self) -> int | None:
        """``num_shards``, or ``shards_per_worker`` times every worker of every GPU."""
        if self.shards_per_worker is None:
            return self.num_shards
        return self.shards_per_worker * self.placement()[1] * max(1, self.num_workers)

    def _resolve(self, datatags: Sequence[str], need_counts: bool, num_shards: int | None = None) -> list[Shard]:
        return resolve_datatags(
            datatags, shard_start=self.shard_start, shard_end=self.shard_end, num_shards=num_shards,
            shard_count_file=self.shard_count_file, ignore_index_paths=self.ignore_index_paths,
            index_dir=self.index_dir, storage_options=self.storage_options, need_counts=need_counts,
        )  # fmt: skip

    def _constants(self) -> dict[str, Any]:
        base = parse_datatag(self.datatags[0])
        return load_constants(
            self.files_map, self.presets_map, base, storage_options=self.storage_options, optional_files=self.optional_files,
            txt_extensions=self.spec.txt_extensions, allow_pickle=self.spec.allow_pickle,
        )  # fmt: skip

    def _source(self, shards: Sequence[Shard], constants: Mapping[str, Any], per_stream: Sequence[Sequence[Shard]] = ()) -> SampleSource:
        """What the streams read; ``per_stream``: the mixed streams' shards, for the streams' own specs."""
        # a constant named like a key_map output is the default of samples lacking that member
        defaults = {key: value for key, value in constants.items() if key in self.spec.key_map}
        spec = dataclasses.replace(self.spec, defaults=defaults)
        specs_by_url = {
            shard.url: dataclasses.replace(own, defaults=defaults)
            for own, stream_shards in zip(self._stream_specs, per_stream) if own is not None
            for shard in stream_shards
        }  # fmt: skip
        constants = {key: value for key, value in constants.items() if key not in defaults}
        return SampleSource(
            tuple(shards), spec=spec, constants=constants, batch_size=self.batch_size, seed=self.seed,
            max_skip_fraction=self.max_skip_fraction, storage_options=self.storage_options,
            transform=self.sample_transform(), offsets_dir=self.offsets_dir, check_finite=self.check_finite,
            specs_by_url=specs_by_url or None,
        )  # fmt: skip

    @property
    def offsets_dir(self) -> str:
        """Node-local folder of the offsets that readers find by walking unindexed shards."""
        return str(Path(self.index_dir) / "offsets")

    def _shuffle_buffer_bytes(self, shards: Sequence[Shard], probed_sizes: Sequence[int]) -> int:
        """``shuffle_buffer_bytes``; from ``shuffle_size``, that many samples of the mean size of the
        samples :meth:`_check_keys` read (their members' bytes, what the buffer counts), else of
        the shards' bytes per sample."""
        if self.shuffle_size is None:
            return DEFAULT_SHUFFLE_BUFFER_BYTES if self.shuffle_buffer_bytes is None else self.shuffle_buffer_bytes
        if probed_sizes:
            mean_bytes = sum(probed_sizes) / len(probed_sizes)
        else:
            mean_bytes = sum(s.size for s in shards) / max(1, sum(s.count for s in shards))
        return max(1, int(self.shuffle_size * mean_bytes))

    def _block(self, shards: Sequence[Shard]) -> int:
        """Samples per block: ``read_block_bytes`` of average samples, so few enough that a batch
        mixes at least as many shards as a ``shuffle_size`` buffer would (and at least two)."""
        samples = sum(s.count for s in shards)
        mean_bytes = max(1, sum(s.size for s in shards) // max(samples, 1))
        per_shard = samples / max(len(shards), 1)
        # A buffer of n samples holds samples from about the last 2n of its stream, so a batch drawn
        # from it spans about 1 + 2n / per_shard shards.
        buffer = FASTGEN_SHUFFLE_SIZE if self.shuffle_size is None else self.shuffle_size
        like_buffer = int(self.batch_size * per_shard / (per_shard + 2 * buffer))
        return max(1, min(self.read_block_bytes // mean_bytes, self.batch_size // 2, like_buffer))

    def _check_keys(self, shards: Sequence[Shard], defaulted: Collection[str], probes: int = 3, spec: SampleSpec | None = None) -> list[int]:
        """Fail early when a ``key_map`` suffix (of a key without a default) is in none of the
        first samples of a few shards; return those samples' sizes in bytes."""
        reader = ShardReader(self.storage_options, offsets_dir=self.offsets_dir)
        seen: set[str] = set()
        sizes: list[int] = []
        checked = [s for s in shards if s.count or s.index is None][:probes]
        for shard in checked:
            _, members = reader.read(shard, [0])[0]
            if isinstance(members, dict):
                seen |= set(members)
                sizes.append(sum(map(len, members.values())))
        reader.close()
        key_map = (spec or self.spec).key_map
        missing = [suffix for key, suffix in key_map.items() if suffix not in seen and key not in defaulted]
        if seen and missing:
            raise ValueError(
                f"key_map: no sample of the {len(checked)} shards checked has {missing}; their members are "
                f"{sorted(seen)}. Fix key_map (output key -> member suffix)"
            )
        return sizes

    def setup(self, stage: str | None = None) -> None:
        if self.train_stream is not None:
            return
        constants = self._constants()
        if self.streams:
            per_stream = [self._resolve(stream["datatags"], need_counts=True, num_shards=self._num_shards()) for stream in self.streams]
            shards = [shard for stream_shards in per_stream for shard in stream_shards]
            for own, stream_shards in zip(self._stream_specs, per_stream):
                self._check_keys(stream_shards, defaulted=constants.keys(), spec=own)
            probed_sizes: list[int] = []
        else:
            per_stream = []
            shards = self._resolve(self.datatags, need_counts=not self.resampled, num_shards=self._num_shards())
            probed_sizes = self._check_keys(shards, defaulted=constants.keys())
        if self.bucketed:
            self.resolve_bucket_targets(shards)  # before the source: its transform cuts to the targets
        source = self._source(shards, constants, per_stream)
        if self.resampled:
            self.train_stream = ResampledWDSStream(source, self._shuffle_buffer_bytes(shards, probed_sizes), self.epoch_samples)
        elif self.streams:
            self.train_stream = self._mixed_stream(source, [len(stream_shards) for stream_shards in per_stream])
            if self.cursor is None:
                self.cursor = Cursor(0, self.sampler_start_idx)
        elif self.bucketed:
            self.train_stream = self._bucketed_stream(source)
            if self.cursor is None:
                self.cursor = Cursor(0, 0)
        else:
            block = self._block(shards)
            stream = WDSStream(
                source, shuffle=self.shuffle, tail=self.tail, block=block, interleave=DEFAULT_INTERLEAVE if self.interleave is None else self.interleave,
                prefetch_batches=self.prefetch_batches, skipped_index_dir=self.skipped_index_dir,
            )  # fmt: skip
            if stream.num_samples == 0:
                raise ValueError(f"datatags {self.datatags} hold no samples (after ignore_index_paths)")
            if self.cursor is None:
                n = stream.num_samples
                self.cursor = Cursor(self.sampler_start_idx // n, self.sampler_start_idx % n)
            self.train_stream = stream
        if self.resampled and self.cursor is None:  # a position: how far the stream was drawn
            per_epoch = self.epoch_samples or NO_END
            self.cursor = Cursor(self.sampler_start_idx // per_epoch, self.sampler_start_idx % per_epoch)
        if self.val_datatags:
            val_source = self._source(self._resolve(self.val_datatags, need_counts=True, num_shards=self._num_shards()), constants)
            self.val_stream = WDSStream(val_source, shuffle=False, tail="uneven", prefetch_batches=self.prefetch_batches)
        elif not self.resampled:
            self.pass_stream = WDSStream(source, shuffle=False, tail="uneven", prefetch_batches=self.prefetch_batches)
        elif stage in ("test", "predict"):  # resampled shards carry no counts, and one pass needs them
            counted = self._source(self._resolve(self.datatags, need_counts=True, num_shards=self._num_shards()), constants)
            self.pass_stream = WDSStream(counted, shuffle=False, tail="uneven", prefetch_batches=self.prefetch_batches)

    def _mixed_stream(self, source: SampleSource, shards_per_stream: list[int]) -> MixedWDSStream:
        kind = next(k for k in ("weight", "proportion", "repeat") if k in self.streams[0])
        declared = [float(stream[kind]) for stream in self.streams]
        shards = source.shards
        stream = MixedWDSStream(
            source, shards_per_stream=shards_per_stream,
            weights=declared if kind == "weight" else None, proportions=declared if kind == "proportion" else None,
            repeat=declared if kind == "repeat" else None,
            epoch_end="total" if kind == "repeat" else self.epoch_end,
            total_samples=self.epoch_samples if self.epoch_end == "total" and kind != "repeat" else None,
            shuffle=self.shuffle, tail=self.tail, block=self._block(shards),
            interleave=DEFAULT_INTERLEAVE if self.interleave is None else self.interleave,
            prefetch_batches=self.prefetch_batches, skipped_index_dir=self.skipped_index_dir,
        )  # fmt: skip
        self._resume_mix(stream)
        return stream

    def _resume_mix(self, stream: MixedWDSStream) -> None:
        if self._restored_mix is not None:
            stream.restore(MixState.from_state_dict(self._restored_mix))

    def _bucketed_stream(self, source: SampleSource) -> BucketedWDSStream:
        """The stream over each bucket's samples (:meth:`bucket_index`)."""
        buckets = self.bucket_index(source.shards)
        stream = BucketedWDSStream(
            source, buckets=buckets, tail=self.bucket_tail, shuffle=self.shuffle, block=self._block(source.shards),
            interleave=DEFAULT_INTERLEAVE if self.interleave is None else self.interleave,
            prefetch_batches=self.prefetch_batches, skipped_index_dir=self.skipped_index_dir,
        )  # fmt: skip
        if stream.num_samples == 0:
            raise ValueError(f"datatags {self.datatags} hold no samples (after ignore_index_paths)")
        if self._restored_buckets is not None and self.cursor is not None:
            stream.restore(self.cursor.position, BucketState.from_state_dict(self._restored_buckets))
        return stream

    def bucket_index(self, shards: Sequence[Shard]) -> BucketIndex:
        """Each sample's bucket: the node's copy in ``index_dir`` (memory-mapped), else assigned now and kept there.

        Built once per node, by ``prepare_data``, from the index's sizes (:meth:`bucket_dims`),
        one shard at a time: about 1 byte a sample on disk and O(buckets x shards) in each process.
        The folder's name is a digest of the targets, of what :meth:`bucket_dims` depends on and
        of every shard's URL, size, count, ignored keys and sized member, so another dataset or scheme never
        takes it for its own.
        """
        assert self.bucket_targets is not None
        digest = self.shards_digest(shards, np.ascontiguousarray(self.bucket_targets, dtype="<i8").tobytes())
        folder = Path(self.index_dir) / f"buckets-{digest}"
        counts = [shard.count for shard in shards]
        num_buckets = len(self.bucket_targets)
        try:
            assignment, bucket_counts = load_assignment(folder, num_buckets=num_buckets, shard_counts=counts)
        except FileNotFoundError:
            self._assign_buckets(shards, folder)
            assignment, bucket_counts = load_assignment(folder, num_buckets=num_buckets, shard_counts=counts)
        return BucketIndex(assignment, num_buckets=num_buckets, shard_counts=counts, counts=bucket_counts)

    def _assign_buckets(self, shards: Sequence[Shard], folder: Path) -> None:
        """Each sample's bucket from the index's sizes, shard by shard, into the node's ``folder``."""
        assert self.bucket_targets is not None
        unsized = [s.url for s in shards if s.index is None or s.index.sizes is None]
        if unsized:
            raise ValueError(
                f"buckets need each sample's size, and the index of {unsized[0]} has none; "
                f"run `fastgen index --sizes {self.bucket_sizes_of} WDS:{posixpath.dirname(unsized[0])}`"
            )
        from tqdm.auto import tqdm

        counts = [shard.count for shard in shards]
        logger.info("assigning %d samples of %d shards to %d buckets, once per node (%s)", sum(counts), len(shards), len(self.bucket_targets), folder)
        bar = tqdm(shards, unit="shard", desc="assign buckets", disable=len(shards) < 1000)
        assignments = (assign_buckets(*self.bucket_dims(s.index), targets=self.bucket_targets) for s in bar if s.index is not None)
        save_assignment(folder, assignments, num_buckets=len(self.bucket_targets), shard_counts=counts)

    def shards_digest(self, shards: Sequence[Shard], scheme: bytes) -> str:
        """A name for what ``shards`` and a bucket ``scheme`` give: every shard's URL, size, count,
        ignored keys and sized member, and what :meth:`bucket_dims` depends on."""
        digest = hashlib.sha1(scheme)
        digest.update(f"{self.bucket_dims_key()}\0".encode())
        for shard in shards:  # with the member the index sized: sizes of another member are another assignment
            sized = None if shard.index is None else shard.index.sizes_of
            digest.update(f"{shard.url}\0{shard.size}\0{shard.count}\0{sorted(shard.ignored)}\0{sized}\0".encode())
        return digest.hexdigest()[:16]

    @property
    def bucketed(self) -> bool:
        """Whether the training stream is planned in buckets."""
        return self.bucket_targets is not None

    def resolve_bucket_targets(self, shards: Sequence[Shard]) -> None:
        """Targets that depend on the data are found here (a family's ``buckets="shapes"``); listed ones are kept."""

    def bucket_dims_key(self) -> str:
        """What :meth:`bucket_dims` depends on besides the index (part of the bucket index's name)."""
        return f"{type(self).__qualname__}:{self.bucket_sizes_of}"

    def bucket_dims(self, index: ShardIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One shard's per-sample (widths, heights, frames or None) that its samples' buckets follow.

        From the index's image sizes here; an unknown size (0, 0) counts as 1 x 1, the squarest
        bucket, and the reader judges the image. Families with clips or latents override it.
        """
        assert self.bucket_sizes_of is not None
        sizes = index.sizes_for(self.bucket_sizes_of, 2).astype(np.int64)
        sizes[(sizes <= 0).any(axis=1)] = 1
        return sizes[:, 0], sizes[:, 1], None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if state and isinstance(self.train_stream, (MixedWDSStream, BucketedWDSStream)) and self.cursor is not None:
            stream = self.train_stream
            stream.place(*self.placement())
            key = "mix" if isinstance(stream, MixedWDSStream) else "buckets"
            state[key] = stream.state_at(self.cursor.epoch, self.cursor.position).state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._restored_mix = state_dict.get("mix")
        self._restored_buckets = state_dict.get("buckets")
        if isinstance(self.train_stream, MixedWDSStream):
            self._resume_mix(self.train_stream)
        if isinstance(self.train_stream, BucketedWDSStream) and self._restored_buckets is not None and self.cursor is not None:
            self.train_stream.restore(self.cursor.position, BucketState.from_state_dict(self._restored_buckets))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.decode_on_device:
            batch = self._decode_after_transfer(batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def _decode_after_transfer(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run :meth:`decode_rows`; count, log and drop the rows that fail (and add them to
        ``skipped_index_dir``'s ``skipped-rank<r>-device.json``).

        A batch whose every row fails is replaced by the last good one (as a worker does when it
        loses a whole batch), so every GPU still takes its step and DDP does not hang.
        """
        values, failures = self.decode_rows(batch, self.batch_device())
        for row, (url, key) in enumerate(zip(batch["shard"], batch["fname"])):
            if row in failures:
                self.device_bad_data.skip(url, key, failures[row])
            else:
                self.device_bad_data.ok()
        if failures:
            self.device_bad_data.write_skipped(self.skipped_index_dir, skipped_name(self.placement()[0], "device"))
        if len(failures) == len(batch["fname"]):
            previous = self._device_stand_in.lost("every sample of a batch failed to decode on the device")
            if previous is None:
                raise RuntimeError(
                    f"every sample of the first batch failed to decode on the device; first: "
                    f"{batch['fname'][0]} in {batch['shard'][0]}: {failures[0]!r}"
                )
            return dict(previous)
        batch = drop_rows({**batch, **values}, failures)
        for key in values:
            batch[key] = collate_column(batch[key])
        self._device_stand_in.good(dict(batch))
        return batch

    def train_dataloader(self):
        loader = super().train_dataloader()
        assert self.train_stream is not None
        self.device_bad_data.tally = self.train_stream.tally  # the main process's row of the run totals
        return loader

    def _training_stream(self) -> PlannedStream | None:
        return self.train_stream

    # -- inspection ------------------------------------------------------------------------
    def data_files(self) -> list[tuple[str, int]]:
        """Every shard of every datatag, with its size."""
        return [(f.url, f.size) for tag in self.datatags for f in list_shards(parse_datatag(tag), self.storage_options, tag)]

    def shards(self) -> tuple[Shard, ...]:
        stream = self.train_stream
        return stream.source.shards if isinstance(stream, (WDSStream, ResampledWDSStream, BucketedWDSStream)) else ()

    def samples_per_epoch(self) -> int | None:
        return self.train_stream.num_samples if isinstance(self.train_stream, WDSStream) else None


def _check_stream(k: int, stream: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of ``streams``: its datatags and exactly one of weight, proportion and repeat."""
    if not isinstance(stream, Mapping):
        raise ValueError(f"streams[{k}] must be a mapping like {{'datatags': ['WDS:...'], 'weight': 1}}, got {stream!r}")
    unknown = set(stream) - {"datatags", "weight", "proportion", "repeat", *STREAM_OWN_OPTIONS}
    kinds = [key for key in ("weight", "proportion", "repeat") if key in stream]
    if unknown or len(kinds) != 1 or not stream.get("datatags"):
        raise ValueError(
            f"streams[{k}] = {dict(stream)}: give 'datatags' (a non-empty list) and exactly one of 'weight', 'proportion' "
            f"or 'repeat'{'; unknown keys ' + str(sorted(unknown)) if unknown else ''}"
        )
    datatags = [stream["datatags"]] if isinstance(stream["datatags"], str) else list(stream["datatags"])
    return {"datatags": datatags, kinds[0]: stream[kinds[0]], **{key: stream[key] for key in STREAM_OWN_OPTIONS if key in stream}}


#: what a stream of ``streams`` may set for itself; every other option is the DataModule's
STREAM_OWN_OPTIONS = ("key_map", "presets_filter")


def _tail_from(tail: TailPolicy | None, partial: bool | None) -> TailPolicy:
    """``tail``, or the tail policy of FastGen's ``partial``; "pad" when neither is given.

    ``(None, False)`` -> "drop"; ``(None, True)`` -> "pad"; ``("drop", False)`` -> "drop";
    ``("pad", False)`` -> ValueError (they disagree).
    """
    implied: TailPolicy | None = None if partial is None else ("pad" if partial else "drop")
    if tail is not None and implied is not None and tail != implied:
        raise ValueError(f"partial={partial} means tail={implied!r} but tail={tail!r}; give one of partial and tail")
    return tail or implied or "pad"
