# Exports for other tools, for rows whose `export` column asks for them (results/{scene}/export/):
# points.ply (a coloured point cloud from the rendered depth of the training views),
# transforms.json (nerfstudio / instant-ngp / 3D Gaussian splatting) and colmap/ (COLMAP text).


rule export_points:
    input:
        scene=SCENE.scene_json,
        images=training_images,
        manifest=training_manifest,
        model=SCENE.final_json,
    output:
        ply=SCENE.export("ply"),
    params:
        what="ply",
        options=config["export"]["point_cloud"],
    log:
        "logs/export_points/{scene}.log",
    benchmark:
        "benchmarks/export_points/{scene}.tsv"
    threads: ALL_CORES
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/export.py"


rule export_transforms:
    input:
        scene=SCENE.scene_json,
    output:
        transforms=SCENE.export("transforms"),
    params:
        what="transforms",
    log:
        "logs/export_transforms/{scene}.log",
    resources:
        runtime=10,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/export.py"


rule export_colmap:
    input:
        scene=SCENE.scene_json,
        sparse=SCENE.sparse,
    output:
        colmap=directory(SCENE.export("colmap")),
    params:
        what="colmap",
    log:
        "logs/export_colmap/{scene}.log",
    resources:
        runtime=10,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/export.py"
