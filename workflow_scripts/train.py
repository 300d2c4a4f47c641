"""Snakemake entry point of rule train (same as `nerf train`; nerflib.train_job says how it runs).

With an `mpi` resource (the SLURM profile's `mpi: "srun"`) every task of the job runs `nerf train`.
"""
import sys
from pathlib import Path

from nerflib import train_job

sys.exit(train_job.run(
    snakemake.input.scene,
    snakemake.input.images,
    model_dir=Path(snakemake.output.final).parent,
    settings=snakemake.params.settings,
    sparse=snakemake.input.sparse or "",  # tiled rows only: the points that split the field
    log=snakemake.log[0],
    # How to run, not what to compute: read here, not params, so that changing them reruns nothing.
    allow_cpu=bool(snakemake.config.get("allow_cpu", False)),
    launcher=str(snakemake.resources.get("mpi", "") or "").strip(),
    resources=dict(snakemake.resources.items()),
    viewer=snakemake.config["train"].get("viewer"),
))
