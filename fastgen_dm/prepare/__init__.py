"""Data preparation: write datasets in the formats the DataModules read."""

from fastgen_dm.prepare.demo import write_demo_latent_zip, write_demo_zip
from fastgen_dm.prepare.demo_wds import DemoKind, write_demo_shards
from fastgen_dm.prepare.edm_zip import EDMZipWriter, member_name

__all__ = ["DemoKind", "EDMZipWriter", "member_name", "write_demo_latent_zip", "write_demo_shards", "write_demo_zip"]
