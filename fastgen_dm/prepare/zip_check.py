"""Check EDM zips that ``fastgen prepare`` writes or finds: before the rename, and on later runs.

Two uses:

- :class:`VerifiedEDMZip` writes through :class:`EDMZipWriter` to a staging name, re-opens the
  finished zip, checks its member names, order and labels against what was added, and only
  then renames it to the destination. A failed check leaves nothing at the destination.
- :func:`check_edm_zip` checks an existing output before a run trusts it: it must open as a zip,
  hold exactly the members EDM's layout gives its image count (``00000/img00000000.png``, ...,
  then ``dataset.json``), a label for every image, and images of the expected side. A truncated
  file (no central directory) or a foreign zip fails with an error that suggests ``--force``.

No manifest member is added: EDM readers list every image member, and a ``.json`` manifest would
be read by nobody; re-opening the staged zip checks the same things without changing the format.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
from types import TracebackType

import numpy as np
import PIL.Image

from fastgen_dm.decode import open_image
from fastgen_dm.prepare.edm_zip import EDMZipWriter, member_name, png_bytes
from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES, AtomicPath, read_zip_member

__all__ = ["VerifiedEDMZip", "check_edm_zip", "encode_png"]

_LABELS_MEMBER = "dataset.json"


def check_edm_zip(
    path: str | os.PathLike[str],
    *,
    expected_images: int | None = None,
    max_images: int | None = None,
    resolution: int | None = None,
    check_crc: bool = False,
    hint: str = "delete it or rewrite it with --force",
) -> list[int]:
    """Check that ``path`` is a complete, labelled EDM image zip; return its labels in item order.

    Args:
        path: The zip file.
        expected_images: Exact number of image members required; None accepts any number >= 1.
        max_images: Largest number of image members accepted (with ``expected_images=None``).
        resolution: Required image side in pixels (the first image is decoded); None skips it.
        check_crc: Also read every member and check its CRC (reads the whole file).
        hint: What the error tells the user to do about a bad file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: It is not a readable zip, or not the expected EDM dataset; the message names
            the file, what is wrong, and ``hint``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")

    def bad(what: str) -> ValueError:
        return ValueError(f"{path} exists but {what}; {hint}")

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if _LABELS_MEMBER not in names:
                raise bad(f"has no {_LABELS_MEMBER} (not an EDM dataset zip, or an incomplete one)")
            count = len(names) - 1
            if expected_images is not None and count != expected_images:
                raise bad(f"holds {count} images, expected {expected_images}")
            if count < 1 or (max_images is not None and count > max_images):
                raise bad(f"holds {count} images, expected 1 to {max_images if max_images is not None else 'any'}")
            expected_names = [member_name(i) for i in range(count)] + [_LABELS_MEMBER]
            if names != expected_names:
                first = next(i for i, (a, b) in enumerate(zip(names, expected_names)) if a != b)
                raise bad(f"member {first} is {names[first]!r}, expected {expected_names[first]!r} (not EDM's layout)")
            raw_labels = read_zip_member(zf, _LABELS_MEMBER, max_bytes=DEFAULT_MAX_MEMBER_BYTES, source=str(path))
            labels = _read_labels(raw_labels, expected_names[:-1], bad)
            if check_crc and (broken := zf.testzip()) is not None:
                raise bad(f"member {broken!r} fails its CRC check (the file is damaged)")
            if resolution is not None:
                try:
                    data = read_zip_member(zf, expected_names[0], max_bytes=DEFAULT_MAX_MEMBER_BYTES, source=str(path))
                    with open_image(data, name=f"{path}: {expected_names[0]}") as image:
                        size = image.size
                except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:  # what the opener raises
                    raise bad(f"its first image {expected_names[0]!r} cannot be read ({err})") from err
                if size != (resolution, resolution):
                    raise bad(f"holds {size[0]}x{size[1]} images, expected {resolution}x{resolution}")
    except (zipfile.BadZipFile, EOFError) as err:  # a truncated zip has no central directory
        raise bad(f"is not a readable zip ({err}): truncated, damaged or not a zip") from err
    return labels


