"""Read layer: stream exactly the planned members out of zips and tars; count what is bad."""

from fastgen_dm.read.bad_data import BadDataPolicy, TooManyBadSamplesError
from fastgen_dm.read.edm import EDMReader

__all__ = ["BadDataPolicy", "EDMReader", "TooManyBadSamplesError"]
