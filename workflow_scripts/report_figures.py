"""Snakemake entry point of rule report_figures."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.report_figures(
        snakemake.input.scene,
        model_dir=Path(snakemake.input.model).parent,
        out_dir=Path(snakemake.output.cameras).parent,
        summary_json=snakemake.input.summary,
        sparse_dir=snakemake.input.sparse,
    )
