"""Data preparation: write datasets in the formats the DataModules read."""

from fastgen_dm.prepare.demo import write_demo_latent_zip, write_demo_zip
from fastgen_dm.prepare.edm_zip import EDMZipWriter, member_name

__all__ = ["EDMZipWriter", "member_name", "write_demo_latent_zip", "write_demo_zip"]
