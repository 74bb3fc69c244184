"""Batch layer: the dictionaries training code receives."""

from fastgen_dm.batch.collate import drop_rows, one_hot, wds_batch, zip_batch
from fastgen_dm.batch.wds import MissingKeyError, SampleFilteredOut, SampleSpec, load_constants, preset

__all__ = [
    "MissingKeyError",
    "SampleFilteredOut",
    "SampleSpec",
    "drop_rows",
    "load_constants",
    "one_hot",
    "preset",
    "wds_batch",
    "zip_batch",
]
