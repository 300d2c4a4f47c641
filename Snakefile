# Distributed NeRF: photos -> poses -> image pyramid -> radiance field -> evaluation -> report.
# Run `snakemake --cores all` (local) or `snakemake --profile profiles/slurm` (cluster);
# then `snakemake --report report.html` (one file; or report.zip) for the browsable report.
import os

from snakemake.utils import min_version

min_version("9.0")

# envs/nerf*.yaml install this checkout into the rules' conda environment (--sdm conda).
os.environ.update(DNERF_ROOT=workflow.basedir)


configfile: "config/config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/checks.smk"
include: "rules/inputs.smk"
include: "rules/scene.smk"
include: "rules/intake.smk"
include: "rules/colmap.smk"
include: "rules/pyramid.smk"
include: "rules/train.smk"
include: "rules/render.smk"
include: "rules/localize.smk"
include: "rules/export.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
        REPORT_OVERVIEWS,
    default_target: True
