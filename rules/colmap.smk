# Camera poses: COLMAP structure-from-motion with pycolmap (in process), or import of existing poses.
# Writes COLMAP's layout (sparse/0 beside images/) and nerflib's scene.json.


rule poses:
    input:
        unpack(poses_input),
    output:
        sparse=directory(SCENE.sparse),
        summary=SCENE.summary_json,
        scene=SCENE.scene_json,
    params:
        scene_dir=SCENE.root,
        settings=poses_params,
    log:
        "logs/poses/{scene}.log",
    benchmark:
        "benchmarks/poses/{scene}.tsv"
    threads: ALL_CORES
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/poses.py"
