"""Snakemake entry point of rule report_overview: the scene's overview page of the report."""
from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.report_overview(
        snakemake.output[0],
        scene=snakemake.wildcards.scene,
        metrics_tsv=snakemake.input.metrics,
        videos={kind: snakemake.input[kind] for kind in ("color", "depth", "acc")},
        figures={name: snakemake.input[name] for name in ("cameras", "training")},
    )
