"""An S3-compatible server on loopback for the tests: ``moto_server`` in a subprocess.

The server runs with its own fake credentials (``AWS_ACCESS_KEY_ID=testing``) set only in the
subprocess's environment; the test process passes the same keys and the server's
``endpoint_url`` through ``storage_options``, so nothing ever contacts real AWS and the test
process's ``os.environ`` is left alone.

Stale listings. s3fs keeps one filesystem instance per distinct ``storage_options`` (fsspec's
instance cache) and each instance caches directory listings (its ``dircache``). A test that
writes through one instance and lists through another (or through the same one after a write
made elsewhere, e.g. by boto3) can see an old listing. :attr:`S3Server.storage_options` turns the
listing cache off (``use_listings_cache=False``), so every ``ls``/``exists``/``glob`` asks the
server. Code that builds its own options should do the same, or call ``fs.invalidate_cache()``
after writing, or pass ``skip_instance_cache=True`` for a fresh instance.

Usage (fixtures in ``conftest.py``)::

    def test_roundtrip(s3_server, s3_bucket):
        url = f"s3://{s3_bucket}/x.bin"
        s3_server.upload(local_file, url)
        with fastgen_dm.storage.open_url(url, storage_options=s3_server.storage_options) as f:
            ...
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec

__all__ = ["S3Server", "start_s3_server"]

_HOST = "127.0.0.1"
_KEY = "testing"
_SECRET = "testing"
_REGION = "us-east-1"


def _free_port() -> int:
    """A port that was free a moment ago on loopback (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    if script.exists():
        return [str(script), "-H", _HOST, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", _HOST, "-p", str(port)]


class _ServerExited(RuntimeError):
    """The server process ended before answering (for instance, its port was taken meanwhile)."""


def _answers(port: int) -> bool:
    """Whether the server at ``port`` answers an HTTP request (http.client ignores proxy settings)."""
    conn = http.client.HTTPConnection(_HOST, port, timeout=1.0)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


class S3Server:
    """A running ``moto_server`` on 127.0.0.1; stop it with :meth:`stop` (or use ``with``).

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        storage_options: The fsspec/s3fs options reaching this server with the fake credentials
            and no listing cache; pass them to every ``fastgen_dm`` function taking
            ``storage_options``.
    """

    def __init__(self, startup_timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers.

        Args:
            startup_timeout_s: Seconds to wait for the first answer before giving up.

        Raises:
            RuntimeError: The server exited or did not answer within ``startup_timeout_s``; the
                message holds its output.
        """
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {startup_timeout_s!r}")
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the server
        env = {**os.environ, "AWS_ACCESS_KEY_ID": _KEY, "AWS_SECRET_ACCESS_KEY": _SECRET, "AWS_DEFAULT_REGION": _REGION}
        self.port = _free_port()
        self._proc = subprocess.Popen(
            _server_command(self.port), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.endpoint_url = f"http://{_HOST}:{self.port}"
        self.storage_options: dict[str, Any] = {
            "key": _KEY,
            "secret": _SECRET,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": _REGION},
            "use_listings_cache": False,
        }
        try:
            self._wait(startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise _ServerExited(
                    f"moto_server on port {self.port} exited with code {self._proc.returncode}:\n{self.output()}"
                )
            if _answers(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"moto_server on port {self.port} did not answer within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        """What the server wrote to stdout and stderr so far (its request log and errors)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """A fresh s3fs filesystem for this server (outside fsspec's instance cache)."""
        return fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket and return its name; None picks a unique ``fastgen-test-...`` name."""
        import boto3

        name = name or f"fastgen-test-{uuid.uuid4().hex[:16]}"
        # boto3, not s3fs.mkdir: s3fs sends LocationConstraint=us-east-1, which S3 (and moto) refuse.
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=_REGION,
            aws_access_key_id=_KEY,
            aws_secret_access_key=_SECRET,
        )
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def upload(self, local_path: str | os.PathLike[str], url: str) -> str:
        """Copy a local file (or a folder, recursively) to ``s3://bucket/key``; returns ``url``."""
        if not url.startswith("s3://"):
            raise ValueError(f"url must be an s3:// URL, got {url!r}")
        local_path = Path(local_path)
        if not local_path.exists():
            raise FileNotFoundError(f"local_path {str(local_path)!r} does not exist")
        fs = self.filesystem()
        if local_path.is_dir():
            fs.put(str(local_path), url.rstrip("/"), recursive=True)
        else:
            fs.put_file(str(local_path), url)
        return url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server: terminate, then kill if it has not exited after ``timeout_s``."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout_s)
        self._log.close()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_s3_server(startup_timeout_s: float = 30.0, attempts: int = 3) -> S3Server:
    """Start an :class:`S3Server`, retrying on a new port when the server exits at once.

    The free port is found by binding port 0 and releasing it, so another process may take it
    before the server binds; the server then exits and a new port is tried, up to ``attempts``
    times. A server that stays up but never answers is not retried.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts!r}")
    for attempt in range(attempts):
        try:
            return S3Server(startup_timeout_s)
        except _ServerExited:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
