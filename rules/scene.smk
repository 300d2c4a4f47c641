# The built-in procedural demo scene (rows whose source is `synthetic`).


rule synthetic_scene:
    output:
        images=directory("resources/synthetic/{scene}/images"),
        heldout=directory("resources/synthetic/{scene}/heldout"),
        queries=directory("resources/synthetic/{scene}/queries"),
        gt=directory("resources/synthetic/{scene}/gt"),
    params:
        settings=config["synthetic"],
    log:
        "logs/synthetic_scene/{scene}.log",
    conda:
        "../envs/nerf.yaml"
    script:
        "../workflow_scripts/synthetic_scene.py"
