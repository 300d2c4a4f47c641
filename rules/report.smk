# Figures for `snakemake --report report.html` (or report.zip): the camera layout, the
# training curves and the resolved settings of each scene, and a per-scene overview page. The other
# report items are the outputs of the poses, evaluate, render and localize rules,
# marked with report() there.


# The overview page of every scene with render videos; rule `all` asks for them, as only
# outputs of jobs in the DAG make it into the report.
REPORT_OVERVIEWS = [
    scene_layout(scene).report("overview.html")
    for scene in sheet["scene"]
    if sheet.loc[scene, "render_path"] != "none"
]


rule report_figures:
    input:
        scene=SCENE.scene_json,
        summary=SCENE.summary_json,
        sparse=SCENE.sparse,  # its points are drawn in cameras.png
        model=SCENE.final_json,
    output:
        cameras=report(
            SCENE.report("cameras.png"),
            caption="report/cameras.rst",
            category="{scene}",
            subcategory="1 poses",
        ),
        training=report(
            SCENE.report("training.png"),
            caption="report/training.rst",
            category="{scene}",
            subcategory="2 training",
        ),
        settings=report(
            SCENE.report("settings.tsv"),
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


# One page per scene shown inline in the report (Snakemake displays HTML, not TSV or
# video): the evaluation table, the videos in players, the figures. One self-contained
# file (media as base64 data URIs, up to report_page.MAX_EMBED_BYTES), so that both
# report.html (which refuses directory items) and report.zip show it.
rule report_overview:
    input:
        metrics=SCENE.metrics,
        color=SCENE.video("color"),
        depth=SCENE.video("depth"),
        acc=SCENE.video("acc"),
        cameras=SCENE.report("cameras.png"),
        training=SCENE.report("training.png"),
    output:
        report(
            SCENE.report("overview.html"),
            caption="report/overview.rst",
            category="{scene}",
            subcategory="0 overview",
        ),
    log:
        "logs/report/overview/{scene}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/report_overview.py"
