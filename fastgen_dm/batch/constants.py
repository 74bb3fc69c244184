"""The constants of every batch: ``files_map`` files, loaded once at setup, and ``presets_map`` strings.

The only I/O of the batch layer: the files are read through :func:`fastgen_dm.storage.open_url`
and decoded by their suffix with the same table as the samples' members.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import os
import posixpath
from types import MappingProxyType
from typing import Any, Literal, Mapping, Sequence

from fastgen_dm.decode.sample import DEFAULT_TXT_EXTENSIONS, RESERVED_KEYS, annotate, check_names, member_decoder, reserved_message
from fastgen_dm.storage import open_url

logger = logging.getLogger(__name__)

PresetName = Literal["neg_prompt_wan", "neg_prompt_cosmos", "empty_string"]


# --- presets -------------------------------------------------------------------------------------


@functools.cache
def _presets() -> Mapping[str, str]:
    text = importlib.resources.files("fastgen_dm.batch").joinpath("presets.json").read_text(encoding="utf-8")
    return MappingProxyType(json.loads(text))


def preset(name: str) -> str:
    """The exact string of a preset constant (FastGen's negative prompts).

    Args:
        name: One of ``neg_prompt_wan``, ``neg_prompt_cosmos``, ``empty_string``.

    Raises:
        ValueError: An unknown name; the message lists the known ones.
    """
    presets = _presets()
    try:
        return presets[name]
    except (KeyError, TypeError):
        raise ValueError(f"preset {name!r} is unknown; known presets: {sorted(presets)}") from None


# --- constants -----------------------------------------------------------------------------------


def _resolve(path: str, base_dir: str | None) -> str:
    """``path`` itself when absolute, a URL, or without base; else joined onto ``base_dir``.

    ``("neg.pth", "s3://b/latents")`` -> ``"s3://b/latents/neg.pth"``;
    ``("neg.pth", "/data/x")`` -> ``"/data/x/neg.pth"``.
    """
    if base_dir is None or "://" in path or os.path.isabs(path):
        return path
    if "://" in base_dir:
        return posixpath.join(base_dir.rstrip("/") + "/", path)
    return os.path.join(base_dir, path)


def load_constants(
    files_map: Mapping[str, str] | None,
    presets_map: Mapping[str, str] | None,
    base_dir: str | os.PathLike | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    optional_files: Sequence[str] = (),
    txt_extensions: Sequence[str] = DEFAULT_TXT_EXTENSIONS,
    allow_pickle: Sequence[str] = (),
) -> dict[str, Any]:
    """Load the per-batch constants once (at setup): ``files_map`` files and ``presets_map`` strings.

    Args:
        files_map: Output key -> file, e.g. ``{"neg_condition": "neg_prompt_emb.pth"}``, decoded by its
            suffix through the decoder table. Relative paths resolve against ``base_dir``. None: no files.
        presets_map: Output key -> preset name, e.g. ``{"neg_condition": "neg_prompt_wan"}``. None: none.
        base_dir: Folder (path or URL) that relative ``files_map`` paths resolve against, usually the
            datatag's folder; None leaves them relative to the working directory.
        storage_options: fsspec options for opening the files (default None).
        optional_files: ``files_map`` keys whose file may be missing (default none); a missing one is
            left out of the result instead of raising.
        txt_extensions: Suffixes decoded as UTF-8 strings, as in :class:`SampleSpec`.
        allow_pickle: Suffixes that may load through full pickle, as in :class:`SampleSpec`.

    Returns:
        Output key -> value (tensor, array, string, ...), files first, then presets.

    Raises:
        ValueError: A key in both maps or reserved, an ``optional_files`` entry that is not a
            ``files_map`` key, an unknown preset, a file suffix with no decoder.
        FileNotFoundError: A file that is missing and not optional; names the key and the path.
    """
    files_map = dict(files_map or {})
    presets_map = dict(presets_map or {})
    optional = set(check_names("optional_files", optional_files))
    txt = tuple(ext.lower().lstrip(".") for ext in check_names("txt_extensions", txt_extensions))
    allow = tuple(ext.lower().lstrip(".") for ext in check_names("allow_pickle", allow_pickle))
    both = sorted(set(files_map) & set(presets_map))
    if both:
        raise ValueError(f"keys {both} are in both files_map and presets_map; give each constant once")
    for argument, mapping in (("files_map", files_map), ("presets_map", presets_map)):
        for key, value in mapping.items():
            if key in RESERVED_KEYS:
                raise ValueError(reserved_message(f"{argument}[{key!r}]", key))
            if not isinstance(value, str) or not value:
                raise ValueError(f"{argument}[{key!r}] = {value!r}: expected a non-empty string")
    not_files = sorted(optional - set(files_map))
    if not_files:
        raise ValueError(
            f"optional_files names {not_files}, which are not files_map keys; allowed: {sorted(files_map)}"
        )
    presets = {key: _preset_named(key, name) for key, name in presets_map.items()}
    base = None if base_dir is None else os.fspath(base_dir)
    decoders = {}
    for key, path in files_map.items():
        try:  # the file name's last suffix picks the decoder: "emb/neg.prompt.pth" -> pth
            decoders[key] = member_decoder(path.rstrip("/").rsplit("/", 1)[-1], txt, allow)
        except ValueError as err:  # PickleRefusedError is a ValueError too; keep its type
            raise type(err)(f"files_map[{key!r}] = {path!r}: {err}") from None

    constants: dict[str, Any] = {}
    for key, path in files_map.items():
        url = _resolve(path, base)
        try:
            with open_url(url, "rb", storage_options) as f:
                data = f.read()
        except FileNotFoundError as err:
            if key in optional:
                logger.info("optional files_map[%r] = %r not found at %s; leaving it out", key, path, url)
                continue
            raise FileNotFoundError(
                f"files_map[{key!r}] = {path!r}: {url!r} does not exist; fix the path (relative paths resolve "
                f"against {base!r}), or list {key!r} in optional_files to go on without it"
            ) from err
        try:
            constants[key] = decoders[key](data)
        except Exception as err:
            annotate(err, f"while decoding files_map[{key!r}] = {path!r} ({url})")
            raise
    constants.update(presets)
    return constants


def _preset_named(key: str, name: str) -> str:
    try:
        return preset(name)
    except ValueError as err:
        raise ValueError(f"presets_map[{key!r}]: {err}") from None
