"""The one place that turns a URL into an open file.

Everything that reads data goes through :func:`open_url`, so local paths and object stores
behave alike and the security rules live here: ``pipe:`` URLs (which run shell commands) are
refused.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from pathlib import Path
from typing import IO, Any, Mapping

import fsspec
from fsspec.core import url_to_fs

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 10  # connecting to a host that answers takes well under a second

_COPY_CHUNK_BYTES = 8 << 20


def _check_url(url: str) -> None:
    if url.startswith("pipe:"):
        raise ValueError(
            f"{url!r}: 'pipe:' URLs run shell commands and are refused; give a path or an fsspec URL "
            "(s3://, gs://, https://, file://) instead"
        )


#: botocore settings every ``s3://`` filesystem starts from; ``storage_options["config_kwargs"]``
#: overrides any of them. botocore retries throttling, 5xx answers, resets and timeouts
#: (standard mode, 3 attempts, backoff with jitter); s3fs retries each call ``S3_RETRIES``
#: times on top, which also covers a body cut mid-read. A stalled store therefore fails after at
#: most ``S3_RETRIES ** 2 * 3 * (connect_timeout + read_timeout)`` (4 minutes) instead of hanging.
S3_CONFIG_DEFAULTS: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 15, "retries": {"mode": "standard", "total_max_attempts": 3}}
S3_RETRIES = 2


class StorageReadError(OSError):
    """A read from storage failed after its retries (a timeout, reset or server error), not bad data.

    Args:
        url: The file.
        start: First byte of the range asked for.
        end: End of the range asked for.
        cause: The last error.
    """

    def __init__(self, url: str, start: int, end: int, cause: BaseException) -> None:
        super().__init__(url, start, end, cause)  # args as given, so the error pickles across processes
        self.url, self.start, self.end, self.cause = url, start, end, cause

    def __str__(self) -> str:
        return (
            f"reading bytes [{self.start}, {self.end}) of {self.url} failed after its retries: "
            f"{type(self.cause).__name__}: {self.cause}. Check the endpoint and the network, or raise "
            "storage_options['config_kwargs'] connect_timeout/read_timeout"
        )


def check_storage_options(options: Any) -> dict[str, Any] | None:
    """``options`` as a dict, or a one-line error: fsspec options are a mapping, and so are its
    nested ``config_kwargs`` / ``client_kwargs``.
    """
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise ValueError(f"storage_options must be a dict of fsspec options (endpoint, credentials), got {type(options).__name__}: {options!r}")
    for name in ("config_kwargs", "client_kwargs"):
        value = options.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(
                f"storage_options must be a dict of fsspec options; its {name!r} must be a dict too, got {type(value).__name__}: {value!r}"
            )
    return dict(options)


def _with_defaults(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):
        options["config_kwargs"] = {**S3_CONFIG_DEFAULTS, **dict(options.get("config_kwargs") or {})}
    return options


def resolve_fs(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for ``url`` (``s3://`` with :data:`S3_CONFIG_DEFAULTS`)."""
    url = os.fspath(url)
    _check_url(url)
    fs, path = url_to_fs(url, **_with_defaults(url, storage_options))
    if url.startswith(("s3://", "s3a://")):
        fs.retries = S3_RETRIES  # s3fs reads its retry count from the instance
    return fs, path


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


def _unreachable(url: str) -> str | None:
    """Why the host of an http(s) ``url`` cannot be reached, or None when it can (or is no host).

    fsspec's HTTP ``exists`` answers False for a host that does not resolve as for a missing
    file; this tells them apart. Example: "the host www.cs.toronto.edu could not be reached
    ([Errno -3] Temporary failure in name resolution); are you offline?".
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"the host {parts.hostname} could not be reached ({err}); are you offline?"
    return None


def fetch_once(
    url: str,
    dest: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> Path:
    """Copy ``url`` to the local file ``dest`` unless it is already there; atomic and resumable.

    The bytes go to ``<dest>.part`` and are renamed into place only when complete, so an
    interrupted copy never looks finished to a later run. A later call continues a ``.part``
    file where it stopped (a ranged read of the rest), instead of starting again. Only one
    process per node should fetch (``prepare_data`` guarantees it).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists():
        return dest
    fs, path = resolve_fs(url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"cannot fetch {url!r}: {_unreachable(url) or 'it does not exist'}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part")
    total = fs.size(path)
    done = part.stat().st_size if part.exists() else 0
    if total is not None and done > total:  # not a prefix of this source: start over
        part.unlink()
        done = 0
    logger.info("fetching %s -> %s (%s bytes, resuming at %d)", url, dest, total, done)
    with fs.open(path, "rb") as src, open(part, "ab") as out, tqdm(
        total=total, initial=done, unit="B", unit_scale=True, desc=f"fetch {Path(path).name}", disable=not show_progress
    ) as bar:
        src.seek(done)
        while chunk := src.read(_COPY_CHUNK_BYTES):
            out.write(chunk)
            bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise OSError(f"fetching {url!r}: got {part.stat().st_size} of {total} bytes; run again to resume")
    os.replace(part, dest)
    return dest
