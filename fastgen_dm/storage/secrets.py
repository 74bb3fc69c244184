"""Credentials in ``storage_options``: the one rule for what is a secret, and its redaction.

fsspec takes credentials in ``storage_options``: s3fs's ``key``/``secret``/``token`` and
``client_kwargs.aws_session_token``, gcsfs's ``token``, adlfs's ``account_key``/``sas_token``/
``connection_string``, HTTP ``headers.Authorization``. Lightning writes a DataModule's arguments
into every checkpoint and ``hparams.yaml``, and LightningCLI writes ``config.yaml``: what they
write goes through :func:`redact_storage_options`, so no secret reaches a file. A run started
again from those files gets :data:`REDACTED` back, which :func:`without_redacted` leaves out, so
the credentials come from the environment (or are passed again).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

logger = logging.getLogger(__name__)

#: What a credential becomes in every file the package or Lightning writes.
REDACTED = "<redacted>"
#: An option whose lower-case name contains one of these holds a credential.
_CREDENTIAL_PARTS = (
    "key", "secret", "token", "password", "passwd", "passphrase", "credential", "auth", "signature", "cookie",
    "connection_string", "connectionstring",
)  # fmt: skip
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def is_credential_key(name: str) -> bool:
    """Whether an option named ``name`` holds a credential (the one rule).

    ``key``, ``aws_secret_access_key``, ``sessionToken``, ``Authorization`` and ``sas_token`` do;
    ``endpoint_url``, ``region_name``, ``anon`` and ``use_listings_cache`` do not.
    """
    lowered = str(name).lower()
    return any(part in lowered for part in _CREDENTIAL_PARTS)


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if is_credential_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v) for v in value)
    if isinstance(value, str):
        return _URL_USERINFO.sub(f"{REDACTED}@", value)  # https://user:password@host/...
    return value


def redact_storage_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of ``options`` with every credential replaced by :data:`REDACTED`.

    Credential-like keys (:func:`is_credential_key`) at any depth lose their value, and so does
    the user part of a URL. Example: ``{"key": "AKIA...", "client_kwargs": {"endpoint_url":
    "http://s3:9000", "aws_session_token": "..."}}`` -> ``{"key": "<redacted>", "client_kwargs":
    {"endpoint_url": "http://s3:9000", "aws_session_token": "<redacted>"}}``.
    """
    return None if options is None else _redact(options)


def _drop(value: Any, path: str, dropped: list[str]) -> Any:
    if not isinstance(value, Mapping):
        return value
    kept = {}
    for k, v in value.items():
        if v == REDACTED:
            dropped.append(f"{path}{k}")
        else:
            kept[k] = _drop(v, f"{path}{k}.", dropped)
    return kept


def without_redacted(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``options`` without the :data:`REDACTED` placeholders of a saved config or checkpoint.

    A run resumed from ``config.yaml`` then authenticates as fsspec does without those options
    (environment variables, credential files), or with values the user passes again.
    """
    if options is None:
        return None
    dropped: list[str] = []
    kept = _drop(options, "", dropped)
    if dropped:
        logger.warning(
            "storage_options %s hold %r, the placeholder written instead of credentials; they are left out, so "
            "credentials come from the environment (pass them again to use others)",
            ", ".join(dropped), REDACTED,
        )  # fmt: skip
    return kept
