"""Batch layer: the dictionaries training code receives."""

from fastgen_dm.batch.collate import one_hot, zip_batch

__all__ = ["one_hot", "zip_batch"]
