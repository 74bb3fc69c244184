"""Streams layer: the planned streams of batches that the DataModules hand to their loaders."""

from fastgen_dm.streams.planned import PlannedDataLoader, PlannedStream
from fastgen_dm.streams.shard_epoch import WDSStream
from fastgen_dm.streams.shard_mixed import MixedWDSStream
from fastgen_dm.streams.shard_resampled import ResampledWDSStream
from fastgen_dm.streams.shard_source import SampleSource
from fastgen_dm.streams.zip_stream import EDMStream

__all__ = ["EDMStream", "MixedWDSStream", "PlannedDataLoader", "PlannedStream", "ResampledWDSStream", "SampleSource", "WDSStream"]
