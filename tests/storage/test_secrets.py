"""The one credential rule: which ``storage_options`` are secrets, their redaction, and their return on resume."""

import logging

import pytest

from fastgen_dm import CIFAR10DataModule, ImageFolderDataModule, ImageLatentDataModule
from fastgen_dm.storage import REDACTED, is_credential_key, redact_storage_options, without_redacted

SECRETS = {
    "key": "AKIA-UNIT-1",
    "secret": "unit-secret-2",
    "token": "unit-token-3",
    "client_kwargs": {"endpoint_url": "http://user:unit-password-4@127.0.0.1:9000", "region_name": "us-east-1", "aws_session_token": "unit-token-5"},
    "headers": {"Authorization": "Bearer unit-6", "Accept": "*/*"},
    "use_listings_cache": False,
}


@pytest.mark.parametrize(
    "name",
    ["key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "sessionToken",
     "Authorization", "account_key", "sas_token", "connection_string", "client_secret", "passphrase", "credentials", "Cookie"],
)  # fmt: skip
def test_credential_like_names_are_secrets(name):
    assert is_credential_key(name)


@pytest.mark.parametrize("name", ["endpoint_url", "region_name", "anon", "use_listings_cache", "client_kwargs", "profile", "default_block_size", "headers"])
def test_other_option_names_are_not(name):
    assert not is_credential_key(name)


def test_redaction_reaches_every_depth_and_urls_and_copies():
    assert redact_storage_options(SECRETS) == {
        "key": REDACTED,
        "secret": REDACTED,
        "token": REDACTED,
        "client_kwargs": {"endpoint_url": "http://<redacted>@127.0.0.1:9000", "region_name": "us-east-1", "aws_session_token": REDACTED},
        "headers": {"Authorization": REDACTED, "Accept": "*/*"},
        "use_listings_cache": False,
    }
    assert SECRETS["key"] == "AKIA-UNIT-1" and redact_storage_options(None) is None


def test_placeholders_are_left_out_on_resume_and_said_once(caplog):
    with caplog.at_level(logging.WARNING):
        kept = without_redacted(redact_storage_options(SECRETS))
    assert kept == {
        "client_kwargs": {"endpoint_url": "http://<redacted>@127.0.0.1:9000", "region_name": "us-east-1"},
        "headers": {"Accept": "*/*"},
        "use_listings_cache": False,
    }
    (record,) = caplog.records
    assert record.getMessage() == (
        "storage_options key, secret, token, client_kwargs.aws_session_token, headers.Authorization hold '<redacted>', the "
        "placeholder written instead of credentials; they are left out, so credentials come from the environment (pass them again to use others)"
    )
    assert without_redacted(None) is None and without_redacted({"anon": True}) == {"anon": True}


@pytest.mark.parametrize(
    "make",
    [
        lambda options: ImageFolderDataModule("data.zip", storage_options=options),
        lambda options: CIFAR10DataModule(storage_options=options),
        lambda options: ImageLatentDataModule(["WDS:s3://bucket/latents"], storage_options=options),
    ],
    ids=["ImageFolderDataModule", "CIFAR10DataModule (kwargs)", "ImageLatentDataModule"],
)
def test_hyperparameters_hold_no_secret_but_the_datamodule_keeps_them(make):
    dm = make(SECRETS)
    assert dm.hparams["storage_options"] == redact_storage_options(SECRETS)
    assert dm.hparams_initial["storage_options"] == redact_storage_options(SECRETS)
    assert dm.storage_options == SECRETS
