"""One WebDataset sample's members to values: which members to decode, into which keys, which samples to drop.

A sample arrives as ``{suffix: bytes}``, e.g. ``{"latent.pth": b"...", "txt": b"a cat", "json": b"..."}``
for the tar members ``000042.latent.pth``, ``000042.txt``, ``000042.json``. :class:`SampleSpec`
decodes the members its ``key_map`` names (and nothing else) and applies ``presets_filter``::

    spec = SampleSpec(key_map={"real": "latent.pth", "condition": "txt"})
    spec.decode(members)          # {"real": tensor [4, 64, 64], "condition": "a cat"}

Pure functions over bytes already read; :func:`~fastgen_dm.batch.collate.wds_batch` collates the
decoded samples with the constants of :func:`~fastgen_dm.batch.constants.load_constants`.

Outcomes of :meth:`SampleSpec.decode` for the caller (the bad-data policy):

- a dict: keep the sample;
- :class:`SampleFilteredOut`: a filter dropped it, or it lacks a ``key_map`` member that no
  default stands in for (FastGen's pipeline drops such samples before decoding); count it as
  filtered, not bad;
- :class:`BadSampleError`, or the decoder's own exception
  (``ValueError`` and subclasses such as :class:`~fastgen_dm.decode.PickleRefusedError`,
  ``RuntimeError`` from ``torch.load``, ``SafetensorError``, ...): bad data; skip and count it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence, get_args

import numpy as np
import torch

from fastgen_dm.decode.table import Decoder, decoder_for

#: Batch keys the batch writes itself (``wds_batch``): no ``key_map`` output or constant may take them.
RESERVED_KEYS = frozenset({"fname", "shard"})

FilterName = Literal["score", "empty_keys"]

DEFAULT_TXT_EXTENSIONS: tuple[str, ...] = ("txt", "caption", "text")


class BadSampleError(ValueError):
    """A member decoded but cannot be used (bad data), e.g. the score filter's ``json`` is not an object."""


class SampleFilteredOut(Exception):
    """A filter dropped the sample: count it as filtered, not as bad data.

    Attributes:
        filter_name: What dropped it, for per-cause counts: ``"score"`` or ``"empty_keys"``
            (``presets_filter``), or ``"missing_member"`` (a ``key_map`` member is absent and no
            ``files_map``/``presets_map`` constant stands in for it).
    """

    def __init__(self, filter_name: str, reason: str) -> None:
        super().__init__(filter_name, reason)
        self.filter_name = filter_name
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.filter_name}: {self.reason}"


# --- decoders ------------------------------------------------------------------------------------


def reserved_message(argument: str, key: str) -> str:
    return f"{argument}: {key!r} is written by the batch itself; reserved keys: {sorted(RESERVED_KEYS)}"


def check_names(argument: str, value: Any) -> tuple[str, ...]:
    """A sequence of non-empty strings as a tuple (a bare string is refused: it would iterate characters)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{argument} must be a list of strings, got {value!r}; e.g. {argument}=[{value!r}]")
    for item in value:
        if not isinstance(item, str) or not item:
            raise TypeError(f"{argument} must hold non-empty strings, got {item!r} in {list(value)!r}")
    return tuple(value)


def member_decoder(suffix: str, txt_extensions: Sequence[str], allow_pickle: Sequence[str]) -> Decoder:
    """The table's decoder for a suffix; a suffix (or its last part) in ``txt_extensions`` decodes as text."""
    ext = suffix.rsplit(".", 1)[-1].lower()
    if suffix.lower() in txt_extensions or ext in txt_extensions:
        return decoder_for("txt")
    return decoder_for(suffix, allow_pickle)


def _decoder_named(argument: str, suffix: str, txt_extensions: Sequence[str], allow_pickle: Sequence[str]) -> Decoder:
    """:func:`_decoder`, with errors that name the argument the suffix came from."""
    try:
        return member_decoder(suffix, txt_extensions, allow_pickle)
    except ValueError as err:  # PickleRefusedError is a ValueError too; keep its type
        raise type(err)(f"{argument} = {suffix!r}: {err}") from None


def annotate(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):  # Python >= 3.11
        err.add_note(note)


# --- filters -------------------------------------------------------------------------------------


class _Score(NamedTuple):
    threshold: float
    score_key: str


def _parse_score(value: Any, key_map: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) != {"threshold", "score_key"}:
        raise ValueError(
            f"presets_filter['score'] = {value!r}: expected exactly the keys 'threshold' and 'score_key', "
            "e.g. {'threshold': 5.5, 'score_key': 'aesthetic_score'}"
        )
    threshold, score_key = value["threshold"], value["score_key"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"presets_filter['score']['threshold'] = {threshold!r}: expected a finite number")
    if not isinstance(score_key, str) or not score_key:
        raise ValueError(f"presets_filter['score']['score_key'] = {score_key!r}: expected a non-empty string")
    return {"score": _Score(float(threshold), score_key)}


