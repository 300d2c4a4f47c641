"""Snakemake entry point of rule synthetic_scene (same as `nerf synthetic`)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.synthetic_scene(Path(snakemake.output.images).parent, **snakemake.params.settings)
