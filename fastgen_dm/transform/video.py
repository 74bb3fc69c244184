"""Raw video to training clips: which frames to take, resize to cover, center crop.

Pure given frames (:func:`clip_indices`, :func:`cover_size`, :func:`resize_crop`), plus
:class:`VideoClipTransform`, the picklable per-sample step of the video family that opens each
video with a :mod:`fastgen_dm.decode.video` backend, decodes only the chosen frames and crops
them. FastGen's layout::

    sample = {"real": <mp4 bytes>, "condition": "a cat"}
    VideoClipTransform(sequence_length=81, img_size=(832, 480))(sample)
    # {"real": uint8 [3, 81, 480, 832], "condition": "a cat",
    #  "cropping_params": {"resize_w": 853, "resize_h": 480, "crop_x0": 10, "crop_y0": 0, "crop_w": 832, "crop_h": 480}}
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from fastgen_dm.decode.encoded import EncodedVideo
from fastgen_dm.decode.video import Backend, FramesUnavailableError, VideoDecodeError, open_video
from fastgen_dm.transform.image import scale_to_unit

DecoderType = Literal["segment", "full", "uniform"]
ShortVideo = Literal["skip", "pad"]
Interpolation = Literal["bicubic", "bilinear"]
DECODER_TYPES: tuple[str, ...] = get_args(DecoderType)
SHORT_VIDEO_POLICIES: tuple[str, ...] = get_args(ShortVideo)
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)

#: Frames resized at once: bounds the float32 working memory to this many frames.
RESIZE_CHUNK_FRAMES = 8
#: Times the frames are chosen again when a backend finds fewer decodable frames than it counted.
_RECOUNTS = 3


class VideoTooShortError(VideoDecodeError):
    """A video has fewer frames than the clip needs and ``short_video="skip"`` (bad data)."""


def clip_seed(seed: int, epoch: int, url: str, key: str, draw: int | None = None) -> list[int]:
    """The entropy of one sample's clip: stable across processes and runs (crc32, never ``hash()``)."""
    words = [seed, epoch, zlib.crc32(url.encode("utf-8")), zlib.crc32(key.encode("utf-8"))]
    return words if draw is None else [*words, draw + 1]  # + 1: a trailing 0 word would not change the seed


