"""Read members of an EDM zip or folder, with one handle per process."""

from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

from fastgen_dm.storage import open_url, resolve_fs


class EDMReader:
    """Reads data members by name.

    The zip opens on first read in the process that reads, and pickling drops the handle, so
    every DataLoader worker gets its own file position instead of sharing one inherited
    descriptor (the reason other loaders force a single worker on zips).
    """

    def __init__(self, source: str, is_zip: bool, storage_options: Mapping[str, Any] | None = None) -> None:
        self.source = source
        self.is_zip = is_zip
        self.storage_options = dict(storage_options or {})
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():  # a forked child must not reuse the parent's
            self._zip = zipfile.ZipFile(open_url(self.source, "rb", self.storage_options))
            self._zip_pid = os.getpid()
        return self._zip

    def read(self, member: str) -> bytes:
        if self.is_zip:
            return self._zipfile().read(member)
        fs, root = resolve_fs(self.source, self.storage_options)
        return fs.cat_file(f"{root.rstrip('/')}/{member}")

    def close(self) -> None:
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zip": None, "_zip_pid": None}