def _parse_empty_keys(value: Any, key_map: Mapping[str, str]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        if set(value) != {"keys"}:
            raise ValueError(f"presets_filter['empty_keys'] = {value!r}: expected a list of keys or {{'keys': [...]}}")
        value = value["keys"]
    keys = check_names("presets_filter['empty_keys']", value)
    unknown = [k for k in keys if k not in key_map]
    if unknown:
        raise ValueError(
            f"presets_filter['empty_keys'] names {unknown!r}, which are not key_map outputs; "
            f"allowed: {sorted(key_map)}"
        )
    return {"empty_keys": keys}


# Each parser maps the filter's config to fields of SampleSpec's parsed filters.
_FILTER_PARSERS: dict[str, Callable[[Any, Mapping[str, str]], dict[str, Any]]] = {
    "score": _parse_score,
    "empty_keys": _parse_empty_keys,
}
assert set(_FILTER_PARSERS) == set(get_args(FilterName))


def _is_empty(value: Any) -> bool:
    """Empty text after strip, a tensor/array with 0 elements, or an empty container."""
    if isinstance(value, (str, bytes, bytearray)):
        return not value.strip()
    if isinstance(value, torch.Tensor):
        return value.numel() == 0
    if isinstance(value, np.ndarray):
        return value.size == 0
    if isinstance(value, (dict, list, tuple)):
        return len(value) == 0
    return False


# --- the sample spec -----------------------------------------------------------------------------


def _passthrough(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class SampleSpec:
    """Which members of a WebDataset sample to decode, into which keys, and which samples to drop.

    Validated once at construction; cheap to pickle into DataLoader workers.

    Args:
        key_map: Output key -> member suffix, e.g. ``{"real": "latent.pth", "condition": "txt_emb.pth"}``.
            Only these members are decoded; a sample lacking one takes its ``defaults`` value, or
            is filtered out.
            The suffix's last part picks the decoder (``"latent.pth"`` -> ``pth``). Suffixes match
            members exactly (WebDataset lowercases them by default; so should the reader).
        presets_filter: Filters by name, or None (the default) for none. ``"score"``:
            ``{"threshold": 5.5, "score_key": "aesthetic_score"}`` keeps a sample that has no
            ``json`` member, whose json lacks ``score_key``, or whose ``json[score_key] >= threshold``.
            ``"empty_keys"``: ``["condition"]`` (or ``{"keys": ["condition"]}``) drops a sample whose
            listed ``key_map`` outputs decode to empty text, a tensor/array of 0 elements, or an empty
            container. Example: ``{"score": {"threshold": 5.5, "score_key": "aesthetic_score"},
            "empty_keys": ["condition"]}``.
        txt_extensions: Suffixes decoded as UTF-8 strings (default ``("txt", "caption", "text")``),
            matched against the whole suffix or its last part, in addition to the table's text
            suffixes. E.g. ``("prompt",)`` makes ``prompt`` members strings.
        allow_pickle: Suffixes that may load through full pickle (default none), e.g. ``["pth"]`` for
            ``.pth`` files holding custom classes. Only for data you trust.
        raw_keys: ``key_map`` outputs passed on as the member's bytes, undecoded: media families
            decode those themselves (e.g. ``("real",)`` for a video family's ``mp4``).
        defaults: ``key_map`` output -> the value a sample lacking that member gets, as in
            FastGen's ``_preprocess`` (the key's ``files_map``/``presets_map`` constant), e.g.
            ``{"condition": "a photo"}``. A sample lacking a member without a default is
            filtered out (:class:`SampleFilteredOut` ``"missing_member"``).

    Raises:
        TypeError: A bare string where a list is expected.
        ValueError: An empty ``key_map``, a reserved or empty output key, a suffix with no decoder,
            an unknown filter, or a malformed filter config.
        PickleRefusedError: A pickle suffix in ``key_map`` that ``allow_pickle`` does not name.
    """

    key_map: Mapping[str, str]
    presets_filter: Mapping[str, Any] | None = None
    txt_extensions: Sequence[str] = DEFAULT_TXT_EXTENSIONS
    allow_pickle: Sequence[str] = ()
    raw_keys: Sequence[str] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    _decoders: Mapping[str, Decoder] = field(init=False, repr=False, compare=False)
    _score: _Score | None = field(init=False, repr=False, compare=False)
    _empty_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key_map = self._validate_key_map(self.key_map)
        txt = tuple(ext.lower().lstrip(".") for ext in check_names("txt_extensions", self.txt_extensions))
        allow = tuple(ext.lower().lstrip(".") for ext in check_names("allow_pickle", self.allow_pickle))
        filters = self._validate_filters(self.presets_filter, key_map)
        raw = tuple(check_names("raw_keys", self.raw_keys))
        unknown_raw = [key for key in raw if key not in key_map]
        if unknown_raw:
            raise ValueError(f"raw_keys {unknown_raw} are not key_map outputs ({sorted(key_map)})")
        unknown_defaults = [key for key in self.defaults if key not in key_map]
        if unknown_defaults:
            raise ValueError(f"defaults {unknown_defaults} are not key_map outputs ({sorted(key_map)})")
        decoders = {
            key: _passthrough if key in raw else _decoder_named(f"key_map[{key!r}]", suffix, txt, allow)
            for key, suffix in key_map.items()
        }
        set_ = functools.partial(object.__setattr__, self)
        set_("key_map", key_map)
        set_("presets_filter", None if self.presets_filter is None else dict(self.presets_filter))
        set_("txt_extensions", txt)
        set_("allow_pickle", allow)
        set_("raw_keys", raw)
        set_("defaults", dict(self.defaults))
        set_("_decoders", decoders)
        set_("_score", filters.get("score"))
        set_("_empty_keys", filters.get("empty_keys", ()))

    @staticmethod
    def _validate_key_map(key_map: Any) -> dict[str, str]:
        if not isinstance(key_map, Mapping) or not key_map:
            raise ValueError(
                f"key_map must map output keys to member suffixes, e.g. {{'real': 'latent.pth'}}; got {key_map!r}"
            )
        for key, suffix in key_map.items():
            if not isinstance(key, str) or not key or not isinstance(suffix, str) or not suffix:
                raise ValueError(f"key_map[{key!r}] = {suffix!r}: keys and suffixes must be non-empty strings")
            if key in RESERVED_KEYS:
                raise ValueError(reserved_message(f"key_map[{key!r}]", key))
            if suffix.startswith("."):
                raise ValueError(
                    f"key_map[{key!r}] = {suffix!r}: give the suffix without a leading dot, e.g. {suffix.lstrip('.')!r}"
                )
        return dict(key_map)

    @staticmethod
    def _validate_filters(presets_filter: Any, key_map: Mapping[str, str]) -> dict[str, Any]:
        if presets_filter is None:
            return {}
        if not isinstance(presets_filter, Mapping):
            raise ValueError(f"presets_filter must map filter names to their configs, got {presets_filter!r}")
        parsed: dict[str, Any] = {}
        for name, config in presets_filter.items():
            if name not in _FILTER_PARSERS:
                raise ValueError(
                    f"presets_filter has unknown filter {name!r}; known filters: {sorted(_FILTER_PARSERS)}"
                )
            parsed.update(_FILTER_PARSERS[name](config, key_map))
        return parsed

    def members_needed(self) -> frozenset[str]:
        """The suffixes to read: the ``key_map`` values, plus ``json`` when the score filter is on."""
        return frozenset(self.key_map.values()) | ({"json"} if self._score is not None else frozenset())

    def decode(self, members: Mapping[str, bytes]) -> dict[str, Any]:
        """Decode the ``key_map`` members of one sample and apply the filters.

        Args:
            members: Suffix -> bytes of one sample, e.g. ``{"latent.pth": b"...", "json": b"{...}"}``.
                Members that ``key_map`` does not name are ignored (never decoded).

        Returns:
            Output key -> decoded value (or its ``defaults`` value when the member is absent), in
            ``key_map`` order.

        Raises:
            SampleFilteredOut: A filter dropped the sample, or a ``key_map`` member without a
                default is absent.
            BadSampleError: The score filter's ``json`` is not a JSON object or its score is not a number.
            Exception: The decoder's own error for an undecodable member, with a note naming the member.
        """
        needed = [(k, s) for k, s in self.key_map.items() if s not in members and k not in self.defaults]
        if needed:
            named = ", ".join(f"{s!r} (key_map[{k!r}])" for k, s in needed)
            raise SampleFilteredOut("missing_member", f"no member {named}; its members: {sorted(members)}")
        meta = self._apply_score(members)
        out: dict[str, Any] = {}
        for key, suffix in self.key_map.items():
            if suffix not in members:
                out[key] = self.defaults[key]
                continue
            if suffix == "json" and meta is not None:
                out[key] = meta
                continue
            try:
                out[key] = self._decoders[key](members[suffix])
            except Exception as err:
                annotate(err, f"while decoding member {suffix!r} for key_map[{key!r}]")
                raise
        for key in self._empty_keys:
            if _is_empty(out[key]):
                raise SampleFilteredOut("empty_keys", f"{key!r} (member {self.key_map[key]!r}) is empty")
        return out

    def _apply_score(self, members: Mapping[str, bytes]) -> Any:
        """The decoded json when the score filter keeps the sample (None without filter or json)."""
        if self._score is None or "json" not in members:
            return None
        threshold, score_key = self._score
        try:
            meta = decoder_for("json")(members["json"])
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BadSampleError(f"member 'json' is not valid JSON ({err}); the score filter reads it") from err
        if not isinstance(meta, dict):
            raise BadSampleError(
                f"member 'json' holds a {type(meta).__name__}, not an object; "
                f"the score filter reads json[{score_key!r}]"
            )
        score = meta.get(score_key)
        if score is None:
            return meta
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise BadSampleError(f"json[{score_key!r}] = {score!r} is not a number; the score filter compares it")
        if not score >= threshold:  # NaN is dropped too
            raise SampleFilteredOut("score", f"json[{score_key!r}] = {score!r} < threshold {threshold!r}")
        return meta


