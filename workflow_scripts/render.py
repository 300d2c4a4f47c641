"""Snakemake entry point of rule render (same as `nerf render`)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.render(
        snakemake.input.scene,
        snakemake.input.images,
        model_dir=Path(snakemake.input.model).parent,
        out_dir=Path(snakemake.output.color).parent,
        **snakemake.params.settings,
    )
