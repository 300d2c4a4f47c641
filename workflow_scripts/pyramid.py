"""Snakemake entry point of rule pyramid (same as `nerf pyramid`)."""
from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    steps.pyramid(
        snakemake.input.images, snakemake.output[0], factor=int(snakemake.wildcards.factor), threads=snakemake.threads
    )
