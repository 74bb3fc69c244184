"""The one atomic write: a file appears complete under its name, or not at all.

The bytes go to a temporary file beside the target (same folder, so the rename cannot cross
file systems), named ``<target name>.tmp-<pid>-<random>`` so that processes writing the same
target never share one; the rename happens only when the writing succeeded, and the
temporary file is removed either way::

    with AtomicPath("out/index.fgi") as tmp:
        tmp.write_bytes(data)        # out/index.fgi.tmp-4711-3f2a9c1e
    # out/index.fgi now holds data; after an error it is untouched and the temporary file gone

A resumable copy (``fetch_once``) keeps its partial file on purpose and so writes its own.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType


class AtomicPath:
    """A temporary path that replaces ``target`` on :meth:`commit` (a ``with`` block commits when it ends without error).

    For writers that outlive one block, call :meth:`commit` and :meth:`discard` yourself.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.tmp = self.target.with_name(f"{self.target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def commit(self) -> None:
        """Rename the temporary file onto the target."""
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        """Remove the temporary file if it is still there (a no-op after :meth:`commit`)."""
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()


def write_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to the local file ``target`` atomically (see :class:`AtomicPath`)."""
    with AtomicPath(target) as tmp:
        tmp.write_bytes(data)
