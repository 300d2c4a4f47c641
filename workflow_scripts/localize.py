"""Snakemake entry point of rule localize (same as `nerf localize`)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.localize(
        snakemake.input.scene,
        snakemake.input.images,
        model_dir=Path(snakemake.input.model).parent,
        queries=snakemake.input.queries,
        out_dir=Path(snakemake.output.poses).parent,
        write_errors=False,
        **snakemake.params.settings,
    )
