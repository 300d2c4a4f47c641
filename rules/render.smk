# Videos (colour, depth, accumulation) along a camera path through the trained field.
# Frames under results/{scene}/render/frames/ are not declared outputs on purpose:
# a restarted job skips the frames that are already there.


rule render:
    input:
        scene=SCENE.scene_json,
        images=training_images,
        manifest=training_manifest,
        model=SCENE.final_json,
        path_file=render_path_file,
    output:
        color=report(
            SCENE.video("color"),
            caption="report/video.rst",
            category="{scene}",
            subcategory="4 videos",
        ),
        depth=report(
            SCENE.video("depth"),
            caption="report/video.rst",
            category="{scene}",
            subcategory="4 videos",
        ),
        acc=report(
            SCENE.video("acc"),
            caption="report/video.rst",
            category="{scene}",
            subcategory="4 videos",
        ),
        path=SCENE.render_path,
    params:
        settings=render_params,
    log:
        "logs/render/{scene}.log",
    benchmark:
        "benchmarks/render/{scene}.tsv"
    threads: ALL_CORES
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/render.py"
