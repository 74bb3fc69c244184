"""Raw videos in WebDataset shards, with FastGen's ``VideoWDSLoader`` defaults.

Each worker decodes only the frames of each sample's clip (backends seek to the keyframe before
the clip), resizes them to cover ``img_size`` and center crops. Batches::

    {"fname": [B keys], "shard": [B URLs],
     "real": uint8 [B, 3, sequence_length, H, W] (float32 in [-1, 1] after the transfer to the device),
     "condition": [B strings], "neg_condition": [B x the neg_prompt_wan string],
     "cropping_params": {"resize_w": int64 [B], "resize_h": ..., "crop_x0": ..., "crop_y0": ..., "crop_w": ..., "crop_h": ...}}
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from fastgen_dm.datamodules.webdataset import WDSDataModule
from fastgen_dm.index.shard_index import ShardIndex
from fastgen_dm.plan.buckets import BUCKET_TAILS, BucketTail, targets_from
from fastgen_dm.decode.video import Backend, validate_backend
from fastgen_dm.transform.video import (
    DECODER_TYPES,
    SHORT_VIDEO_POLICIES,
    DecoderType,
    ShortVideo,
    VideoClipTransform,
)


class VideoWDSDataModule(WDSDataModule):
    """Raw videos (``mp4``, ``webm``, ``avi``, ``mov``, ...) and captions, as FastGen's ``VideoWDSLoader``.

    Every argument of :class:`WDSDataModule` applies (epoch mode, resume, bad-data ceiling, ...).
    A video that does not decode, has no video stream, is empty, is too short for the clip
    (``short_video="skip"``) or takes longer than ``decode_timeout_s`` is bad data: skipped,
    counted and logged like any other.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step (FastGen's default for video: 2).
        sequence_length: Frames per clip.
        img_size: Output (width, height): frames are resized to cover it (aspect preserved) and
            center-cropped.
        video_keys: ``key_map`` outputs that hold videos. With several, each gets its own
            ``<key>_cropping_params``; with one, the batch has ``cropping_params``.
        decoder_type: Which frames (FastGen's meaning; the decoding library is ``backend``). ``"segment"``: a clip from a random start, drawn per sample from
            ``(seed, epoch, shard URL, key)`` (the same on every run and any number of workers;
            with ``resampled=True`` also from the draw number, so a video drawn again gets another clip).
            FastGen's two choices, plus ``"full"``: the first ``sequence_length`` frames (FastGen's ``full`` decodes the whole
            video and keeps those; here only they are decoded). ``"uniform"``: ``sequence_length``
            frames evenly spaced over the whole video.
        frame_stride: Take every ``frame_stride``-th frame (1: consecutive frames); not with ``"uniform"``.
        backend: Decoder: ``"torchcodec"`` (default: the fastest in ``benchmarks/bench_video.py``,
            about 1.4x decord, and it reads the frames of damaged files that decord refuses),
            ``"decord"`` or ``"pyav"`` (FastGen's decoder). All give the same frames. Each needs the
            ``video`` extra (``pip install 'fastgen-dm[video]'``).
        short_video: A video with fewer frames than the clip spans: ``"skip"`` it (bad data, as
            FastGen does) or ``"pad"`` it by repeating its last frame.
        decode_timeout_s: Bound on opening a video and on decoding its clip, in seconds; None for
            none. A timed-out decode is abandoned in a helper thread (native code cannot be
            stopped; see :mod:`fastgen_dm.decode.video`) and the sample is skipped.
        exact_resize: True: FastGen's resize (torchvision's antialiased bicubic, bit for bit).
            False: torch's uint8 kernel, about 3.5x faster when frames need resizing.
        num_workers: DataLoader workers per GPU.
        normalize_on_device: Deliver uint8 clips and scale them to [-1, 1] after the transfer to
            the device (4x less to copy); False scales them in the workers (float32).
        decode_on_device: Decode clips on the training device after the transfer (torchcodec's
            CUDA decoder, NVDEC) instead of in the workers: the workers only read the bytes, and
            the encoded video, not the decoded clip, crosses to the GPU. Needs
            ``backend="torchcodec"`` and ``normalize_on_device=True``. The clip's frame indices are
            the same as in the workers; NVDEC's pixels are close to, not bit-identical with, the
            CPU's. A video that fails is dropped from its batch and counted in ``device_bad_data``.
            On a CPU device the main process decodes, one clip at a time.
        key_map: Output key -> member suffix (default ``{"real": "mp4", "condition": "txt"}``).
        presets_map: Default ``{"neg_condition": "neg_prompt_wan"}``.
        buckets: Aspect-ratio and clip-length buckets instead of one ``img_size`` and
            ``sequence_length``: ``[[height, width, frames], ...]`` (``[height, width]``: frames
            ``sequence_length``) or ``{"ratios": N, "pixels": P, "frames": [16, 32]}``. Each video
            goes to the nearest aspect ratio, the largest target not above its size, and the
            longest clip it holds at ``frame_stride`` (else the shortest); every global step
            takes every GPU's batch from one bucket, each clip resized to cover its bucket's
            (H, W) and center-cropped; batches carry ``bucket``. Needs the videos' sizes and
            frame counts in the index: ``fastgen index --sizes mp4 WDS:<location>`` (mp4, mov,
            m4v; read from their boxes, never the media data).
        bucket_tail: Each bucket's rest of fewer than one global step: ``"drop"``, ``"pad"`` or ``"carry"``.
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "mp4", "condition": "txt"}
    default_presets_map = {"neg_condition": "neg_prompt_wan"}

    def __init__(
        self,
        datatags: list[str] | None = None,
        batch_size: int = 2,
        sequence_length: int = 81,
        img_size: tuple[int, int] = (832, 480),
        video_keys: tuple[str, ...] = ("real",),
        decoder_type: DecoderType = "segment",
        frame_stride: int = 1,
        backend: Backend = "torchcodec",
        short_video: ShortVideo = "skip",
        decode_timeout_s: float | None = 30.0,
        exact_resize: bool = True,
        num_workers: int | None = 2,
        normalize_on_device: bool = True,
        decode_on_device: bool = False,
        key_map: dict[str, str] | None = None,
        presets_map: dict[str, str] | None = None,
        buckets: list[list[int]] | dict[str, Any] | None = None,
        bucket_tail: BucketTail = "drop",
        **kwargs: Any,
    ) -> None:
        video_keys = (video_keys,) if isinstance(video_keys, str) else tuple(video_keys)
        if bucket_tail not in BUCKET_TAILS:
            raise ValueError(f"bucket_tail={bucket_tail!r} is unknown; use one of {BUCKET_TAILS}")
        if buckets is not None and decode_on_device:
            raise ValueError("buckets cut each clip to its bucket in the workers: use decode_on_device=False with buckets")
        _validate_video_args(sequence_length, img_size, video_keys, decoder_type, frame_stride, backend, short_video, decode_timeout_s)
        if decode_on_device and (backend != "torchcodec" or not normalize_on_device):
            raise ValueError(
                "decode_on_device=True decodes with torchcodec's CUDA decoder and scales on the device: it needs "
                f"backend='torchcodec' (got {backend!r}) and normalize_on_device=True (got {normalize_on_device})"
            )
        outputs = self.default_key_map if key_map is None else key_map
        missing = [key for key in video_keys if key not in outputs]
        if missing:
            raise ValueError(
                f"video_keys {missing} are not key_map outputs ({sorted(outputs)}); "
                f"map each to its video member, e.g. key_map={{{missing[0]!r}: 'mp4', ...}}"
            )
        self.raw_keys = video_keys  # decoded by the clip transform, not by the member decoder table
        clips = None
        if buckets is not None:  # read by WDSDataModule's setup: the stream's plan
            targets = targets_from(buckets, columns=(2, 3))
            if targets.shape[1] == 2:
                targets = np.concatenate([targets, np.full((len(targets), 1), sequence_length)], axis=1)
            self.bucket_targets, self.bucket_tail = targets, bucket_tail
            self.bucket_sizes_of = outputs[video_keys[0]]
            clips = tuple((int(w), int(h), int(t)) for h, w, t in targets)
        super().__init__(
            datatags=datatags, batch_size=batch_size, key_map=key_map, presets_map=presets_map,
            num_workers=num_workers, normalize_on_device=normalize_on_device, **kwargs,
        )  # fmt: skip
        self.device_scaled_keys = video_keys
        self.sequence_length, self.img_size = sequence_length, (int(img_size[0]), int(img_size[1]))
        self.video_keys, self.decoder_type, self.frame_stride = video_keys, decoder_type, frame_stride
        self.backend, self.short_video, self.decode_timeout_s = backend, short_video, decode_timeout_s
        self.exact_resize = exact_resize
        self.decode_on_device = decode_on_device
        self.clip_transform = VideoClipTransform(
            sequence_length=sequence_length, img_size=self.img_size, video_keys=video_keys,
            decoder_type=decoder_type, frame_stride=frame_stride, short_video=short_video,
            backend=backend, decode_timeout_s=decode_timeout_s, seed=self.seed,
            scale=not normalize_on_device, exact_resize=exact_resize, decode_on_device=decode_on_device,
            bucket_clips=clips,
        )  # fmt: skip

    def sample_transform(self) -> VideoClipTransform:
        return self.clip_transform

    def bucket_dims(self, index: ShardIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Each video's (W, H) and the longest clip it holds at ``frame_stride``, from the index (``fastgen index --sizes mp4``)."""
        assert self.bucket_sizes_of is not None
        sizes = index.sizes_for(self.bucket_sizes_of, 3).astype(np.int64)
        sizes[(sizes[:, :2] <= 0).any(axis=1), :2] = 1  # unknown: the squarest bucket; the reader judges the video
        frames = sizes[:, 2]
        # a clip of T frames spans (T - 1) * stride + 1 (uniform clips spread over the whole video)
        longest = frames if self.decoder_type == "uniform" else np.where(frames > 0, (frames - 1) // self.frame_stride + 1, 0)
        return sizes[:, 0], sizes[:, 1], longest

    def bucket_dims_key(self) -> str:
        return f"{super().bucket_dims_key()}:{self.decoder_type}:{self.frame_stride}"

    def decode_rows(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, list[Any]], dict[int, BaseException]]:
        values: dict[str, list[Any]] = {}
        failures: dict[int, BaseException] = {}
        for key in self.video_keys:
            params_key = "cropping_params" if len(self.video_keys) == 1 else f"{key}_cropping_params"
            clips, params = values.setdefault(key, []), values.setdefault(params_key, [])
            for row, encoded in enumerate(batch[key]):
                try:
                    clip, crop = self.clip_transform.clip(encoded, device)
                except Exception as err:  # bad data: counted by the caller
                    failures.setdefault(row, err)
                    clip, crop = None, None
                clips.append(clip)
                params.append(crop)
        return values, failures


def _validate_video_args(
    sequence_length: int,
    img_size: Any,
    video_keys: tuple[str, ...],
    decoder_type: str,
    frame_stride: int,
    backend: str,
    short_video: str,
    decode_timeout_s: float | None,
) -> None:
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"sequence_length must be an integer >= 1 (frames per clip), got {sequence_length!r}; e.g. 81")
    if (
        not isinstance(img_size, Sequence)
        or len(img_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in img_size)
    ):
        raise ValueError(f"img_size must be (width, height) in pixels, two integers >= 1, got {img_size!r}; e.g. (832, 480)")
    if not video_keys or not all(isinstance(k, str) and k for k in video_keys):
        raise ValueError(f"video_keys must name at least one key_map output, got {video_keys!r}; e.g. ('real',)")
    if decoder_type not in DECODER_TYPES:
        raise ValueError(f"decoder_type {decoder_type!r} is unknown; use one of {list(DECODER_TYPES)}")
    if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be an integer >= 1, got {frame_stride!r}")
    if decoder_type == "uniform" and frame_stride != 1:
        raise ValueError(f"decoder_type='uniform' spaces frames over the whole video; frame_stride={frame_stride} conflicts, leave it at 1")
    validate_backend(backend)
    if short_video not in SHORT_VIDEO_POLICIES:
        raise ValueError(f"short_video {short_video!r} is unknown; use one of {list(SHORT_VIDEO_POLICIES)}")
    if decode_timeout_s is not None and not decode_timeout_s > 0:
        raise ValueError(f"decode_timeout_s must be > 0 seconds or None (no bound), got {decode_timeout_s!r}")


__all__ = ["VideoWDSDataModule"]
