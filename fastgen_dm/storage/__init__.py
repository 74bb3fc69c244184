"""Storage layer: bytes by URL through fsspec (local paths, ``file://``, ``s3://``, ``gs://``, ...)."""

from fastgen_dm.storage.fs import exists, fetch_once, is_local, open_url, resolve_fs

__all__ = ["exists", "fetch_once", "is_local", "open_url", "resolve_fs"]
