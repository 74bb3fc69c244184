"""The decoder table: one function per member suffix.

Safety rules live here. Images open through :mod:`fastgen_dm.decode.image` (whitelisted
formats only); ``.npy``/``.npz`` load with ``allow_pickle=False``; ``.pth`` loads with
``torch.load(weights_only=True)``; pickle payloads (``pkl``, ``pickle``, ``pyd``, or a ``.pth``
that needs full pickle) are refused unless the caller names the suffix in ``allow_pickle``.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any, Callable, Collection

import numpy as np

from fastgen_dm.decode.image import decode_image
from fastgen_dm.format.image import IMAGE_EXTENSIONS

Decoder = Callable[[bytes], Any]

PICKLE_EXTENSIONS = frozenset({"pkl", "pickle", "pyd"})


class PickleRefusedError(ValueError):
    """A payload needs pickle, which can run arbitrary code, and the user did not opt in."""


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def decode_pth(data: bytes) -> Any:
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PickleRefusedError(
            f"this .pth needs full pickle to load ({str(err).splitlines()[0]}); save tensors or plain "
            "containers of tensors, or opt in with allow_pickle=['pth'] if you trust the data"
        ) from err


def _decode_pth_unsafe(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def decode_safetensors(data: bytes) -> Any:
    """A single tensor when the file holds one, else the dict of tensors."""
    from safetensors.torch import load

    tensors = load(data)
    return next(iter(tensors.values())) if len(tensors) == 1 else tensors


def decode_json(data: bytes) -> Any:
    return json.loads(data)


def decode_text(data: bytes) -> str:
    return data.decode("utf-8")


def decode_cls(data: bytes) -> int:
    return int(data.decode("ascii").strip())


def _decode_pickle(data: bytes) -> Any:
    return pickle.loads(data)  # reached only when the user named the suffix in allow_pickle


DECODERS: dict[str, Decoder] = {
    **{ext: decode_image for ext in IMAGE_EXTENSIONS},
    "npy": decode_npy,
    "npz": decode_npz,
    "pth": decode_pth,
    "pt": decode_pth,
    "safetensors": decode_safetensors,
    "json": decode_json,
    "txt": decode_text,
    "text": decode_text,
    "caption": decode_text,
    "cls": decode_cls,
    "cls2": decode_cls,
    "index": decode_cls,
}


def decoder_for(suffix: str, allow_pickle: Collection[str] = ()) -> Decoder:
    """The decoder of a member suffix such as ``"latent.pth"`` or ``"png"`` (its last part decides).

    Raises:
        PickleRefusedError: A pickle suffix not named in ``allow_pickle``.
        ValueError: A suffix with no decoder.
    """
    ext = suffix.rsplit(".", 1)[-1].lower()
    if ext in allow_pickle:
        return _decode_pth_unsafe if ext in ("pth", "pt") else _decode_pickle
    if ext in PICKLE_EXTENSIONS:
        raise PickleRefusedError(
            f"{suffix!r} is a pickle payload, which can run arbitrary code when loaded; it is refused "
            f"unless you opt in by name, e.g. allow_pickle=['{ext}']"
        )
    try:
        return DECODERS[ext]
    except KeyError:
        raise ValueError(f"no decoder for suffix {suffix!r}; known suffixes: {sorted(DECODERS)}") from None
