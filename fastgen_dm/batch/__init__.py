"""Batch layer: the dictionaries training code receives."""

from fastgen_dm.batch.collate import one_hot, zip_batch
from fastgen_dm.batch.wds import (
    MissingKeyError,
    SampleFilteredOut,
    SampleSpec,
    drop_rows,
    load_constants,
    preset,
    wds_batch,
)

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
