"""Snakemake entry point of rule intake (same as `nerf intake`)."""
from nerflib import intake
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    intake.prepare(snakemake.input.source, snakemake.output[0], video_fps=float(snakemake.params.video_fps),
                   max_frames=int(snakemake.params.max_frames))
