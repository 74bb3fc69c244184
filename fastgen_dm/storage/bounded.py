"""Reading one member of a dataset with a size cap, so that no member can exhaust memory.

A zip member is refused when its declared size is over the cap, and read with a bounded read
(a header that lies about the size cannot inflate past it). A folder member is refused when it
resolves outside the dataset folder (a symlink to ``/etc`` or ``/dev/zero``) or is not a regular
file (a FIFO would block the reader, a device would never end), before a byte is read.
"""

from __future__ import annotations

import os
import stat
import zipfile

import fsspec
from fsspec.implementations.local import LocalFileSystem

#: Default cap on one member's size (zip: decompressed), in bytes: far above any image or
#: latent a training sample holds, far below a worker's memory.
DEFAULT_MAX_MEMBER_BYTES = 256 << 20


class UnsafeMemberError(ValueError):
    """A member refused unread: over the size cap, outside its dataset folder, or not a regular file."""


def check_max_member_bytes(value: object, argument: str = "max_member_bytes") -> int:
    """``value`` as an int >= 1, else a ``ValueError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{argument} must be an integer >= 1 (bytes), got {value!r}; e.g. {argument}={DEFAULT_MAX_MEMBER_BYTES} (256 MiB)"
        )
    return value


def _too_large(source: str, name: str, max_bytes: int, size: int | None = None) -> UnsafeMemberError:
    """The error for a member over the cap; ``size`` None: a bounded read found more than ``max_bytes``."""
    holds = f"more than {max_bytes}" if size is None else str(size)
    return UnsafeMemberError(
        f"{source}: member {name!r} holds {holds} bytes, over max_member_bytes={max_bytes}; "
        "raise max_member_bytes if such members are expected"
    )


def read_zip_member(zf: zipfile.ZipFile, name: str, *, max_bytes: int, source: str) -> bytes:
    """The decompressed bytes of member ``name``, at most ``max_bytes`` of them.

    Raises:
        UnsafeMemberError: The member declares more than ``max_bytes``.
        KeyError: No such member.
        zipfile.BadZipFile: A damaged member, or one that inflates past its declared size (its
            CRC then fails).
    """
    info = zf.getinfo(name)
    if info.file_size > max_bytes:
        raise _too_large(source, name, max_bytes, info.file_size)
    with zf.open(info) as f:
        # zipfile inflates up to the size asked for and then cuts at the declared size: asking for
        # the declared size (at most max_bytes) bounds what a lying header can inflate
        return f.read(info.file_size)


def read_folder_member(fs: fsspec.AbstractFileSystem, root: str, name: str, *, max_bytes: int, source: str) -> bytes:
    """The bytes of ``root/name``, at most ``max_bytes`` of them.

    On the local filesystem the path must resolve (symlinks followed) inside ``root`` and be a
    regular file; it is opened non-blocking so that a FIFO cannot stall the reader. Remote
    filesystems have neither links nor special files, and are read with one ranged request.

    Raises:
        UnsafeMemberError: Outside ``root``, not a regular file, or larger than ``max_bytes``.
        FileNotFoundError: No such member.
    """
    path = f"{root.rstrip('/')}/{name}"
    if not isinstance(fs, LocalFileSystem):
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(source, name, max_bytes)
        return data
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise UnsafeMemberError(
            f"{source}: member {name!r} resolves to {real}, outside the dataset folder; refusing to read it "
            "(copy the file into the folder instead of linking to it)"
        )
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # checked before reading, on the file opened
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise UnsafeMemberError(
                f"{source}: member {name!r} is not a regular file (mode {stat.filemode(status.st_mode)}); refusing to read it"
            )
        if status.st_size > max_bytes:
            raise _too_large(source, name, max_bytes, status.st_size)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # bounded even if the file grows after the check
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _too_large(source, name, max_bytes)
    return data
