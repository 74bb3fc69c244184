"""Write datasets in EDM's zip format, byte-compatible with EDM's ``dataset_tool.py``.

Layout of a zip with three labelled images (every member stored uncompressed)::

    00000/img00000000.png
    00000/img00000001.png
    00000/img00000002.png
    dataset.json            # last: {"labels": [["00000/img00000000.png", 6], ...]}

Item ``i`` is named from its 8-digit index, whose first 5 digits are the folder, so each folder
holds 1000 items: item 1000 is ``00001/img00001000.png``. Without labels ``dataset.json`` holds
``{"labels": null}``. Latent datasets (EDM2's ``imagenet_256_sd.zip``) hold ``.npy`` members
instead, such as ``00000/img-mean-std-00000000.npy``.

Example::

    with EDMZipWriter("cifar10-32x32.zip") as writer:
        for image, label in samples:
            writer.add_image(image, label)  # uint8 HWC array or PIL Image

The zip is written to a temporary file next to ``path`` and renamed to ``path`` only when the
``with`` block ends without an exception, so ``path`` never holds a partial dataset.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile
from types import TracebackType

import numpy as np
import PIL.Image

from fastgen_dm.storage import AtomicPath

__all__ = ["EDMZipWriter", "member_name"]

# A fixed member timestamp (the earliest a zip can hold) makes the zip's bytes a function of its
# content alone. EDM stamps members with the current time; readers ignore it.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_Signature = tuple[str, tuple[int, ...], str]  # (kind "png" | "npy", shape, dtype), per item


def member_name(index: int, member_prefix: str = "img", suffix: str = ".png") -> str:
    """Name of item ``index`` inside an EDM zip.

    Args:
        index: Item index, >= 0.
        member_prefix: Stem before the 8-digit index ("img" for images, "img-mean-std" for
            EDM2 latents).
        suffix: File extension, with its dot.

    Returns:
        For example ``member_name(1000)`` is ``"00001/img00001000.png"`` and
        ``member_name(7, "img-mean-std", ".npy")`` is ``"00000/img-mean-std-00000007.npy"``.
    """
    assert index >= 0, index
    digits = f"{index:08d}"
    separator = "-" if member_prefix != "img" and not member_prefix.endswith("-") else ""
    return f"{digits[:5]}/{member_prefix}{separator}{digits}{suffix}"


def png_bytes(pil: PIL.Image.Image) -> bytes:
    """A PNG encoded as EDM's dataset tool encodes it (``compress_level=0``, no optimization)."""
    buffer = io.BytesIO()
    pil.save(buffer, format="png", compress_level=0, optimize=False)
    return buffer.getvalue()


