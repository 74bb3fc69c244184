"""CIFAR-10 to EDM's zip format, as EDM's ``dataset_tool.py --source=cifar-10-python.tar.gz`` does.

The source is the official ``cifar-10-python.tar.gz`` (MD5 ``c58f30108f718f92721af3b95e74349a``),
downloaded when not given. Its training set is five Python-2 pickles,
``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5``, each a dict with ``data`` (uint8 of
shape (10000, 3072): the R, G and B planes of a 32x32 image, one row per image) and ``labels``
(10000 ints in 0..9). Item ``i`` of the zip is image ``i`` in batch order::

    data_batch_1 rows 0..9999  -> 00000/img00000000.png ... 00009/img00009999.png
    data_batch_2 row 0         -> 00010/img00010000.png
    ...
    dataset.json               -> {"labels": [["00000/img00000000.png", 6], ...]}

Safety: the archive's MD5 is checked first; the pickles are then read with
:class:`RestrictedUnpickler`, which admits only the globals numpy needs to rebuild an array and
refuses anything else before it can run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import pickle
import tarfile
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from fastgen_dm.prepare.zip_check import VerifiedEDMZip, check_edm_zip

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_TRAIN_IMAGES",
    "CIFAR10_URL",
    "RestrictedUnpickler",
    "convert_cifar10",
    "download_cifar10",
    "prepare_cifar10",
]

logger = logging.getLogger(__name__)

# Read when called (not bound as default values), so tests can point them at a small local archive.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TRAIN_IMAGES = 50_000
CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR10_ZIP_NAME = "cifar10-32x32.zip"  # under <output dir>/cifar10/

_BATCHES = tuple(f"cifar-10-batches-py/data_batch_{k}" for k in range(1, 6))
_SIDE = 32
_NUM_CLASSES = 10
_MD5_CHUNK_BYTES = 8 << 20

try:  # numpy >= 2 moved the module; pickles written by either name it either way
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to what Python 3 writes for bytes in protocol-2 pickles."""
    if encoding != "latin1" or errors != "strict" or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"refusing _codecs.encode({type(text).__name__}, {encoding!r}, {errors!r}): only latin1 text is admitted"
        )
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, numbers, strings and numpy arrays, and nothing else.

    Admitted globals (every other one raises :class:`pickle.UnpicklingError` naming it, before
    any code it names can run):

    - ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
      ``numpy.ndarray``, ``numpy.dtype``: how numpy pickles an array (the official CIFAR-10
      pickles, written by Python 2, name ``numpy.core.multiarray``).
    - ``_codecs.encode``, for latin1 text only: how Python 3 writes ``bytes`` at protocol 2.

    Example::

        RestrictedUnpickler(file, encoding="latin1").load()  # {'data': array(...), 'labels': [...]}
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: this pickle may only hold builtins "
                "and numpy arrays, so it is not a CIFAR-10 batch (it could run code when loaded)"
            ) from None


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in 8 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_MD5_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: pathlib.Path, expected_md5: str) -> None:
    actual = file_md5(path)
    if actual != expected_md5.lower():
        raise ValueError(
            f"{path} has MD5 {actual}, but the official CIFAR-10 archive ({CIFAR10_ARCHIVE_NAME}) has "
            f"{expected_md5}; the file is damaged, incomplete or not that archive. Delete it and download "
            f"it again from {CIFAR10_URL}"
        )


