# Videos (colour, depth, accumulation) along a camera path through the trained field.
# Frames under results/{scene}/render/frames/ are not declared outputs on purpose:
# a restarted job skips the frames that are already there.


rule render:
    input:
        scene="results/{scene}/poses/scene.json",
        images=training_images,
        manifest=training_manifest,
        model="results/{scene}/model/final.json",
        path_file=render_path_file,
    output:
        color=report(
            "results/{scene}/render/color.mp4",
            caption="report/video.rst",
            category="{scene}",
            subcategory="4 videos",
        ),
        depth=report(
            "results/{scene}/render/depth.mp4",
            caption="report/video.rst",
            category="{scene}",
            subcategory="4 videos",
        ),
        acc=report(
            "results/{scene}/render/acc.mp4",
            caption="report/video.rst",
            category="{scene}",
            subcategory="4 videos",
        ),
        path="results/{scene}/render/path.json",
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