def _read_labels(raw: bytes, names: list[str], bad) -> list[int]:
    try:
        table = json.loads(raw)["labels"]
    except (ValueError, KeyError, TypeError) as err:
        raise bad(f"its {_LABELS_MEMBER} is not EDM labels JSON ({err!r})") from err
    if table is None:
        raise bad(f"its {_LABELS_MEMBER} has no labels (labels: null)")
    try:
        table_names = [str(name) for name, _ in table]
        labels = [label for _, label in table]
    except (TypeError, ValueError) as err:
        raise bad(f"its {_LABELS_MEMBER} is not a list of [member, label] pairs") from err
    if table_names != names:
        raise bad(f"its {_LABELS_MEMBER} labels {len(table_names)} members, not its {len(names)} images in order")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in labels):
        raise bad(f"its {_LABELS_MEMBER} holds labels that are not integers >= 0")
    return labels


def encode_png(img: np.ndarray | PIL.Image.Image) -> bytes:
    """PNG bytes of an RGB image exactly as :meth:`EDMZipWriter.add_image` (and EDM) encode it.

    The image is rebuilt from its pixels, so nothing of a source file's metadata (an ICC profile
    that PIL would copy into an ``iCCP`` chunk) reaches the PNG, as with EDM's ``np.array`` round trip.
    """
    array = np.asarray(img)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, (array.dtype, array.shape)
    return png_bytes(PIL.Image.fromarray(array, "RGB"))


class VerifiedEDMZip:
    """An :class:`EDMZipWriter` whose zip is checked before it is renamed to ``path``.

    The writer writes (atomically) to ``<path>.unverified-<pid>``; when the ``with`` block ends
    without an exception, that zip is re-opened and must hold exactly the images added, in
    order, with their labels (and, with ``resolution``, of that side). Only then is it renamed
    to ``path``. On any failure nothing is left at ``path`` or beside it.

    Args:
        path: Destination zip file; an existing file is replaced on success.
        resolution: Side in pixels every image must have; None skips that check.

    Example::

        with VerifiedEDMZip("out/cifar10-32x32.zip", resolution=32) as zip_out:
            zip_out.add_image(image, label)
    """

    def __init__(self, path: str | os.PathLike[str], resolution: int | None = None) -> None:
        self.path = pathlib.Path(path)
        self._staged = AtomicPath(self.path)  # the writer's zip, renamed into place once it reads back right
        self._writer = EDMZipWriter(self._staged.tmp)
        self._resolution = resolution
        self._labels: list[int] = []

    @property
    def count(self) -> int:
        """Images added so far."""
        return self._writer.count

    def add_image(self, img: np.ndarray | PIL.Image.Image, label: int) -> int:
        """Add a labelled image (see :meth:`EDMZipWriter.add_image`); return its index."""
        index = self._writer.add_image(img, label)
        self._labels.append(int(label))
        return index

    def add_png(self, png: bytes, label: int, size: tuple[int, int]) -> int:
        """Add a PNG already encoded as :meth:`EDMZipWriter.add_image` encodes an RGB image.

        Lets worker processes do the encoding; the bytes must come from
        ``PIL.Image.fromarray(rgb_array, "RGB").save(buf, format="png", compress_level=0,
        optimize=False)`` (see :func:`encode_png`), so the zip is the one ``add_image`` writes.

        Args:
            png: The PNG file's bytes.
            label: Class index >= 0.
            size: (width, height) of the image, checked against the other items.
        """
        index = self._writer.add_png_bytes(png, label, (size[1], size[0], 3))
        self._labels.append(int(label))
        return index

    def __enter__(self) -> VerifiedEDMZip:
        self._writer.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._writer.__exit__(exc_type, exc, tb)  # renames to the staging name on success
            if exc_type is None:
                labels = check_edm_zip(
                    self._staged.tmp,
                    expected_images=len(self._labels),
                    resolution=self._resolution,
                    hint="the zip just written does not match what was added (a disk or writer fault)",
                )
                if labels != self._labels:
                    first = next(i for i, (a, b) in enumerate(zip(labels, self._labels)) if a != b)
                    raise ValueError(
                        f"{self._staged.tmp}: label {first} reads back as {labels[first]}, but {self._labels[first]} "
                        "was written; the zip is not kept"
                    )
                self._staged.commit()
        finally:
            self._staged.discard()