def _load_batch(tar: tarfile.TarFile, member: str, archive: pathlib.Path) -> tuple[np.ndarray, list[int]]:
    """One training batch: images uint8 (N, 32, 32, 3) and labels, as EDM's ``open_cifar10`` reads them."""
    try:
        info = tar.getmember(member)
    except KeyError:
        raise ValueError(f"{archive} has no member {member!r}; it is not the CIFAR-10 python archive") from None
    file: BinaryIO | None = tar.extractfile(info)
    if file is None:
        raise ValueError(f"{archive}: member {member!r} is not a regular file")
    with file:
        try:
            batch = RestrictedUnpickler(file, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{archive}: {member}: {err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{archive}: {member} holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    # Python-2 keys load as str with encoding="latin1"; Python-3 protocol-2 ones as bytes.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    row_bytes = 3 * _SIDE * _SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row_bytes:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{archive}: {member}['data'] is {what}; expected uint8 of shape (N, {row_bytes})")
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(data):
        raise ValueError(f"{archive}: {member}['labels'] does not hold one label for each of its {len(data)} images")
    labels = [int(x) for x in labels]
    if any(not 0 <= x < _NUM_CLASSES for x in labels):
        raise ValueError(f"{archive}: {member}['labels'] holds labels outside 0..{_NUM_CLASSES - 1}")
    # (N, 3072) -> (N, 3, 32, 32): planes R, G, B -> (N, 32, 32, 3), as EDM transposes NCHW -> NHWC
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, labels


def convert_cifar10(
    archive: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    expected_md5: str | None = None,
    expected_images: int | None = None,
    show_progress: bool = True,
) -> pathlib.Path:
    """Write the CIFAR-10 training set of ``archive`` as an EDM zip at ``output_path``.

    The archive's MD5 is checked before anything is read from it; the zip is written to a
    temporary name, re-opened and checked (member names, order, labels), then renamed.

    Args:
        archive: Local ``cifar-10-python.tar.gz``.
        output_path: The zip to write (``.../cifar10/cifar10-32x32.zip``); replaced if present.
        expected_md5: Required MD5 of ``archive``; None uses :data:`CIFAR10_MD5` (the official one).
        expected_images: Required image count; None uses :data:`CIFAR10_TRAIN_IMAGES` (50000).
        show_progress: Show a tqdm bar while writing.

    Returns:
        ``output_path``.

    Raises:
        ValueError: Wrong MD5, or the archive does not hold the CIFAR-10 batches as expected.
        pickle.UnpicklingError: A batch names a global other than numpy's array reconstruction.
    """
    archive = pathlib.Path(archive)
    output_path = pathlib.Path(output_path)
    expected_md5 = CIFAR10_MD5 if expected_md5 is None else expected_md5
    expected_images = CIFAR10_TRAIN_IMAGES if expected_images is None else expected_images
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive {str(archive)!r} does not exist")
    _check_md5(archive, expected_md5)  # before any byte of it is unpickled

    with tarfile.open(archive, "r:gz") as tar:
        batches = [_load_batch(tar, member, archive) for member in _BATCHES]
    total = sum(len(labels) for _, labels in batches)
    if total != expected_images:
        raise ValueError(f"{archive} holds {total} training images; CIFAR-10 has {expected_images}")

    with VerifiedEDMZip(output_path, resolution=_SIDE) as zip_out, tqdm(
        total=total, unit="img", desc=f"write {output_path.name}", disable=not show_progress
    ) as bar:
        for images, labels in batches:
            for image, label in zip(images, labels):
                zip_out.add_image(np.ascontiguousarray(image), label)
            bar.update(len(labels))
    logger.info("wrote %d CIFAR-10 images to %s", total, output_path)
    return output_path


def download_cifar10(
    dest: str | os.PathLike[str],
    *,
    url: str | None = None,
    expected_md5: str | None = None,
    show_progress: bool = True,
) -> pathlib.Path:
    """Fetch the CIFAR-10 archive to ``dest`` (atomically; kept for later runs) and check its MD5.

    An existing ``dest`` is not fetched again, only checked. A downloaded file with the wrong
    MD5 is deleted (so the next run fetches it again) and reported.

    Args:
        dest: Local file to hold the archive.
        url: Where to fetch it (any fsspec URL); None uses :data:`CIFAR10_URL`.
        expected_md5: None uses :data:`CIFAR10_MD5`.
        show_progress: Show a tqdm bar while fetching.
    """
    from fastgen_dm.storage import fetch_once

    dest = pathlib.Path(dest)
    url = CIFAR10_URL if url is None else url
    expected_md5 = CIFAR10_MD5 if expected_md5 is None else expected_md5
    fetched = not dest.exists()
    if fetched:
        logger.info("downloading CIFAR-10 from %s to %s", url, dest)
    fetch_once(url, dest, show_progress=show_progress)
    try:
        _check_md5(dest, expected_md5)
    except ValueError:
        dest.unlink(missing_ok=True)  # a damaged download must not be trusted on the next run
        raise
    return dest


def prepare_cifar10(
    output_path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    force: bool = False,
    url: str | None = None,
    expected_md5: str | None = None,
    expected_images: int | None = None,
    show_progress: bool = True,
) -> pathlib.Path:
    """Make sure ``output_path`` holds the CIFAR-10 EDM zip: check an existing one, else write it.

    Args:
        output_path: The zip (``fastgen prepare cifar10`` uses ``<output dir>/cifar10/cifar10-32x32.zip``).
        source: Local ``cifar-10-python.tar.gz``; None downloads it from ``url`` to
            ``cifar-10-python.tar.gz`` beside ``output_path`` (kept, so a rerun does not fetch again).
        force: Rewrite ``output_path`` even when it exists; without it an existing zip is
            checked (readable, 50000 labelled 32x32 images in EDM's layout) and kept, and a bad
            one is an error.
        url: Download URL; None uses :data:`CIFAR10_URL`.
        expected_md5: None uses :data:`CIFAR10_MD5`.
        expected_images: None uses :data:`CIFAR10_TRAIN_IMAGES`.
        show_progress: Show progress bars.

    Returns:
        ``output_path``.

    Raises:
        ValueError: An existing ``output_path`` is not a complete CIFAR-10 zip (and not ``force``),
            or the archive fails its MD5 or content checks.
    """
    output_path = pathlib.Path(output_path)
    expected_images = CIFAR10_TRAIN_IMAGES if expected_images is None else expected_images
    if output_path.exists() and not force:
        check_edm_zip(
            output_path, expected_images=expected_images, resolution=_SIDE, check_crc=True,
            hint="delete it, or rewrite it with `fastgen prepare cifar10 --force` (force=True)",
        )  # fmt: skip
        logger.info("%s exists and holds %d labelled CIFAR-10 images", output_path, expected_images)
        return output_path
    if source is None:
        archive = download_cifar10(
            output_path.with_name(CIFAR10_ARCHIVE_NAME), url=url, expected_md5=expected_md5, show_progress=show_progress
        )
    else:
        archive = pathlib.Path(source)
    return convert_cifar10(
        archive, output_path, expected_md5=expected_md5, expected_images=expected_images, show_progress=show_progress
    )
