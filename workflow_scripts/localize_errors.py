"""Snakemake entry point of rule localize_errors (errors.tsv of a finished localization)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.localize_errors(
        snakemake.input.poses,
        snakemake.input.scene,
        model_dir=Path(snakemake.input.model).parent,
        out=snakemake.output.errors,
        **snakemake.params.settings,
    )
