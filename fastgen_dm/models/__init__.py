"""Small reference models that consume fastgen-dm batches.

- ``EDMDenoiser``: an EDM-preconditioned denoiser that adapts to images, videos, latents and
  conditions from the first batch; for examples, notebooks and end-to-end tests.
- ``LoaderProbe``: consumes batches without training; times the data loader and records which
  sample ids each rank received.
"""

from fastgen_dm.models.denoiser import EDMDenoiser
from fastgen_dm.models.probe import LoaderProbe, batch_ids_of, batch_size_of

__all__ = ["EDMDenoiser", "LoaderProbe", "batch_ids_of", "batch_size_of"]