class EDMZipWriter:
    """Context manager that writes an EDM-format zip of PNG images or ``.npy`` arrays.

    Every item has a label or none does. All items have the same shape (and, for arrays, dtype),
    as EDM's readers expect; images and arrays cannot be mixed in one zip.

    Args:
        path: Destination zip file. Parent folders are created. An existing file is replaced
            when the ``with`` block succeeds.
        member_prefix: Member stem before the index. "img" is joined directly
            (``00000/img00000000.png``); any other stem is joined with "-" unless it already ends
            with one: "img-mean-std" (EDM2 latents) gives ``00000/img-mean-std-00000000.npy``.
    """

    def __init__(self, path: str | os.PathLike[str], member_prefix: str = "img") -> None:
        if not isinstance(member_prefix, str) or not member_prefix:
            raise ValueError(f"member_prefix must be a non-empty string, got {member_prefix!r}")
        if any(c in member_prefix for c in "/\\\0") or member_prefix in (".", ".."):
            raise ValueError(
                f"member_prefix must be a file name stem without '/', '\\\\' or NUL, "
                f"got {member_prefix!r}"
            )
        self._path = pathlib.Path(path)
        self._atomic = AtomicPath(self._path)
        self._member_prefix = member_prefix
        self._zip: zipfile.ZipFile | None = None
        self._used = False
        self._labels: list[list[str | int]] = []  # [[member name, label], ...]
        self._count = 0
        self._has_labels: bool | None = None  # set by the first item
        self._signature: _Signature | None = None  # of the first item; all must match

    @property
    def path(self) -> pathlib.Path:
        """The destination zip file (written when the ``with`` block succeeds)."""
        return self._path

    @property
    def count(self) -> int:
        """Number of items added so far."""
        return self._count

    def __enter__(self) -> EDMZipWriter:
        if self._used:
            raise RuntimeError(f"EDMZipWriter for {str(self._path)!r} can be entered only once")
        self._used = True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._zip = zipfile.ZipFile(self._atomic.tmp, mode="w", compression=zipfile.ZIP_STORED)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._zip is not None
        zf, self._zip = self._zip, None
        try:
            if exc_type is None:  # EDM writes dataset.json last
                labels = self._labels if self._has_labels else None
                self._write_member(zf, "dataset.json", json.dumps({"labels": labels}).encode())
                zf.close()
                self._atomic.commit()
        finally:  # on any failure, the caller's or ours: no partial file is left behind
            zf.close()  # a no-op once closed
            self._atomic.discard()

    def add_image(self, img: np.ndarray | PIL.Image.Image, label: int | None = None) -> int:
        """Append an image as a PNG member, encoded as EDM does (``compress_level=0``).

        Args:
            img: uint8 array of shape (H, W, 3), (H, W, 1) or (H, W), or a PIL Image in mode
                "RGB" or "L".
            label: Class index >= 0, or None for an unlabelled dataset.

        Returns:
            The item's index.
        """
        if isinstance(img, PIL.Image.Image):
            if img.mode not in ("RGB", "L"):
                raise ValueError(
                    f"img must be a PIL Image in mode 'RGB' or 'L', got mode {img.mode!r}; "
                    f"pass img.convert('RGB')"
                )
            pil = img
        elif isinstance(img, np.ndarray):
            if img.dtype != np.uint8:
                raise ValueError(f"img must be a uint8 array, got dtype {img.dtype}")
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
                raise ValueError(
                    f"img must have shape (H, W, 3), (H, W, 1) or (H, W), got {img.shape}"
                )
            pil = PIL.Image.fromarray(img, "L" if img.ndim == 2 else "RGB")
        else:
            raise TypeError(f"img must be a numpy array or a PIL Image, got {type(img).__name__}")
        channels = 3 if pil.mode == "RGB" else 1
        signature = self._check_item("png", (pil.height, pil.width, channels), "uint8", label)
        return self._add(".png", png_bytes(pil), label, signature)

    def add_png_bytes(self, png: bytes, label: int | None, shape: tuple[int, int, int]) -> int:
        """Add a PNG encoded elsewhere (e.g. in a worker process) exactly as :meth:`add_image` encodes.

        Args:
            png: The PNG file's bytes, from :func:`encode_png`.
            label: Class index >= 0, or None for an unlabelled dataset.
            shape: (height, width, channels) of the image, checked against the other items.
        """
        return self._add(".png", png, label, self._check_item("png", shape, "uint8", label))

    def add_array(self, array: np.ndarray, label: int | None = None) -> int:
        """Append an array as a ``.npy`` member (``np.save`` with ``allow_pickle=False``).

        Args:
            array: Numeric array, for example float32 (8, 32, 32): a latent's mean and std
                concatenated on channels.
            label: Class index >= 0, or None for an unlabelled dataset.

        Returns:
            The item's index.
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"array must be a numpy array, got {type(array).__name__}")
        if array.dtype.hasobject:
            raise ValueError(f"array must not hold Python objects, got dtype {array.dtype}")
        signature = self._check_item("npy", array.shape, array.dtype.str, label)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self._add(".npy", buffer.getvalue(), label, signature)

    def _check_item(
        self, kind: str, shape: tuple[int, ...], dtype: str, label: int | None
    ) -> _Signature:
        """Validate the next item against the writer's state; return its signature."""
        if self._zip is None:
            raise RuntimeError("EDMZipWriter accepts items only inside its 'with' block")
        index = self._count
        if label is not None:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise ValueError(
                    f"label must be an int >= 0 or None, got {label!r} (index {index})"
                )
        if self._has_labels is not None and self._has_labels != (label is not None):
            raise ValueError(
                f"label is {label!r} at index {index}, but earlier items were "
                f"{'labelled' if self._has_labels else 'unlabelled'}; label every item or none"
            )
        signature = (kind, tuple(int(s) for s in shape), dtype)
        if self._signature is not None and signature != self._signature:
            raise ValueError(
                f"item at index {index} is {kind} {signature[1]} {dtype}, but earlier items are "
                f"{self._signature[0]} {self._signature[1]} {self._signature[2]}; "
                f"every item in a zip must match"
            )
        return signature

    def _add(self, suffix: str, data: bytes, label: int | None, signature: _Signature) -> int:
        assert self._zip is not None
        index = self._count
        name = member_name(index, self._member_prefix, suffix)
        self._write_member(self._zip, name, data)
        if label is not None:
            self._labels.append([name, int(label)])
        if self._signature is None:  # the first item decides for the rest
            self._signature = signature
            self._has_labels = label is not None
        self._count += 1
        return index

    @staticmethod
    def _write_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16  # what ZipFile.writestr gives a member named by str
        zf.writestr(info, data)
