# Input and param functions of the rules (named, no lambdas inside rules), and the targets of rule all.
from pathlib import Path


_intake_reasons = {}


def intake_reason(path, output):
    """Why the photos or video at `path` go through an intake rule into `output` ('' = used in place)."""
    if path not in _intake_reasons:
        from nerflib import intake

        _intake_reasons[path] = intake.needs_intake(path)
        if _intake_reasons[path]:
            logger.info(f"{path}: {_intake_reasons[path]} (-> {output})")
    return _intake_reasons[path]


def intake_needed(scene):
    """Why the row's source goes through rule intake ('' = used in place); photos checked first."""
    from nerflib import intake

    source = resolve(sheet.loc[scene, "source"])
    if not intake.is_video(source):
        check_photos(scene)  # every photo (HEIC too) decodes, before any job starts
    return intake_reason(source, scene_layout(scene).photos)


def query_intake_source(wildcards):
    return resolve(sheet.loc[wildcards.scene, "queries"])


def intake_source(wildcards):
    return resolve(sheet.loc[wildcards.scene, "source"])


def image_folder(wildcards):
    """The folder of full-size photos of a scene (checked: check_photos)."""
    if is_synthetic(wildcards.scene):
        return f"{synthetic_dir(wildcards.scene)}/images"
    if intake_needed(wildcards.scene):  # a video, HEIC or EXIF-rotated photos: rules/intake.smk
        return scene_layout(wildcards.scene).photos
    return check_photos(wildcards.scene)


def poses_input(wildcards):
    """Inputs of the poses step: the photos, plus the scene generator or a poses file."""
    inputs = {"images": image_folder(wildcards), "manifest": photo_manifest(wildcards)}
    poses = sheet.loc[wildcards.scene, "poses"]
    if poses:
        inputs["poses"] = resolve(poses)
    return inputs


def poses_params(wildcards):
    r = sheet.loc[wildcards.scene]
    return {
        "camera_model": r["camera_model"],
        "matcher": r["matcher"],
        "poses": resolve(r["poses"]) if r["poses"] else "",
        "poses_format": r["poses_format"],
        **config["sfm"],
    }


def factor_of(scene):
    return int(sheet.loc[scene, "factor"])


def training_images(wildcards):
    """The image folder at the row's factor (the pyramid level, or the originals)."""
    factor = factor_of(wildcards.scene)
    if factor == 1:
        return image_folder(wildcards)
    return scene_layout(wildcards.scene).images(factor)


def tile_points_model(wildcards):
    """The COLMAP model whose points split a tiled row's field (tiles > 1); [] for tiles 1, whose
    inputs stay as they were (nothing reruns)."""
    return scene_layout(wildcards.scene).sparse if tiles_of(wildcards.scene) > 1 else []


def train_params(wildcards):
    return {
        "preset": preset_of(wildcards.scene),
        "factor": factor_of(wildcards.scene),
        "overrides": train_overrides(wildcards.scene),
    }


def render_path_file(wildcards):
    """The row's camera path file ([] when render_path is a path kind): an input of rule render."""
    path = sheet.loc[wildcards.scene, "render_path"]
    return resolve(path) if path.lower().endswith(".json") else []


def render_params(wildcards):
    r = sheet.loc[wildcards.scene]
    keyframes = [k.strip() for k in r["render_keyframes"].split(",") if k.strip()]
    return {
        "path": render_path_file(wildcards) or r["render_path"],
        "keyframes": keyframes,
        "n_frames": config["render"]["frames"],
        "fps": config["render"]["fps"],
    }


def query_folder(scene):
    """The folder of photos to localize ('' when the row has none)."""
    queries = sheet.loc[scene, "queries"]
    if queries == "synthetic":
        return f"{synthetic_dir(scene)}/queries"
    if queries and intake_reason(resolve(queries), scene_layout(scene).query_photos):
        return scene_layout(scene).query_photos  # HEIC or EXIF-rotated: rule intake_queries
    return resolve(queries) if queries else ""


def query_truth(scene):
    """{'input', 'gt_poses', 'gt_reference'} of a row's query ground truth, or {} without one.

    The demo's ground truth is in the generator's frame: gt/scene.json (its
    training cameras) maps it into the SfM frame. `input` is what the rules
    depend on (the demo's gt/ folder is a directory output).
    """
    r = sheet.loc[scene]
    if r["query_gt"]:
        path = resolve(r["query_gt"])
        return {"input": path, "gt_poses": path, "gt_reference": ""}
    if r["queries"] == "synthetic":
        gt = f"{synthetic_dir(scene)}/gt"
        return {"input": gt, "gt_poses": f"{gt}/queries.json", "gt_reference": f"{gt}/scene.json"}
    return {}


def localize_input(wildcards):
    scene = wildcards.scene
    inputs = {
        "scene": scene_layout(scene).scene_json,
        "images": training_images(wildcards),
        "model": scene_layout(scene).final_json,
        "sparse": scene_layout(scene).sparse,
        "queries": check_query_photos(scene),
        "manifest": training_manifest(wildcards),
        "query_manifest": query_manifest(scene),
    }
    if sheet.loc[scene, "query_poses"]:
        check_query_poses(scene)
        inputs["query_poses"] = resolve(sheet.loc[scene, "query_poses"])
    truth = query_truth(scene)
    if config["localize"]["start"] == "perturbed" and truth:
        inputs["truth"] = truth["input"]
    return inputs


def localize_params(wildcards):
    """Options of the localize step; `perturbed` starts only where ground truth exists."""
    scene = wildcards.scene
    settings = dict(config["localize"])
    truth = query_truth(scene)
    perturbed = settings["start"] == "perturbed" and bool(truth)
    settings["start"] = "perturbed" if perturbed else "auto"
    return {
        **settings,
        "query_poses": resolve(sheet.loc[scene, "query_poses"]) if sheet.loc[scene, "query_poses"] else "",
        "gt_poses": truth["gt_poses"] if perturbed else "",
        "gt_reference": truth["gt_reference"] if perturbed else "",
        "sparse_dir": scene_layout(scene).sparse,
        "database": scene_layout(scene).database,
    }


def localize_errors_input(wildcards):
    scene = wildcards.scene
    return {
        "poses": scene_layout(scene).localize_poses,
        "scene": scene_layout(scene).scene_json,
        "model": scene_layout(scene).final_json,
        "truth": query_truth(scene)["input"],
    }


def localize_errors_params(wildcards):
    truth = query_truth(wildcards.scene)
    return {"gt_poses": truth["gt_poses"], "gt_reference": truth["gt_reference"]}


def export_targets(scene):
    """The exports the row's `export` column asks for (rules/export.smk)."""
    kinds = [k.strip() for k in sheet.loc[scene, "export"].split(",") if k.strip()]
    return [scene_layout(scene).export(k) for k in kinds]


def all_targets():
    """The furthest product of every row."""
    targets = []
    for scene in sheet["scene"]:
        targets.append(scene_layout(scene).summary_json)
        targets.append(scene_layout(scene).metrics)
        targets.append(scene_layout(scene).report("cameras.png"))
        if sheet.loc[scene, "render_path"] != "none":
            targets.append(scene_layout(scene).video("color"))
        if query_folder(scene):
            targets.append(scene_layout(scene).localize_poses)
            if query_truth(scene):
                targets.append(scene_layout(scene).localize_errors)
        targets.extend(export_targets(scene))
    return targets
