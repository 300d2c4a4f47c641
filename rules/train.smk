# Training of the radiance field and evaluation on the held-out views.
# Checkpoints under results/{scene}/model/checkpoints/ are not declared outputs on
# purpose: Snakemake deletes declared outputs of an incomplete job, and a killed
# or preempted training job must resume from its last checkpoint.


rule train:
    input:
        scene=SCENE.scene_json,
        images=training_images,
        manifest=training_manifest,
        sparse=tile_points_model,
    output:
        final=SCENE.final_json,
    params:
        settings=train_params,
    log:
        "logs/train/{scene}.log",
    benchmark:
        "benchmarks/train/{scene}.tsv"
    threads: ALL_CORES
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=1440,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/train.py"


rule evaluate:
    input:
        scene=SCENE.scene_json,
        images=training_images,
        manifest=training_manifest,
        model=SCENE.final_json,
    output:
        metrics=report(
            SCENE.metrics,
            caption="report/metrics.rst",
            category="{scene}",
            subcategory="3 evaluation",
        ),
        views=report(
            directory(SCENE.eval_views),
            patterns=["{name}.png"],
            caption="report/views.rst",
            category="{scene}",
            subcategory="3 evaluation",
        ),
    log:
        "logs/evaluate/{scene}.log",
    threads: ALL_CORES
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/evaluate.py"
