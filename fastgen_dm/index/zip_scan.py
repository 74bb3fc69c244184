"""Index of an EDM-format dataset: a zip (or folder) of images or ``.npy`` arrays plus labels.

Layout written by EDM's ``dataset_tool.py``: ``00000/img00000000.png``, ... and a
``dataset.json`` holding ``{"labels": [["00000/img00000000.png", 6], ...]}`` or
``{"labels": null}``. Items are the data members sorted by name; item ``i`` is the ``i``-th.
"""

from __future__ import annotations

import json
import os
import posixpath
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fastgen_dm.format.image import is_image_name
from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES, open_url, read_folder_member, read_zip_member, resolve_fs

LABELS_MEMBER = "dataset.json"
MAX_CLASSES = 1_000_000  # a larger label is a broken file, not a dataset: its one-hot would not fit in memory


def is_data_member(name: str) -> bool:
    """Whether a member is an item: an image of :data:`~fastgen_dm.format.image.IMAGE_EXTENSIONS` or a ``.npy`` array.

    Other members (``dataset.json``, an ``.eps`` or ``.pdf`` file) are not items and are never read.
    """
    return is_image_name(name) or name.lower().endswith(".npy")


@dataclass(frozen=True)
class EDMIndex:
    """The items of an EDM dataset.

    Args:
        source: Path or URL of the zip file or folder.
        is_zip: Whether ``source`` is a zip file (else a folder).
        members: Data member names, sorted; item ``i`` is ``members[i]``.
        labels: int64 of shape (len(members),), or None when the dataset has no labels.
        fingerprint: Changes whenever the source file changes (size and modification time).
    """

    source: str
    is_zip: bool
    members: tuple[str, ...]
    labels: np.ndarray | None = field(repr=False)
    fingerprint: str

    def __len__(self) -> int:
        return len(self.members)

    @property
    def num_classes(self) -> int:
        """Label dimension as EDM defines it: ``max(label) + 1``, 0 without labels."""
        return 0 if self.labels is None else int(self.labels.max()) + 1


def _check_member_name(source: str, name: str) -> None:
    normalized = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or normalized == ".." or normalized.startswith("../") or ":" in name.split("/")[0]:
        raise ValueError(f"{source}: member {name!r} escapes the dataset folder; refusing to read this dataset")


def _list_zip(source: str, storage_options: Mapping[str, Any] | None, max_bytes: int) -> tuple[list[str], bytes | None]:
    try:
        with open_url(source, "rb", storage_options) as f, zipfile.ZipFile(f) as zf:
            names = [info.filename for info in zf.infolist() if not info.is_dir()]
            for name in names:
                _check_member_name(source, name)
            labels_json = read_zip_member(zf, LABELS_MEMBER, max_bytes=max_bytes, source=source) if LABELS_MEMBER in names else None
    except zipfile.BadZipFile as err:
        raise ValueError(f"{source} is not a zip file ({err}); expected an EDM dataset zip") from err
    return names, labels_json


def _list_folder(source: str, storage_options: Mapping[str, Any] | None, max_bytes: int) -> tuple[list[str], bytes | None]:
    fs, root = resolve_fs(source, storage_options)
    root = root.rstrip("/")
    names = [posixpath.relpath(p, root) for p in fs.find(root)]
    labels_json = read_folder_member(fs, root, LABELS_MEMBER, max_bytes=max_bytes, source=source) if LABELS_MEMBER in names else None
    return names, labels_json


def _parse_labels(source: str, members: list[str], labels_json: bytes | None) -> np.ndarray | None:
    if labels_json is None:
        return None
    try:
        table = json.loads(labels_json)["labels"]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{source}: {LABELS_MEMBER} is not EDM labels JSON ({type(err).__name__}: {err})") from err
    if table is None:
        return None
    if not isinstance(table, list) or not all(isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) for row in table):
        raise ValueError(f'{source}: {LABELS_MEMBER} "labels" must be null or a list of ["<member>", <label>] pairs')
    by_name = {name.replace("\\", "/"): label for name, label in table}
    missing = [m for m in members if m not in by_name]
    if missing:
        raise ValueError(
            f"{source}: {LABELS_MEMBER} has no label for {len(missing)} of {len(members)} items, "
            f"e.g. {missing[:3]}; fix the labels or pass use_labels=False"
        )
    values = [by_name[m] for m in members]
    bad = [v for v in values if type(v) is not int or not 0 <= v < MAX_CLASSES]
    if bad:
        raise ValueError(
            f"{source}: {LABELS_MEMBER} has the label {bad[0]!r}; labels must be integers in [0, {MAX_CLASSES:,}) "
            "(the one-hot condition has max(label) + 1 entries)"
        )
    return np.asarray(values, dtype=np.int64)


def scan_edm(
    source: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> EDMIndex:
    """Read the member list and labels of an EDM zip or folder (no data member is read).

    Args:
        source: Path or URL of the zip file or folder.
        storage_options: fsspec options for a remote ``source``.
        max_member_bytes: Cap on the size of ``dataset.json``, in bytes.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: Not a zip, no data members, unsafe member names, incomplete labels, or a
            ``dataset.json`` over ``max_member_bytes`` (or, in a folder, a link out of it).
    """
    source = os.fspath(source)
    fs, path = resolve_fs(source, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"dataset {source!r} does not exist")
    info = fs.info(path)
    is_zip = info["type"] != "directory"
    names, labels_json = (_list_zip if is_zip else _list_folder)(source, storage_options, max_member_bytes)
    members = sorted(n for n in names if is_data_member(n))
    if not members:
        raise ValueError(
            f"{source} holds no images or .npy arrays ({len(names)} other members); "
            "expected an EDM dataset (see `fastgen prepare --help`)"
        )
    fingerprint = f"{info.get('size', 0)}-{info.get('mtime', info.get('LastModified', ''))}-{len(members)}"
    return EDMIndex(source, is_zip, tuple(members), _parse_labels(source, members, labels_json), fingerprint)
