"""Snakemake entry point of rules localize and localize_errors (same as `nerf localize`)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    if snakemake.rule == "localize_errors":
        steps.localize_errors(
            snakemake.input.poses,
            snakemake.input.scene,
            model_dir=Path(snakemake.input.model).parent,
            out=snakemake.output.errors,
            **snakemake.params.settings,
        )
    else:
        steps.localize(
            snakemake.input.scene,
            snakemake.input.images,
            model_dir=Path(snakemake.input.model).parent,
            queries=snakemake.input.queries,
            out_dir=Path(snakemake.output.poses).parent,
            write_errors=False,
            **snakemake.params.settings,
        )
