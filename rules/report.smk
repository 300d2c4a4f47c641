# Figures for `snakemake --report report.html`: the camera layout, the training curves
# and the resolved settings of each scene. The other report items are the outputs of
# the poses, evaluate, render and localize rules, marked with report() there.


rule report_figures:
    input:
        scene="results/{scene}/poses/scene.json",
        summary="results/{scene}/poses/summary.json",
        model="results/{scene}/model/final.json",
    output:
        cameras=report(
            "results/{scene}/report/cameras.png",
            caption="report/cameras.rst",
            category="{scene}",
            subcategory="1 poses",
        ),
        training=report(
            "results/{scene}/report/training.png",
            caption="report/training.rst",
            category="{scene}",
            subcategory="2 training",
        ),
        settings=report(
            "results/{scene}/report/settings.tsv",
            caption="report/settings.rst",
            category="{scene}",
            subcategory="2 training",
        ),
    log:
        "logs/report_figures/{scene}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/report_figures.py"
