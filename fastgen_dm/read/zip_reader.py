"""Read members of an EDM zip or folder, with one handle per process."""

from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

from fastgen_dm.storage import DEFAULT_MAX_MEMBER_BYTES, open_url, read_folder_member, read_zip_member, resolve_fs


class EDMReader:
    """Reads data members by name, each capped at ``max_member_bytes`` (see :mod:`fastgen_dm.storage.bounded`).

    The zip opens on first read in the process that reads, and pickling drops the handle, so
    every DataLoader worker gets its own file position instead of sharing one inherited
    descriptor (the reason other loaders force a single worker on zips).
    """

    def __init__(
        self,
        source: str,
        is_zip: bool,
        storage_options: Mapping[str, Any] | None = None,
        *,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    ) -> None:
        self.source = source
        self.is_zip = is_zip
        self.storage_options = dict(storage_options or {})
        self.max_member_bytes = max_member_bytes
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():  # a forked child must not reuse the parent's
            self._zip = zipfile.ZipFile(open_url(self.source, "rb", self.storage_options))
            self._zip_pid = os.getpid()
        return self._zip

    def read(self, member: str) -> bytes:
        """The bytes of ``member``.

        Raises:
            UnsafeMemberError: Over ``max_member_bytes``, or (folders) outside the folder or not a regular file.
        """
        if self.is_zip:
            return read_zip_member(self._zipfile(), member, max_bytes=self.max_member_bytes, source=self.source)
        fs, root = resolve_fs(self.source, self.storage_options)
        return read_folder_member(fs, root, member, max_bytes=self.max_member_bytes, source=self.source)

    def close(self) -> None:
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zip": None, "_zip_pid": None}
