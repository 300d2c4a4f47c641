# Downsampled copies of the photos (images_2/, images_4/, images_8/), only the factors in use.


rule pyramid:
    input:
        images=image_folder,
        manifest=photo_manifest,
    output:
        directory(SCENE.images("{factor}")),
    log:
        "logs/pyramid/{scene}_{factor}.log",
    threads: ALL_CORES
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/pyramid.py"
