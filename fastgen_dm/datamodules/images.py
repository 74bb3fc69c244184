"""Raw images in WebDataset shards, with FastGen's defaults: ``ImageWDSDataModule``.

A :class:`WDSDataModule` whose image members are decoded, converted to RGB, resized (short side
to ``input_res``, bicubic), center-cropped and normalized in the DataLoader workers by one
picklable :class:`~fastgen_dm.transform.image.ImageTransform`. Every argument of that class
applies.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from fastgen_dm.batch.assemble import SampleTransform
from fastgen_dm.datamodules.webdataset import WDSDataModule
from fastgen_dm.format.image import IMAGE_EXTENSIONS
from fastgen_dm.plan.buckets import BUCKET_TAILS, BucketTail, targets_from
from fastgen_dm.transform.image import ImageTransform, check_input_res, check_norm, normalize_pixels
from fastgen_dm.viz import unnormalize


class ImageWDSDataModule(WDSDataModule):
    """Raw images (jpg, png, webp, bmp, tiff, gif, ppm; any mode) and captions: FastGen's ``ImageWDSLoader``.

    Batches: ``fname``, ``shard``, ``real`` [B, 3, input_res, input_res], ``condition`` (list of
    captions), ``neg_condition`` (list of ``""``), plus any other ``key_map`` outputs. Every
    ``key_map`` output whose member suffix is an image extension (``jpg``, ``png``, ...) is an image;
    the format is read from the bytes, so a PNG stored as ``.jpg`` decodes too.

    Pixels (:func:`~fastgen_dm.transform.image.to_rgb`): converted to RGB before resizing;
    transparency is composited on white; 16-bit images are scaled to 8 bits (``round(v / 257)``).
    EXIF orientation is not applied (as in FastGen and torchvision).

    Values: ``(x / 255 - norm_mean) / norm_std`` in float32, computed by
    :func:`~fastgen_dm.transform.image.normalize_pixels` (the same bits as FastGen's
    ``ToTensor`` + ``Normalize``, on the CPU and on the GPU). By default (``normalize_on_device``)
    images travel as uint8 and are scaled in :meth:`on_after_batch_transfer`: a quarter of the
    bytes through workers, pinning and the copy to the GPU. Outside a Trainer, call
    ``dm.on_after_batch_transfer(batch, 0)`` to scale a batch.

    Corrupt images (truncated, empty, bad PNG checksum, unknown format) are skipped and counted
    under ``max_skip_fraction``.

    GPU JPEG decoding (``decode_jpeg_on_device``): workers read only each JPEG's header and pass
    its bytes on; after the transfer, the batch's JPEGs decode in one nvJPEG call (torchcodec) and
    are resized and cropped on the GPU. Images the GPU cannot decode as the CPU would (PNG,
    CMYK, progressive, truncated, EXIF-rotated, see :func:`~fastgen_dm.decode.jpeg.device_decodable`)
    are still decoded by the workers. A JPEG nvJPEG rejects is decoded again on the CPU; one that
    fails there too is dropped from its batch and counted in ``device_bad_data`` under the same
    ``max_skip_fraction``.

    Args:
        datatags: Datasets as ``"WDS:<location>"``.
        batch_size: Samples per GPU per step.
        input_res: Side of the square output in pixels: the short side is resized to it, then
            the center is cropped.
        norm_mean: Mean subtracted from ``x / 255``: one value, or three (R, G, B).
        norm_std: Divisor after the mean: one value, or three (R, G, B); none may be 0.
        exact_resize: False (default): JPEGs decode at 1/2, 1/4 or 1/8 size when that still covers
            the resized image, and the resize runs in torch's vectorized bicubic; the output stays
            within PSNR 40 dB of the exact path (about 50 dB measured). True: full-size decode and
            Pillow's bicubic resize, bit-identical to FastGen's transform (for RGB inputs).
        normalize_on_device: True (default): deliver uint8 and scale after the transfer to the
            device. False: workers deliver float32 already scaled (the same values).
        decode_jpeg_on_device: Decode JPEGs on the training device after the transfer (nvJPEG
            on CUDA) instead of in the workers: fewer CPU cores per GPU. Needs
            ``normalize_on_device=True`` and ``exact_resize=False``; within PSNR 40 dB of the
            exact path. On a CPU device the main process decodes (libjpeg-turbo), slower than workers.
        key_map: Output key -> member suffix; None: ``{"real": "jpg", "condition": "txt"}``.
            Outputs whose suffix ends in an image extension are images (at least one must be).
        buckets: Aspect-ratio buckets instead of the square ``input_res``: a list of
            ``[height, width]`` targets, or ``{"ratios": N, "pixels": P}`` (N aspect ratios in
            [1/2, 2] at about P pixels, sides multiples of 64; also ``"max_ratio"``, ``"multiple"``).
            Each sample goes to the nearest aspect ratio (then the largest target not above its
            size); every global step takes every GPU's batch from one bucket, each image resized
            to cover its bucket's (H, W) and center-cropped; batches carry ``bucket`` (an int).
            Needs the first image key's sizes in the index: ``fastgen index --sizes jpg
            WDS:<location>`` (``prepare_data`` records them for local data it indexes). Example:
            ``buckets={"ratios": 5, "pixels": 65536}`` -> targets [[384, 192], [320, 192],
            [256, 256], [192, 320], [192, 384]].
        bucket_tail: Each bucket's rest of fewer than one global step: ``"drop"`` (default; left
            out of the epoch), ``"pad"`` (one more step, filled by repeating the bucket's first
            samples) or ``"carry"`` (drawn first in the next epoch).
        **kwargs: Every other argument of :class:`WDSDataModule`.
    """

    default_key_map = {"real": "jpg", "condition": "txt"}
    default_presets_map = {"neg_condition": "empty_string"}
    # The base class's scale_to_unit (x / 127.5 - 1) is not used: image keys are scaled in
    # on_after_batch_transfer with normalize_pixels and norm_mean / norm_std.
    device_scaled_keys: tuple[str, ...] = ()

    def __init__(
        self,
        datatags: list[str] | None = None,
        batch_size: int = 32,
        input_res: int = 512,
        norm_mean: float | tuple[float, float, float] = 0.5,
        norm_std: float | tuple[float, float, float] = 0.5,
        exact_resize: bool = False,
        normalize_on_device: bool = True,
        decode_jpeg_on_device: bool = False,
        key_map: dict[str, str] | None = None,
        buckets: list[list[int]] | dict[str, Any] | None = None,
        bucket_tail: BucketTail = "drop",
        **kwargs: Any,
    ) -> None:
        check_input_res(input_res, "input_res")
        if bucket_tail not in BUCKET_TAILS:
            raise ValueError(f"bucket_tail={bucket_tail!r} is unknown; use one of {BUCKET_TAILS}")
        if buckets is not None and decode_jpeg_on_device:
            raise ValueError("buckets resize each image to its bucket in the workers: use decode_jpeg_on_device=False with buckets")
        if decode_jpeg_on_device and (exact_resize or not normalize_on_device):
            raise ValueError(
                "decode_jpeg_on_device=True resizes on the device and delivers uint8 from the workers: "
                f"it needs exact_resize=False (got {exact_resize}) and normalize_on_device=True (got {normalize_on_device})"
            )
        self.norm_mean, self.norm_std = check_norm(norm_mean, "norm_mean"), check_norm(norm_std, "norm_std")
        self.image_keys = _image_keys(self.default_key_map if key_map is None else key_map)
        self.raw_keys = self.image_keys  # passed to the transform as bytes, decoded there
        if buckets is not None:  # read by WDSDataModule's setup: the stream's plan
            self.bucket_targets = targets_from(buckets)
            self.bucket_tail = bucket_tail
            self.bucket_sizes_of = dict(self.default_key_map if key_map is None else key_map)[self.image_keys[0]]
        self.image_transform = ImageTransform(
            input_res, self.norm_mean, self.norm_std, not normalize_on_device, exact_resize, self.image_keys,
            decode_on_device=decode_jpeg_on_device,
            bucket_sizes=None if self.bucket_targets is None else tuple((int(h), int(w)) for h, w in self.bucket_targets[:, :2]),
        )  # fmt: skip
        super().__init__(
            datatags=datatags, batch_size=batch_size, key_map=key_map, normalize_on_device=normalize_on_device, **kwargs
        )
        self.input_res, self.exact_resize = input_res, exact_resize
        self.decode_on_device = decode_jpeg_on_device  # the argument says JPEGs only; the switch is the same

    def sample_transform(self) -> SampleTransform:
        return self.image_transform

    def decode_rows(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, list[Any]], dict[int, BaseException]]:
        values: dict[str, list[Any]] = {}
        failures: dict[int, BaseException] = {}
        for key in self.image_keys:
            if isinstance(batch.get(key), list):  # a stacked tensor: the workers decoded every row
                values[key] = self.image_transform.decode_encoded(batch[key], device)
                failures.update((row, v) for row, v in enumerate(values[key]) if isinstance(v, Exception))
        return values, failures

    def pixels_in_unit_range(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Undo ``(x / 255 - norm_mean) / norm_std`` of float image keys, back to [-1, 1]; other keys as they are."""
        if key not in self.image_keys or not x.is_floating_point():
            return x
        return unnormalize(x, self.norm_mean, self.norm_std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)  # advances the cursor
        if self.normalize_on_device:
            for key in self.image_keys:
                if key in batch and batch[key].dtype == torch.uint8:
                    batch[key] = normalize_pixels(batch[key], self.norm_mean, self.norm_std)
        return batch


def _image_keys(key_map: Any) -> tuple[str, ...]:
    """The ``key_map`` outputs whose member suffix ends in an image extension, in order.

    ``{"real": "jpg", "condition": "txt", "mask": "mask.png"}`` -> ``("real", "mask")``.
    """
    if not isinstance(key_map, Mapping):
        return ()  # SampleSpec's own validation names the problem
    keys = tuple(
        key for key, suffix in key_map.items()
        if isinstance(suffix, str) and suffix.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
    )  # fmt: skip
    if not keys:
        raise ValueError(
            f"key_map {key_map!r} names no image member; map an output to an image suffix "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), e.g. {{'real': 'jpg', 'condition': 'txt'}}, "
            "or use WDSDataModule for shards without images"
        )
    return keys
