# Localization of query photos against the trained field (rows with `queries`):
# poses.json (camera-to-world in the scene's frame, photometric error, converged
# flag, which start was used) and views/ (photo | render | difference), then,
# where ground truth exists, errors.tsv. views/ is rewritten by every run.


rule localize:
    input:
        unpack(localize_input),
    output:
        poses=SCENE.localize_poses,
        views=report(
            directory(SCENE.localize_views),
            patterns=["{name}.png"],
            caption="report/localize_views.rst",
            category="{scene}",
            subcategory="5 localization",
        ),
    params:
        settings=localize_params,
    log:
        "logs/localize/{scene}.log",
    benchmark:
        "benchmarks/localize/{scene}.tsv"
    threads: ALL_CORES
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/localize.py"


rule localize_errors:
    input:
        unpack(localize_errors_input),
    output:
        errors=report(
            SCENE.localize_errors,
            caption="report/localize_errors.rst",
            category="{scene}",
            subcategory="5 localization",
        ),
    params:
        settings=localize_errors_params,
    log:
        "logs/localize_errors/{scene}.log",
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/localize_errors.py"
