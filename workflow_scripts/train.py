"""Snakemake entry point of rule train (same as `nerf train`)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.train(
        snakemake.input.scene,
        snakemake.input.images,
        model_dir=Path(snakemake.output.final).parent,
        **snakemake.params.settings,
    )
