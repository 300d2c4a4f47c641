# Intake: a video file, HEIC photos or EXIF-rotated photos as a row's `source` become
# upright photos in results/{scene}/photos/ (nerflib/intake.py), which every later
# step reads. A folder of plain upright photos skips this rule and is used in place.

_intake_reasons = {}


def intake_needed(scene):
    """Why the row's source goes through rule intake ('' = used in place); photos checked first."""
    if scene not in _intake_reasons:
        from nerflib import intake

        source = resolve(sheet.loc[scene, "source"])
        if not intake.is_video(source):
            check_photos(scene)  # every photo (HEIC too) decodes, before any job starts
        _intake_reasons[scene] = intake.needs_intake(source)
        if _intake_reasons[scene]:
            logger.info(f"scene {scene}: {_intake_reasons[scene]} (rule intake -> results/{scene}/photos)")
    return _intake_reasons[scene]


def intake_source(wildcards):
    return resolve(sheet.loc[wildcards.scene, "source"])


rule intake:
    input:
        source=intake_source,
    output:
        directory("results/{scene}/photos"),
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
