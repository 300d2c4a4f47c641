"""Snakemake entry point of rule poses (same as `nerf poses`)."""
from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.poses(
        snakemake.input.images,
        scene_dir=snakemake.params.scene_dir,
        threads=snakemake.threads,
        **snakemake.params.settings,
    )
