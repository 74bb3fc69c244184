"""Index layer: what a dataset holds (members, labels, shard sample counts)."""

from fastgen_dm.index.edm import EDMIndex, scan_edm

__all__ = ["EDMIndex", "scan_edm"]