def clip_indices(
    num_frames: int,
    sequence_length: int,
    *,
    decoder_type: DecoderType = "segment",
    frame_stride: int = 1,
    short_video: ShortVideo = "skip",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The frame indices of one clip: int64 [sequence_length], ascending.

    Args:
        num_frames: Frames in the video.
        sequence_length: Frames in the clip.
        decoder_type: ``"segment"``: ``sequence_length`` frames ``frame_stride`` apart from a
            random start (FastGen's ``segment``). ``"full"``: the same from frame 0 (FastGen's
            ``full`` decodes the whole video and keeps its first ``sequence_length`` frames).
            ``"uniform"``: ``sequence_length`` frames evenly spaced from the first to the last
            (``frame_stride`` must be 1).
        frame_stride: Step between consecutive clip frames (1: consecutive frames).
        short_video: When the video has fewer frames than the clip spans: ``"skip"`` raises
            :class:`VideoTooShortError`; ``"pad"`` takes every ``frame_stride``-th frame from
            frame 0 and repeats the last.
        rng: The generator of the ``segment`` start (required for ``"segment"``).

    Examples (``num_frames=10``)::

        segment, sequence_length=4, frame_stride=2: span 7, start in [0, 3] -> e.g. [1, 3, 5, 7]
        full,    sequence_length=4, frame_stride=2 -> [0, 2, 4, 6]
        uniform, sequence_length=4                 -> [0, 3, 6, 9]
        full,    sequence_length=7, frame_stride=2, pad -> [0, 2, 4, 6, 8, 8, 8]
    """
    if decoder_type not in DECODER_TYPES:
        raise ValueError(f"decoder_type {decoder_type!r} is unknown; use one of {list(DECODER_TYPES)}")
    if short_video not in SHORT_VIDEO_POLICIES:
        raise ValueError(f"short_video {short_video!r} is unknown; use one of {list(SHORT_VIDEO_POLICIES)}")
    if decoder_type == "uniform":
        needed, frame_stride = sequence_length, 1
    else:
        needed = (sequence_length - 1) * frame_stride + 1  # frames the clip spans
    if num_frames < needed:
        if short_video == "skip":
            raise VideoTooShortError(
                f"the video has {num_frames} frames; a clip of sequence_length={sequence_length} with "
                f"frame_stride={frame_stride} spans {needed} (short_video='skip')"
            )
        taken = np.arange(0, num_frames, frame_stride, dtype=np.int64)[:sequence_length]
        return np.concatenate([taken, np.full(sequence_length - len(taken), taken[-1], dtype=np.int64)])
    if decoder_type == "uniform":
        return np.floor(np.linspace(0, num_frames - 1, sequence_length) + 0.5).astype(np.int64)
    start = 0
    if decoder_type == "segment":
        if rng is None:
            raise ValueError("decoder_type='segment' needs an rng for the clip's start")
        start = int(rng.integers(0, num_frames - needed + 1))
    return start + frame_stride * np.arange(sequence_length, dtype=np.int64)


def cover_size(width: int, height: int, img_size: tuple[int, int]) -> tuple[int, int]:
    """(resize_w, resize_h): the smallest aspect-preserving size that covers ``img_size`` (w, h).

    ``scale = max(W / width, H / height)``, sides rounded half up as FastGen does:
    ``cover_size(1280, 720, (832, 480)) == (853, 480)``; ``cover_size(64, 48, (32, 32)) == (43, 32)``.
    """
    target_w, target_h = img_size
    scale = max(target_w / width, target_h / height)
    return max(target_w, int(scale * width + 0.5)), max(target_h, int(scale * height + 0.5))


def resize_crop(
    frames: torch.Tensor, img_size: tuple[int, int], interpolation: Interpolation = "bicubic", exact: bool = True
) -> tuple[torch.Tensor, dict[str, int]]:
    """Resize ``frames`` to cover ``img_size`` and center crop it.

    Args:
        frames: uint8 [T, H, W, 3] (as the backends return them).
        img_size: Target (width, height).
        interpolation: ``"bicubic"`` (FastGen's) or ``"bilinear"``; antialiased either way.
        exact: True: resize in float32, then clamp and round, which equals
            ``torchvision.transforms.functional.resize(..., antialias=True)`` on uint8 (FastGen's
            resize) bit for bit. False: torch's uint8 antialiased kernel, about 3.5x faster on the
            CPU, within a few levels of the exact result (it rounds at each pass). Frames on
            another device (the GPU) always take the float32 path, which is the one it has.

    Returns:
        The clip, uint8 [3, T, height, width], and its cropping parameters: the resized size
        and the crop window in it, ``{"resize_w", "resize_h", "crop_x0", "crop_y0", "crop_w", "crop_h"}``,
        with ``crop_x0 = (resize_w - width) // 2`` (the offsets used). The resize runs on
        ``RESIZE_CHUNK_FRAMES`` frames at a time to bound memory.
    """
    assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, (frames.dtype, frames.shape)
    num, height, width, _ = frames.shape
    crop_w, crop_h = img_size
    resize_w, resize_h = cover_size(width, height, img_size)
    x0, y0 = (resize_w - crop_w) // 2, (resize_h - crop_h) // 2
    params = {"resize_w": resize_w, "resize_h": resize_h, "crop_x0": x0, "crop_y0": y0, "crop_w": crop_w, "crop_h": crop_h}
    chw = frames.permute(0, 3, 1, 2)  # [T, 3, H, W], a view
    exact = exact or frames.device.type != "cpu"
    out = torch.empty((3, num, crop_h, crop_w), dtype=torch.uint8, device=frames.device)
    for t0 in range(0, num, RESIZE_CHUNK_FRAMES):
        chunk = chw[t0 : t0 + RESIZE_CHUNK_FRAMES]
        if (resize_h, resize_w) != (height, width):
            if exact:
                resized = F.interpolate(chunk.float(), size=(resize_h, resize_w), mode=interpolation, align_corners=False, antialias=True)
                chunk = resized.clamp_(0, 255).round_().to(torch.uint8)
            else:
                chunk = F.interpolate(chunk.contiguous(), size=(resize_h, resize_w), mode=interpolation, align_corners=False, antialias=True)
        out[:, t0 : t0 + len(chunk)] = chunk[:, :, y0 : y0 + crop_h, x0 : x0 + crop_w].permute(1, 0, 2, 3)
    return out, params


@dataclass(frozen=True)
class VideoClipTransform:
    """Per sample: decode a clip of each video key, resize/crop it, add its cropping parameters.

    Picklable (DataLoader workers receive a copy). Video members arrive as raw bytes, or as
    :class:`EncodedVideo` carrying (shard URL, key, epoch, draw): the ``segment`` start is then
    drawn from ``numpy.random.default_rng(clip_seed(seed, epoch, url, key, draw))``, the same on
    every run, process and number of workers (``draw`` numbers the draws of resampled mode, where
    a video comes round again and should get another clip). Plain bytes (no origin known) seed
    from the bytes' crc32 and a count of the videos this copy has seen.

    Args:
        sequence_length: Frames per clip.
        img_size: Output (width, height).
        video_keys: Sample keys holding videos; each becomes uint8 (or float, see ``scale``)
            [3, sequence_length, height, width].
        decoder_type: ``"segment"``, ``"full"`` or ``"uniform"`` (see :func:`clip_indices`).
        frame_stride: Step between clip frames.
        short_video: ``"skip"`` (raise, the sample is bad data) or ``"pad"`` (repeat the last frame).
        backend: Video decoding backend (see :func:`fastgen_dm.decode.video.open_video`).
        decode_timeout_s: Bound on each decoding call, in seconds; None for none.
        seed: Seed of the ``segment`` starts.
        scale: Scale to float32 [-1, 1] here (on the CPU) instead of delivering uint8.
        interpolation: Resize filter.
        exact_resize: FastGen's float resize (True) or torch's faster uint8 one (see :func:`resize_crop`).
        decode_on_device: Leave decoding for after the transfer: each video key becomes its
            :class:`EncodedVideo` (no cropping parameters yet), and :meth:`clip` runs later with
            the device (``VideoWDSDataModule(decode_on_device=True)``). The clip's frames are the
            same, since its start is seeded by the sample's origin, not by the process.
        bucket_clips: With buckets, each bucket's ``(width, height, sequence_length)``: a sample
            drawn for bucket ``b`` (``origin.bucket``) is cut to ``bucket_clips[b]`` instead of
            ``img_size`` and ``sequence_length``.
    """

    sequence_length: int = 81
    img_size: tuple[int, int] = (832, 480)
    video_keys: tuple[str, ...] = ("real",)
    decoder_type: DecoderType = "segment"
    frame_stride: int = 1
    short_video: ShortVideo = "skip"
    backend: Backend = "torchcodec"
    decode_timeout_s: float | None = 30.0
    seed: int = 0
    scale: bool = False
    interpolation: Interpolation = "bicubic"
    exact_resize: bool = True
    decode_on_device: bool = False
    bucket_clips: tuple[tuple[int, int, int], ...] | None = None
    _draws: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_draws", [0])  # plain-bytes draws seen by this copy (per process)

    def __call__(self, sample: dict[str, Any], origin: Any = None) -> dict[str, Any]:
        """Decode each video key's clip; ``origin`` (url, key, epoch) seeds the ``segment`` start."""
        out = dict(sample)
        for key in self.video_keys:
            value = out[key] if origin is None else EncodedVideo(out[key], origin.url, origin.key, origin.epoch, origin.draw)
            if self.decode_on_device:
                out[key] = value
                continue
            clip, params = self.clip(value, bucket=getattr(origin, "bucket", None))
            out[key] = scale_to_unit(clip) if self.scale else clip
            out["cropping_params" if len(self.video_keys) == 1 else f"{key}_cropping_params"] = params
        return out

    def rng_for(self, value: EncodedVideo | bytes) -> np.random.Generator:
        """The generator of one video's clip start: by origin when known, else by content and draw count."""
        if isinstance(value, EncodedVideo):
            return np.random.default_rng(clip_seed(self.seed, value.epoch, value.url, value.key, value.draw))
        self._draws[0] += 1
        return np.random.default_rng([self.seed, zlib.crc32(value), self._draws[0]])

    def clip(self, value: EncodedVideo | bytes, device: torch.device | str = "cpu", bucket: int | None = None) -> tuple[torch.Tensor, dict[str, int]]:
        """One video's clip, uint8 [3, T, H, W] on ``device``, and its cropping parameters (of ``bucket``'s shape with buckets)."""
        img_size, sequence_length = self.img_size, self.sequence_length
        if bucket is not None and self.bucket_clips is not None:
            width, height, sequence_length = self.bucket_clips[bucket]
            img_size = (width, height)
        data = value.data if isinstance(value, EncodedVideo) else value
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a video member must arrive as bytes, got {type(data).__name__}")
        rng = self.rng_for(value)
        with open_video(data, self.backend, timeout_s=self.decode_timeout_s, device=device) as video:
            for attempt in range(_RECOUNTS + 1):
                indices = clip_indices(
                    video.num_frames, sequence_length, decoder_type=self.decoder_type,
                    frame_stride=self.frame_stride, short_video=self.short_video, rng=rng,
                )  # fmt: skip
                try:
                    frames = video.get_frames(indices)
                    break
                except FramesUnavailableError:  # fewer frames decode than were counted: choose again
                    if attempt == _RECOUNTS:
                        raise
        return resize_crop(frames, img_size, self.interpolation, self.exact_resize)
