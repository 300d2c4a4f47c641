# Intake: a video file, HEIC photos or EXIF-rotated photos as a row's `source` become
# upright photos in results/{scene}/photos/ (nerflib/intake.py), which every later
# step reads. A folder of plain upright photos skips this rule and is used in place.
# The same for a row's `queries` folder (rule intake_queries -> results/{scene}/query_photos/).


rule intake:
    input:
        source=intake_source,
        manifest=photo_manifest,
    output:
        directory(SCENE.photos),
    params:
        video_fps=config["intake"]["video_fps"],
        max_frames=config["intake"]["max_frames"],
    log:
        "logs/intake/{scene}.log",
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/intake.py"


rule intake_queries:
    input:
        source=query_intake_source,
    output:
        directory(SCENE.query_photos),
    params:
        video_fps=config["intake"]["video_fps"],
        max_frames=config["intake"]["max_frames"],
    log:
        "logs/intake_queries/{scene}.log",
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/intake.py"
