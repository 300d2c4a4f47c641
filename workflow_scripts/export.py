"""Snakemake entry point of rules export_points, export_transforms, export_colmap (same as `nerf export`)."""
from pathlib import Path

from nerflib import steps
from nerflib.logs import log_to

with log_to(snakemake.log[0]):
    model = snakemake.input.get("model")
    steps.export(
        snakemake.input.scene,
        out_dir=Path(snakemake.output[0]).parent,
        what=snakemake.params.what,
        model_dir=Path(model).parent if model else None,
        images=snakemake.input.get("images"),
        sparse_dir=snakemake.input.get("sparse"),
        options=snakemake.params.get("options"),
    )
