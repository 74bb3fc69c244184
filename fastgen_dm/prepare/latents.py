"""ImageNet 256x256 as Stable Diffusion VAE latents: EDM2's ``imagenet_256_sd.zip``.

Outputs of ``fastgen prepare imagenet-256`` (under ``<output_dir>/imagenet-256/``):

- ``imagenet-256x256.zip``: the training images with ADM's / EDM2's ``center-crop-dhariwal``
  at 256 (:func:`~fastgen_dm.prepare.imagenet.convert_imagenet`), PNGs in EDM's layout.
- ``imagenet_256_sd.zip``: for image ``i`` of that zip, member ``00000/img-mean-std-0000000i.npy``,
  float32 (8, 32, 32): the VAE posterior's mean (channels 0-3) and std (channels 4-7), with
  the same labels. The VAE (``stabilityai/sd-vae-ft-mse`` through ``diffusers.AutoencoderKL``)
  sees the image scaled to [-1, 1] (``pixels / 127.5 - 1``), as EDM2's ``StabilityVAEEncoder``
  feeds it; training code samples ``mean + std * eps`` and scales by 0.18215.

The encoding is a Lightning ``trainer.predict`` over a map-style dataset of the image zip::

    image zip --_ImageZipDataset--> (index int64, pixels uint8 [3, 256, 256])
      --DataLoader (Lightning adds UnrepeatedDistributedSampler: each index on one rank, once)-->
      --_VAEEncoder.predict_step--> (index [B], latent float32 [B, 8, 32, 32])
      --_PartWriter--> <parts>/part-rank00001-000003.{latents,index}.npy on each rank
    then, in the calling process: every part memory-mapped, members written in index order.

So the zip's members, order and labels depend neither on the number of devices nor on which
rank encoded what. The floats can differ in the last bits (about 1e-6 here) with the batch
composition and the CPU thread count, since convolutions round differently with either; with
the same batches and threads (e.g. ``batch_size=1``, one thread per process) one and two devices
write the same bytes. Several devices run as ``ddp_spawn`` processes started by the calling
process, which alone writes the zip; the parts folder sits beside the output, so all ranks must
share that filesystem (one node).

Requires the optional extra ``pip install 'fastgen-dm[vae]'`` (diffusers).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from fastgen_dm.decode import open_image
from fastgen_dm.prepare.edm_zip import EDMZipWriter, member_name
from fastgen_dm.prepare.imagenet import BadImagePolicy, convert_imagenet, list_imagenet_train
from fastgen_dm.prepare.zip_check import check_edm_zip
from fastgen_dm.read import EDMReader
from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES, AtomicPath, read_zip_member
from fastgen_dm.transform import scale_to_unit

__all__ = [
    "DEFAULT_VAE",
    "IMAGENET_256_OUTPUTS",
    "ImageNet256Report",
    "LATENT_PREFIX",
    "check_latent_zip",
    "encode_latent_zip",
    "load_vae",
    "prepare_imagenet_256",
]

logger = logging.getLogger(__name__)

#: The VAE EDM2 encodes ImageNet-256 with (a Hugging Face hub name).
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
#: Member stem of a latent: ``00000/img-mean-std-00000000.npy``.
LATENT_PREFIX = "img-mean-std"
#: Where ``prepare_imagenet_256`` writes, under the output directory.
IMAGENET_256_OUTPUTS: dict[str, str] = {
    "images": "imagenet-256/imagenet-256x256.zip",
    "latents": "imagenet-256/imagenet_256_sd.zip",
}
_RESOLUTION = 256
_LABELS_MEMBER = "dataset.json"
_PART_BYTES = 256 << 20  # latents a rank buffers before writing a part file

Precision = Literal["32-true", "bf16-mixed"]
Strategy = Literal["auto", "ddp_spawn", "ddp_fork"]
_PRECISIONS = ("32-true", "bf16-mixed")
_STRATEGIES = ("auto", "ddp_spawn", "ddp_fork")


# --- the VAE ----------------------------------------------------------------------------------


def load_vae(vae: str | os.PathLike[str] = DEFAULT_VAE) -> torch.nn.Module:
    """Load a ``diffusers.AutoencoderKL`` in float32, in eval mode, without gradients.

    Args:
        vae: A local folder written by ``save_pretrained`` (``config.json`` and weights), or a
            Hugging Face hub name such as "stabilityai/sd-vae-ft-mse" (downloaded to, or read
            from, the Hugging Face cache).

    Raises:
        ImportError: diffusers is not installed (``pip install 'fastgen-dm[vae]'``).
        FileNotFoundError: ``vae`` looks like a local path and does not exist.
        ValueError: It cannot be loaded as an ``AutoencoderKL``.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError(
            f"encoding latents needs diffusers ({err}); install it with pip install 'fastgen-dm[vae]'"
        ) from err
    name = os.fspath(vae)
    local = os.path.exists(name)
    if not local and (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name):
        raise FileNotFoundError(
            f"--vae {name!r} is not a folder; pass a folder written by AutoencoderKL.save_pretrained "
            f"or a hub name such as {DEFAULT_VAE!r}"
        )
    try:
        model = AutoencoderKL.from_pretrained(name, torch_dtype=torch.float32, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as err:  # what from_pretrained raises for bad or unreachable models
        where = "the folder" if local else "the hub name (it needs network access or the Hugging Face cache)"
        raise ValueError(f"--vae {name!r}: cannot load an AutoencoderKL from {where}: {err}") from err
    return model.eval().requires_grad_(False)


# --- the encoding: dataset, module, writer ----------------------------------------------------


class _ImageZipDataset(torch.utils.data.Dataset):
    """Item ``i`` of an EDM image zip as (i, uint8 [3, H, W]); the zip opens lazily per process."""

    def __init__(self, source: str, count: int) -> None:
        self.reader = EDMReader(source, is_zip=True)
        self.members = [member_name(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        member = self.members[index]
        with open_image(self.reader.read(member), name=f"{self.reader.source}: {member}") as image:
            pixels = np.array(image.convert("RGB"))  # (H, W, 3) uint8
        return index, torch.from_numpy(pixels).permute(2, 0, 1)


class _VAEEncoder(lightning.LightningModule):
    """``predict_step``: (index [B], uint8 [B, 3, H, W]) -> (index [B], float32 [B, 2C, H/8, W/8])."""

    def __init__(self, vae: torch.nn.Module, allow_tf32: bool) -> None:
        super().__init__()
        self.vae = vae
        self.allow_tf32 = allow_tf32
        self._tf32_before: tuple[bool, bool] | None = None

    def on_predict_start(self) -> None:
        # fp32 means fp32: cuDNN convolutions use TF32 by default; restored when prediction ends.
        self._tf32_before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32

    def on_predict_end(self) -> None:
        if self._tf32_before is not None:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self._tf32_before

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index, pixels = batch
        posterior = self.vae.encode(scale_to_unit(pixels)).latent_dist
        return index, torch.cat([posterior.mean, posterior.std], dim=1).float()


class _PartWriter(BasePredictionWriter):
    """Writes each rank's (index, latent) pairs to ``parts_dir`` in files of about ``part_bytes``.

    Files of rank r: ``part-rank{r:05d}-{k:06d}.latents.npy`` (float32 [n, C, H, W]) and then
    ``.index.npy`` (int64 [n]); an index file exists only beside a complete latents file.
    """

    def __init__(self, parts_dir: str, part_bytes: int = _PART_BYTES) -> None:
        super().__init__(write_interval="batch")
        self.parts_dir = parts_dir
        self.part_bytes = part_bytes
        self._launcher_pid = os.getpid()  # pickled as is into spawned ranks: "not me" there
        self._index: list[np.ndarray] = []
        self._latents: list[np.ndarray] = []
        self._buffered_bytes = 0
        self._parts = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        index, latents = prediction
        self._index.append(index.cpu().numpy().astype(np.int64))
        self._latents.append(latents.cpu().numpy())
        self._buffered_bytes += self._latents[-1].nbytes
        if self._buffered_bytes >= self.part_bytes:
            self._flush(trainer.global_rank)

    def _flush(self, rank: int) -> None:
        if not self._index:
            return
        stem = os.path.join(self.parts_dir, f"part-rank{rank:05d}-{self._parts:06d}")
        for suffix, arrays in ((".latents.npy", self._latents), (".index.npy", self._index)):
            with AtomicPath(stem + suffix) as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate(arrays), allow_pickle=False)
        self._parts += 1
        self._index, self._latents, self._buffered_bytes = [], [], 0

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._flush(trainer.global_rank)
        trainer.strategy.barrier("latent-parts-written")  # every part exists before anyone returns

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # A spawned rank that exits with its gloo group alive aborts now and then; Lightning
        # destroys only NCCL groups. Only ranks we launched own a group, never the caller.
        launched = os.getpid() != self._launcher_pid
        if launched and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _read_parts(parts_dir: pathlib.Path, count: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Memory-map the parts; return (latent arrays, part of item i, row of item i).

    Raises ``RuntimeError`` unless every index in [0, count) was encoded exactly once.
    """
    index_files = sorted(parts_dir.glob("part-rank*.index.npy"))
    latents = [np.load(str(f).replace(".index.npy", ".latents.npy"), mmap_mode="r") for f in index_files]
    indices = [np.load(f) for f in index_files]
    for f, idx, lat in zip(index_files, indices, latents):
        assert len(idx) == len(lat), (f, len(idx), len(lat))
    every = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    seen = np.bincount(every[(every >= 0) & (every < count)], minlength=count)
    if len(every) != count or (seen != 1).any():
        raise RuntimeError(
            f"the ranks encoded {len(every)} latents for {count} images ({int((seen == 0).sum())} missing, "
            f"{int((seen > 1).sum())} repeated); the latent zip is not written"
        )
    part = np.concatenate([np.full(len(idx), k, np.int64) for k, idx in enumerate(indices)])
    row = np.concatenate([np.arange(len(idx)) for idx in indices])
    order = np.argsort(every, kind="stable")  # item i is at (part[order[i]], row[order[i]])
    return latents, part[order], row[order]


# --- checks -----------------------------------------------------------------------------------


def check_latent_zip(
    path: str | os.PathLike[str],
    *,
    expected_items: int,
    labels: Sequence[int] | None = None,
    shape: tuple[int, ...] | None = None,
    hint: str = "delete it or rewrite it with --force",
) -> None:
    """Check that ``path`` is a complete latent zip: ``expected_items`` float32 ``.npy`` members.

    Members must be ``00000/img-mean-std-00000000.npy``, ... then ``dataset.json``; with
    ``labels``, its labels must equal them in order; the first member must be a float32 array
    with an even channel count (mean and std), of ``shape`` when given.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: It is not such a zip; the message names the file, the fault and ``hint``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")

    def bad(what: str) -> ValueError:
        return ValueError(f"{path} exists but {what}; {hint}")

    names = [member_name(i, LATENT_PREFIX, ".npy") for i in range(expected_items)]
    try:
        with zipfile.ZipFile(path) as zf:
            found = zf.namelist()
            if len(found) - 1 != expected_items:
                raise bad(f"holds {len(found) - 1} latents, expected {expected_items} (one per image)")
            if found != names + [_LABELS_MEMBER]:
                first = next(i for i, (a, b) in enumerate(zip(found, names + [_LABELS_MEMBER])) if a != b)
                raise bad(f"member {first} is {found[first]!r}, expected {(names + [_LABELS_MEMBER])[first]!r}")
            try:
                table = json.loads(read_zip_member(zf, _LABELS_MEMBER, max_bytes=DEFAULT_MAX_MEMBER_BYTES, source=str(path)))["labels"]
                found_labels = None if table is None else [(str(n), int(label)) for n, label in table]
            except (ValueError, KeyError, TypeError) as err:
                raise bad(f"its {_LABELS_MEMBER} is not EDM labels JSON ({err!r})") from err
            if labels is not None and found_labels != list(zip(names, (int(x) for x in labels))):
                raise bad(f"its {_LABELS_MEMBER} does not hold the image zip's labels in order")
            if expected_items:
                try:
                    data = read_zip_member(zf, names[0], max_bytes=DEFAULT_MAX_MEMBER_BYTES, source=str(path))
                    first_array = np.load(io.BytesIO(data), allow_pickle=False)
                except ValueError as err:
                    raise bad(f"its member {names[0]!r} is not a .npy array ({err})") from err
                if first_array.dtype != np.float32 or first_array.ndim != 3 or first_array.shape[0] % 2:
                    raise bad(f"holds {first_array.dtype} {first_array.shape} arrays, expected float32 (2C, H, W)")
                if shape is not None and first_array.shape != tuple(shape):
                    raise bad(f"holds {first_array.shape} latents, expected {tuple(shape)}")
    except (zipfile.BadZipFile, EOFError) as err:
        raise bad(f"is not a readable zip ({err}): truncated, damaged or not a zip") from err


# --- the conversion ---------------------------------------------------------------------------


def _validate_encoding(batch_size: int, precision: str, strategy: str, num_workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be an int >= 1, got {batch_size!r}")
    if precision not in _PRECISIONS:
        raise ValueError(f"--precision {precision!r} is unknown; use '32-true' (fp32) or 'bf16-mixed'")
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"strategy {strategy!r} is not supported; use 'auto' (one process, or ddp_spawn for several "
            "devices), 'ddp_spawn' or 'ddp_fork': the calling process must be the one that writes the zip"
        )
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"--loader-workers must be an int >= 0, got {num_workers!r}")


def _trainer(
    accelerator: str, devices: Any, strategy: str, precision: str, writer: _PartWriter, show_progress: bool, root: str
) -> lightning.Trainer:
    def build(chosen: str) -> lightning.Trainer:
        return lightning.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=chosen,
            num_nodes=1,
            precision=precision,
            callbacks=[writer],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=show_progress,
            default_root_dir=root,
        )

    trainer = build(strategy)
    if strategy == "auto" and trainer.num_devices > 1:
        # "auto" would pick "ddp", which relaunches the script once per device; spawning keeps
        # the calling process in charge of the zip.
        trainer = build("ddp_spawn")
    return trainer


def encode_latent_zip(
    image_zip: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    vae: str | os.PathLike[str] | torch.nn.Module = DEFAULT_VAE,
    batch_size: int = 64,
    devices: int | str | Sequence[int] = "auto",
    accelerator: str = "auto",
    strategy: Strategy = "auto",
    precision: Precision = "32-true",
    num_workers: int = 2,
    show_progress: bool = True,
) -> int:
    """Encode every image of an EDM image zip with a VAE into a latent EDM zip, in item order.

    Member ``i`` of ``output`` is ``00000/img-mean-std-0000000i.npy``: float32 (2C, H/8, W/8),
    the posterior mean of image ``i`` (scaled to [-1, 1]) then its std, with image ``i``'s
    label. The zip is written to a temporary name, checked (names, count, labels, shape) and
    renamed; a failure leaves nothing at ``output``. An existing ``output`` is replaced.

    Args:
        image_zip: EDM zip of labelled RGB PNGs, e.g. ``imagenet-256/imagenet-256x256.zip``.
        output: Destination zip, e.g. ``imagenet-256/imagenet_256_sd.zip``.
        vae: A local folder or hub name for :func:`load_vae`, or a loaded ``AutoencoderKL``.
        batch_size: Images per device per step.
        devices: Lightning's ``devices``: "auto" (every GPU, else 1 CPU process), a count such
            as 2, or a list of GPU ids such as [0, 1].
        accelerator: Lightning's ``accelerator``: "auto" (GPU when present), "gpu" or "cpu".
        strategy: "auto" runs one process, or "ddp_spawn" when ``devices`` gives several;
            "ddp_spawn" and "ddp_fork" as named. ("ddp" is refused: it relaunches the script.)
        precision: "32-true" (fp32 with TF32 off) or "bf16-mixed" (faster on GPUs, less exact).
        num_workers: DataLoader workers per device decoding PNGs; 0 decodes in the rank itself.
        show_progress: Show Lightning's progress bar.

    Returns:
        The number of latents written.
    """
    _validate_encoding(batch_size, precision, strategy, num_workers)
    image_zip, output = pathlib.Path(image_zip), pathlib.Path(output)
    labels = check_edm_zip(image_zip, hint="rewrite it with `fastgen prepare imagenet-256 --force`")
    count = len(labels)
    model = vae if isinstance(vae, torch.nn.Module) else load_vae(vae)
    output.parent.mkdir(parents=True, exist_ok=True)
    parts_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{output.name}.parts-", dir=output.parent))
    staged = AtomicPath(output)  # the zip, renamed into place once it reads back right
    try:
        writer = _PartWriter(str(parts_dir))
        trainer = _trainer(accelerator, devices, strategy, precision, writer, show_progress, str(parts_dir))
        loader = torch.utils.data.DataLoader(
            _ImageZipDataset(str(image_zip), count),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=False,
        )
        device = type(trainer.accelerator).__name__
        logger.info("encoding %d images of %s on %d device(s) (%s)", count, image_zip, trainer.num_devices, device)
        trainer.predict(_VAEEncoder(model, allow_tf32=precision != "32-true"), loader, return_predictions=False)
        assert trainer.is_global_zero  # the strategies allowed return only in the calling process
        latents, part, row = _read_parts(parts_dir, count)
        with EDMZipWriter(staged.tmp, member_prefix=LATENT_PREFIX) as zip_out:
            for i in range(count):
                zip_out.add_array(np.ascontiguousarray(latents[part[i]][row[i]]), labels[i])
        shape = latents[0].shape[1:]
        del latents  # close the memory maps before the folder goes
        check_latent_zip(
            staged.tmp,
            expected_items=count,
            labels=labels,
            shape=shape,
            hint="the zip just written does not match what was encoded (a disk or writer fault)",
        )
        staged.commit()
    finally:
        staged.discard()
        shutil.rmtree(parts_dir, ignore_errors=True)
    return count


@dataclass(frozen=True)
class ImageNet256Report:
    """What ``prepare_imagenet_256`` did.

    Args:
        images_zip: ``imagenet-256/imagenet-256x256.zip``.
        latents_zip: ``imagenet-256/imagenet_256_sd.zip``.
        written: The zips written by this run (the others existed and passed their check).
        images: Images (and latents) in the zips.
        bad: (path, reason) of each unreadable image left out (``on_bad_image="skip"``).
    """

    images_zip: pathlib.Path
    latents_zip: pathlib.Path
    written: tuple[pathlib.Path, ...]
    images: int
    bad: tuple[tuple[str, str], ...]


def prepare_imagenet_256(
    imagenet_source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    vae: str | os.PathLike[str] | torch.nn.Module = DEFAULT_VAE,
    batch_size: int = 64,
    devices: int | str | Sequence[int] = "auto",
    accelerator: str = "auto",
    precision: Precision = "32-true",
    workers: int | None = None,
    loader_workers: int = 2,
    force: bool = False,
    on_bad_image: BadImagePolicy = "fail",
    show_progress: bool = True,
) -> ImageNet256Report:
    """Write ``imagenet-256/imagenet-256x256.zip`` and then ``imagenet_256_sd.zip`` under ``output_dir``.

    An existing zip is checked, not trusted: the image zip as ``prepare_imagenet_64`` checks
    its zips (at 256x256), the latent zip for one latent per image with the image zip's labels.
    A zip that fails is an error (``force`` rewrites both). The latent zip is rewritten whenever
    the image zip is.

    Args:
        imagenet_source: The folder holding ``ILSVRC/Data/CLS-LOC/train``.
        output_dir: Data root; the zips go to ``<output_dir>/imagenet-256/``.
        vae: VAE folder or hub name (see :func:`load_vae`), or a loaded ``AutoencoderKL``.
        batch_size: Images per device per step of the encoding.
        devices: Lightning's ``devices`` for the encoding ("auto", a count, or GPU ids).
        accelerator: Lightning's ``accelerator`` ("auto": GPU when present).
        precision: "32-true" (fp32 with TF32 off, default) or "bf16-mixed".
        workers: JPEG decoding processes for the image zip; None uses every core.
        loader_workers: DataLoader workers per device while encoding.
        force: Rewrite existing zips.
        on_bad_image: "fail" or "skip" (see :func:`~fastgen_dm.prepare.imagenet.convert_imagenet`).
        show_progress: Show progress bars.
    """
    _validate_encoding(batch_size, precision, "auto", loader_workers)
    output_dir = pathlib.Path(output_dir)
    images_zip = output_dir / IMAGENET_256_OUTPUTS["images"]
    latents_zip = output_dir / IMAGENET_256_OUTPUTS["latents"]
    listing = list_imagenet_train(imagenet_source)
    if force or not (images_zip.exists() and latents_zip.exists()):
        vae = vae if isinstance(vae, torch.nn.Module) else load_vae(vae)  # fails before hours of JPEGs
    written: list[pathlib.Path] = []
    bad: tuple[tuple[str, str], ...] = ()
    if images_zip.exists() and not force:
        labels = check_edm_zip(
            images_zip,
            expected_images=len(listing) if on_bad_image == "fail" else None,
            max_images=len(listing),
            resolution=_RESOLUTION,
            hint="delete it, or rewrite it with `fastgen prepare imagenet-256 --force` (force=True); "
            "a zip written with --on-bad-image skip is checked only with that option",
        )
        logger.info("%s exists and passed its check; kept", images_zip)
    else:
        report = convert_imagenet(
            listing,
            {"center-crop-dhariwal": images_zip},
            resolution=_RESOLUTION,
            workers=workers,
            on_bad_image=on_bad_image,
            show_progress=show_progress,
        )
        written.append(images_zip)
        bad = report.bad
        labels = check_edm_zip(images_zip)
    if latents_zip.exists() and not force and not written:
        check_latent_zip(
            latents_zip,
            expected_items=len(labels),
            labels=labels,
            hint="delete it, or rewrite it with `fastgen prepare imagenet-256 --force` (force=True)",
        )
        logger.info("%s exists and passed its check; kept", latents_zip)
    else:
        encode_latent_zip(
            images_zip,
            latents_zip,
            vae=vae,
            batch_size=batch_size,
            devices=devices,
            accelerator=accelerator,
            precision=precision,
            num_workers=loader_workers,
            show_progress=show_progress,
        )
        written.append(latents_zip)
    return ImageNet256Report(images_zip, latents_zip, tuple(written), len(labels), bad)
