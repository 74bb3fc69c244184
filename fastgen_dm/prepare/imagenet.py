"""ImageNet (ILSVRC 2012 train) to 64x64 EDM zips, with EDM's and ADM/EDM2's center crops.

Source layout (as unpacked from Kaggle or image-net.org)::

    DIR/ILSVRC/Data/CLS-LOC/train/n01440764/n01440764_10026.JPEG
    DIR/ILSVRC/Data/CLS-LOC/train/n01440764/...
    DIR/ILSVRC/Data/CLS-LOC/train/n01443537/...

Files are taken in path order; an image's label is the index of its wnid folder among the sorted
wnids (n01440764 -> 0, n01443537 -> 1, ...), as EDM's ``dataset_tool.py`` derives labels from
top-level folder names. Item ``i`` of each zip is the ``i``-th file.

Outputs of ``fastgen prepare imagenet-64`` (both written in one pass, each JPEG decoded once):

- ``imagenet-64/imagenet-64x64.zip``: EDM's ``--transform=center-crop`` at 64
  (:func:`center_crop_edm`), read by ``ImageNet64DataModule``.
- ``imagenet-64/imagenet-64x64-edmv2.zip``: ADM's / EDM2's ``--transform=center-crop-dhariwal``
  at 64 (:func:`center_crop_dhariwal`), read by ``ImageNet64EDMv2DataModule``.

Images are decoded, cropped and PNG-encoded by a ``multiprocessing`` pool (``imap`` keeps the
order, so the zips' bytes do not depend on the number of workers); the main process only writes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import PIL.Image
from tqdm import tqdm

from fastgen_dm.decode import open_image
from fastgen_dm.format import is_image_name
from fastgen_dm.prepare.zip_check import VerifiedEDMZip, check_edm_zip, encode_png

__all__ = [
    "BadImageError",
    "ImageNetListing",
    "ImageNetReport",
    "center_crop_dhariwal",
    "center_crop_edm",
    "convert_imagenet",
    "list_imagenet_train",
    "prepare_imagenet_64",
]

logger = logging.getLogger(__name__)

CropName = Literal["center-crop", "center-crop-dhariwal"]
BadImagePolicy = Literal["skip", "fail"]

TRAIN_SUBDIR = pathlib.PurePosixPath("ILSVRC/Data/CLS-LOC/train")
#: Where ``prepare_imagenet_64`` writes each crop, under the output directory.
IMAGENET_64_OUTPUTS: dict[str, str] = {
    "center-crop": "imagenet-64/imagenet-64x64.zip",
    "center-crop-dhariwal": "imagenet-64/imagenet-64x64-edmv2.zip",
}
_MAX_CHUNK = 64  # images per imap task: large enough to amortize IPC, small enough to balance load


class BadImageError(ValueError):
    """An ImageNet file could not be decoded and ``on_bad_image`` is "fail"."""


# --- the crops (pure: PIL image in, PIL image out) --------------------------------------------


def _rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    # Grayscale ("L") and CMYK JPEGs exist in ImageNet; converting first gives 3 channels to crop.
    return img if img.mode == "RGB" else img.convert("RGB")


def center_crop_edm(img: PIL.Image.Image, res: int) -> PIL.Image.Image:
    """EDM's ``center-crop``: the centered square of side min(W, H), then one Lanczos resize.

    Example: a 97x61 (WxH) image is cropped to x in [18, 79), y in [0, 61) (61x61), then resized
    to res x res. The crop comes first: resizing with a ``box`` would filter across its edges.

    Args:
        img: Any PIL image; converted to RGB first.
        res: Output side in pixels.

    Returns:
        An RGB image of size (res, res).
    """
    img = _rgb(img)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((res, res), PIL.Image.Resampling.LANCZOS)


def center_crop_dhariwal(img: PIL.Image.Image, res: int) -> PIL.Image.Image:
    """ADM's (EDM2's ``center-crop-dhariwal``) crop at side ``res``.

    While min(W, H) >= 2 res, halve both sides (floor) with BOX; then resize with BICUBIC so the
    short side is ``res`` (each side ``round(side * res / short)``, Python's round); then take the
    centered res x res square. Example at res 64: 300x200 -> BOX 150x100 -> BICUBIC 96x64 ->
    crop x in [16, 80).

    Args:
        img: Any PIL image; converted to RGB first.
        res: Output side in pixels.

    Returns:
        An RGB image of size (res, res).
    """
    img = _rgb(img)
    while min(img.size) >= 2 * res:
        img = img.resize(tuple(x // 2 for x in img.size), resample=PIL.Image.Resampling.BOX)
    scale = res / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=PIL.Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - res) // 2, (h - res) // 2
    return img.crop((left, top, left + res, top + res))


_CROPS: dict[str, Callable[[PIL.Image.Image, int], PIL.Image.Image]] = {
    "center-crop": center_crop_edm,
    "center-crop-dhariwal": center_crop_dhariwal,
}


# --- the source -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageNetListing:
    """The training images of an ImageNet tree, in order.

    Args:
        train_dir: ``DIR/ILSVRC/Data/CLS-LOC/train``.
        wnids: Class folder names, sorted; label ``k`` is ``wnids[k]``.
        files: Image paths sorted by (wnid, file name), i.e. by path.
        labels: ``labels[i]`` is the label of ``files[i]``.
    """

    train_dir: pathlib.Path
    wnids: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)


def list_imagenet_train(imagenet_source: str | os.PathLike[str]) -> ImageNetListing:
    """List ``imagenet_source/ILSVRC/Data/CLS-LOC/train/<wnid>/*`` images (by extension, as EDM).

    Raises:
        FileNotFoundError: The train folder is missing.
        ValueError: It holds no images.
    """
    root = pathlib.Path(imagenet_source)
    train_dir = root / TRAIN_SUBDIR
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"--imagenet-source {str(root)!r}: {train_dir} is not a folder; pass the folder that holds "
            f"ILSVRC/ (the ImageNet train images are under {TRAIN_SUBDIR}/<wnid>/*.JPEG)"
        )
    per_wnid: dict[str, list[str]] = {}
    with os.scandir(train_dir) as entries:
        for entry in entries:
            if entry.is_dir():
                with os.scandir(entry.path) as files:
                    names = [f.name for f in files if f.is_file() and is_image_name(f.name)]
                if names:  # as EDM: labels come from the folders that hold images
                    per_wnid[entry.name] = sorted(names)
    if not per_wnid:
        raise ValueError(f"{train_dir} holds no <wnid>/ folders of images; is --imagenet-source the ImageNet root?")
    wnids = tuple(sorted(per_wnid))
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        files.extend(str(train_dir / wnid / name) for name in per_wnid[wnid])
        labels.extend([label] * len(per_wnid[wnid]))
    return ImageNetListing(train_dir, wnids, tuple(files), tuple(labels))


# --- the conversion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageNetReport:
    """What a conversion did.

    Args:
        outputs: Crop name -> zip path, for every zip written or found valid.
        written: The zips written by this run (the others existed and passed their check).
        images: Images in each written zip (0 when none was written).
        bad: (path, reason) of each unreadable image left out (``on_bad_image="skip"``).
    """

    outputs: dict[str, pathlib.Path]
    written: tuple[pathlib.Path, ...]
    images: int
    bad: tuple[tuple[str, str], ...]


def _crop_file(path: str, crops: tuple[str, ...], res: int) -> tuple[list[bytes] | None, str | None]:
    """Decode one file, apply each crop, encode each as EDM's PNG: (PNGs, None) or (None, reason).

    Encoding here, in the worker, keeps the main process (which only writes) off the critical path.
    """
    try:
        with open_image(path) as image:  # closing destroys the pixels: crop inside
            rgb = _rgb(image)
            rgb.load()  # decodes now: a truncated or corrupt file fails here, inside the try
            return [encode_png(_CROPS[crop](rgb, res)) for crop in crops], None
    except Exception as err:  # any decode failure makes the file a bad image, handled by the policy
        return None, f"{type(err).__name__}: {err}"


def _validate(outputs: Mapping[str, object], resolution: int, workers: int, on_bad_image: str) -> None:
    if not outputs:
        raise ValueError(f"outputs is empty; map at least one crop of {sorted(_CROPS)} to a zip path")
    for crop in outputs:
        if crop not in _CROPS:
            raise ValueError(f"crop {crop!r} is unknown; use 'center-crop' or 'center-crop-dhariwal'")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an int >= 1, got {resolution!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an int >= 1, got {workers!r}")
    if on_bad_image not in ("skip", "fail"):
        raise ValueError(f"--on-bad-image {on_bad_image!r} is unknown; use 'skip' or 'fail'")


def _results(
    files: Sequence[str], crops: tuple[str, ...], res: int, workers: int, stack: contextlib.ExitStack
) -> Iterator[tuple[list[bytes] | None, str | None]]:
    work = functools.partial(_crop_file, crops=crops, res=res)
    if workers == 1:
        return map(work, files)
    chunksize = max(1, min(_MAX_CHUNK, len(files) // (workers * 8)))
    pool = stack.enter_context(multiprocessing.get_context().Pool(workers))  # terminated on exit
    return pool.imap(work, files, chunksize=chunksize)


def convert_imagenet(
    imagenet_source: str | os.PathLike[str] | ImageNetListing,
    outputs: Mapping[CropName, str | os.PathLike[str]],
    *,
    resolution: int = 64,
    workers: int | None = None,
    on_bad_image: BadImagePolicy = "fail",
    show_progress: bool = True,
) -> ImageNetReport:
    """Write the ImageNet training images as EDM zips, one per crop, in one pass over the JPEGs.

    Each zip is written to a temporary name, re-opened and checked (member names, order,
    labels, size), then renamed; an error leaves no partial output.

    Args:
        imagenet_source: The folder holding ``ILSVRC/Data/CLS-LOC/train``, or its listing.
        outputs: Crop -> zip path, e.g. ``{"center-crop": ".../imagenet-64x64.zip"}``; crops are
            "center-crop" (EDM) and "center-crop-dhariwal" (ADM / EDM2).
        resolution: Output side in pixels.
        workers: Decoding processes; None uses every core (``os.cpu_count()``); 1 decodes in
            this process. The output bytes are the same for any number.
        on_bad_image: What an unreadable image does: "fail" stops with :class:`BadImageError`
            naming it; "skip" leaves it out of every zip and lists it in the report.
        show_progress: Show a tqdm bar (images, rate, ETA).

    Returns:
        An :class:`ImageNetReport`.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    _validate(outputs, resolution, workers, on_bad_image)
    listing = imagenet_source if isinstance(imagenet_source, ImageNetListing) else list_imagenet_train(imagenet_source)
    crops = tuple(outputs)
    paths = {crop: pathlib.Path(outputs[crop]) for crop in crops}
    bad: list[tuple[str, str]] = []
    logger.info("converting %d ImageNet images from %s with %d workers", len(listing), listing.train_dir, workers)
    with contextlib.ExitStack() as stack:
        zips = [stack.enter_context(VerifiedEDMZip(paths[crop], resolution)) for crop in crops]
        bar = stack.enter_context(tqdm(total=len(listing), unit="img", desc="imagenet", disable=not show_progress))
        results = _results(listing.files, crops, resolution, workers, stack)
        for path, label, (pngs, reason) in zip(listing.files, listing.labels, results):
            bar.update(1)
            if pngs is None:
                assert reason is not None
                if on_bad_image == "fail":
                    raise BadImageError(
                        f"cannot read the image {path} ({reason}); fix or remove it, or pass "
                        "--on-bad-image skip (on_bad_image='skip') to leave it out"
                    )
                bad.append((path, reason))
                bar.set_postfix(bad=len(bad))
                continue
            for zip_out, png in zip(zips, pngs):
                zip_out.add_png(png, label, (resolution, resolution))
        if not zips[0].count:
            raise ValueError(f"none of the {len(listing)} images under {listing.train_dir} could be read")
    if bad:
        logger.warning("left out %d unreadable images, e.g. %s (%s)", len(bad), *bad[0])
    return ImageNetReport(paths, tuple(paths.values()), len(listing) - len(bad), tuple(bad))


def prepare_imagenet_64(
    imagenet_source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    force: bool = False,
    on_bad_image: BadImagePolicy = "fail",
    show_progress: bool = True,
) -> ImageNetReport:
    """Write ``imagenet-64/imagenet-64x64.zip`` and ``imagenet-64x64-edmv2.zip`` under ``output_dir``.

    An existing zip is checked, not trusted: it must be readable, in EDM's layout, labelled, of
    64x64 images, and hold one image per source file (at most that many with ``skip``); then it
    is kept, else it is an error (``force`` rewrites it). Only missing zips are written.

    Args:
        imagenet_source: The folder holding ``ILSVRC/Data/CLS-LOC/train``.
        output_dir: Data root; the zips go to ``<output_dir>/imagenet-64/``.
        workers: Decoding processes; None uses every core.
        force: Rewrite existing zips.
        on_bad_image: "fail" or "skip" (see :func:`convert_imagenet`).
        show_progress: Show a tqdm bar.
    """
    output_dir = pathlib.Path(output_dir)
    listing = list_imagenet_train(imagenet_source)
    outputs = {crop: output_dir / rel for crop, rel in IMAGENET_64_OUTPUTS.items()}
    missing: dict[str, pathlib.Path] = {}
    for crop, path in outputs.items():
        if path.exists() and not force:
            check_edm_zip(
                path,
                expected_images=len(listing) if on_bad_image == "fail" else None,
                max_images=len(listing),
                resolution=64,
                hint="delete it, or rewrite it with `fastgen prepare imagenet-64 --force` (force=True); "
                "a zip written with --on-bad-image skip is checked only with that option",
            )
            logger.info("%s exists and passed its check; kept", path)
        else:
            missing[crop] = path
    if not missing:
        return ImageNetReport(outputs, (), 0, ())
    report = convert_imagenet(
        listing, missing, resolution=64, workers=workers, on_bad_image=on_bad_image, show_progress=show_progress
    )
    return ImageNetReport(outputs, report.written, report.images, report.bad)
