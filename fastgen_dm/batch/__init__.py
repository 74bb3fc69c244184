"""Batch layer: the dictionaries training code receives."""

from fastgen_dm.batch.collate import collate_column, drop_rows, one_hot, wds_batch, zip_batch
from fastgen_dm.batch.constants import load_constants, preset

__all__ = [
    "collate_column",
    "drop_rows",
    "load_constants",
    "one_hot",
    "preset",
    "wds_batch",
    "zip_batch",
]
