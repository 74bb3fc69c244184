"""The one place that turns a URL into an open file.

Everything that reads data goes through :func:`open_url`, so local paths and object stores
behave alike and the security rules live here: ``pipe:`` URLs (which run shell commands) are
refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any, Mapping

import fsspec
from fsspec.core import url_to_fs

logger = logging.getLogger(__name__)

_COPY_CHUNK_BYTES = 8 << 20


def _check_url(url: str) -> None:
    if url.startswith("pipe:"):
        raise ValueError(
            f"{url!r}: 'pipe:' URLs run shell commands and are refused; give a path or an fsspec URL "
            "(s3://, gs://, https://, file://) instead"
        )


def resolve_fs(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for ``url``."""
    url = os.fspath(url)
    _check_url(url)
    return url_to_fs(url, **dict(storage_options or {}))


def is_local(url: str | os.PathLike) -> bool:
    """Whether ``url`` names a file on this machine (a plain path or ``file://``)."""
    url = os.fspath(url)
    return "://" not in url or url.startswith("file://")


def exists(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = resolve_fs(url, storage_options)
    return fs.exists(path)


def open_url(url: str | os.PathLike, mode: str = "rb", storage_options: Mapping[str, Any] | None = None) -> IO[bytes]:
    """Open ``url`` for reading (or writing) as a binary file object."""
    fs, path = resolve_fs(url, storage_options)
    return fs.open(path, mode)


def fetch_once(
    url: str,
    dest: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> Path:
    """Copy ``url`` to the local file ``dest`` unless it is already there; atomic.

    The bytes go to a temporary name beside ``dest`` and are renamed into place only when
    complete, so an interrupted copy never looks finished to a later run or another process.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists():
        return dest
    fs, path = resolve_fs(url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"cannot fetch {url!r}: it does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    total = fs.size(path)
    logger.info("fetching %s -> %s (%s bytes)", url, dest, total)
    try:
        with fs.open(path, "rb") as src, open(tmp, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"fetch {Path(path).name}", disable=not show_progress
        ) as bar:
            while chunk := src.read(_COPY_CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
