# Sheet loading and validation, input functions and wildcard constraints.
# Everything here runs before any job starts, so a bad sheet fails early.
import os
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nerflib.layout import RESULTS, SceneLayout
from nerflib.pyramid import FACTORS as PYRAMID_FACTORS

validate(config, schema="../config/schemas/config.schema.yaml")

def _all_cores():
    """Every core given to Snakemake (--cores), what the heavy rules ask for; 1 when none were given
    (`snakemake --report report.zip` runs no job and needs no --cores)."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


ALL_CORES = _all_cores()
SCENE = SceneLayout(f"{RESULTS}/{{scene}}")  # the rules' paths: SCENE.sparse == "results/{scene}/sparse/0"


def scene_layout(scene):
    """Where the jobs of `scene` read and write (nerflib.layout)."""
    return SceneLayout.of(scene)

DATASETS_SCHEMA = "../config/schemas/datasets.schema.yaml"
SHEET_PATH = config["datasets"]
INT_COLUMNS = ("factor",)


def _schema_error(err):
    """The jsonschema error inside a Snakemake WorkflowError, if any."""
    for arg in getattr(err, "args", ()):
        if isinstance(arg, jsonschema.exceptions.ValidationError):
            return arg
    cause = err.__cause__ or err.__context__
    return cause if isinstance(cause, jsonschema.exceptions.ValidationError) else None


def _explain(path, line, scene, err):
    """One clear message: file, row, column, what is wrong, what is allowed."""
    where = f"{path}, line {line}" + (f" (scene {scene!r})" if scene else "")
    if err is None:
        return f"{where}: invalid row"
    if err.validator == "additionalProperties":
        extra = ", ".join(sorted(set(err.instance) - set(err.schema.get("properties", {}))))
        allowed = ", ".join(err.schema.get("properties", {}))
        return f"{where}: unknown column(s) {extra}. Allowed columns: {allowed}."
    if err.validator == "required":
        return f"{where}: {err.message}. Every row needs `scene` and `source`."
    column = err.path[0] if err.path else "?"
    if err.validator == "enum":
        allowed = ", ".join(repr(v) if v == "" else str(v) for v in err.validator_value)
        return f"{where}, column {column!r}: {err.instance!r} is not allowed. Allowed values: {allowed}."
    description = err.schema.get("description", "").strip()
    return f"{where}, column {column!r}: {err.message}. {description}"


def load_sheet(path):
    """Read (verbatim: nerflib.sheet) and validate the per-scene sheet; return a DataFrame indexed by scene."""
    from nerflib import sheet as sheet_io

    try:
        _, rows = sheet_io.read(path)
    except ValueError as e:
        raise WorkflowError(str(e))
    records = []
    for line, record in rows:
        for col in INT_COLUMNS:
            if col in record and record[col].lstrip("-").isdigit():
                record[col] = int(record[col])
        try:
            validate(record, schema=DATASETS_SCHEMA)
        except WorkflowError as e:
            raise WorkflowError(_explain(path, line, record.get("scene"), _schema_error(e)))
        record["line"] = line
        records.append(record)
    if not records:
        raise WorkflowError(f"{path}: the sheet has no rows; add one row per scene (see README).")
    sheet = pd.DataFrame(records)
    dup = sheet["scene"][sheet["scene"].duplicated()].tolist()
    if dup:
        raise WorkflowError(f"{path}: scene name(s) {', '.join(dup)} appear more than once; scene names must be unique.")
    for a, b in sheet_io.case_clashes(list(sheet["scene"])):
        raise WorkflowError(f"{path}: scene names {a!r} and {b!r} differ only by letter case; their results "
                            "folders would be one folder on macOS and Windows file systems. Rename one of them.")
    for rec in records:
        for column in ("source", "queries", "poses", "query_poses"):
            value = rec.get(column, "")
            if value in ("", "synthetic"):
                continue
            problem = sheet_io.path_problem(os.path.expandvars(os.path.expanduser(value)))
            if problem:
                raise WorkflowError(
                    f"{path}, line {rec['line']} (scene {rec['scene']!r}), column {column!r}: {value!r} {problem}. "
                    "Fix the path, or use `synthetic` for the built-in demo scene."
                )
    return sheet.set_index("scene", drop=False)


sheet = load_sheet(SHEET_PATH)


wildcard_constraints:
    scene="|".join(sheet["scene"]),
    factor="|".join(str(f) for f in PYRAMID_FACTORS if f > 1),


def row(wildcards):
    return sheet.loc[wildcards.scene]


def resolve(path):
    return os.path.expandvars(os.path.expanduser(path))


def is_synthetic(scene):
    return sheet.loc[scene, "source"] == "synthetic"


def synthetic_dir(scene):
    return f"resources/synthetic/{scene}"


PHOTO_CHECKS = ".snakemake/dnerf/photo_checks"  # what check_images found good, per scene
_photos_checked = set()


def check_photos(scene):
    """The scene's photo folder, once every photo in it decodes (checked before any job starts).

    A bad photo found inside a job would come too late: Snakemake deletes the
    job's outputs (an earlier good run's sparse model, image pyramid) before
    running it. Only new or changed photos are decoded again (the cache file).
    """
    folder = resolve(sheet.loc[scene, "source"])
    if scene in _photos_checked:
        return folder
    try:
        from nerflib import images

        # What the poses step needs too (3 photos; one size when SfM shares one camera), so that
        # it never fails on them after Snakemake deleted an earlier run's poses.
        sfm_camera = config["sfm"]["single_camera"] and not sheet.loc[scene, "poses"]
        # Sizes as SfM will see them: upright (rotated photos go through rule intake first).
        images.check_images(folder, min_images=3, single_camera=sfm_camera, cache=f"{PHOTO_CHECKS}/{scene}.json",
                            upright=True)
        if sheet.loc[scene, "poses"]:
            check_poses_file(scene, "poses", folder, sheet.loc[scene, "poses_format"])
    except ValueError as e:
        raise _sheet_error(scene, "source", f"{e} (checked before any job starts: no earlier output was touched)")
    _photos_checked.add(scene)
    return folder


PHOTO_MANIFESTS = ".snakemake/dnerf/photo_manifests"  # name, size, mtime of each photo (images.write_manifest)
_manifests = {}


def manifest_of(folder, name):
    """The manifest file of a photo folder, (re)written if a photo changed (once per run).

    Declared as an input beside the folder: a photo overwritten in place changes the manifest but
    not the folder's modification time, which is all Snakemake compares for a folder. Written
    when this file is parsed (write_manifests), before Snakemake looks for any input.
    """
    if name not in _manifests:
        from nerflib import images

        _manifests[name] = f"{PHOTO_MANIFESTS}/{name}.json"
        images.write_manifest(folder, _manifests[name])
    return _manifests[name]


def write_manifests():
    """Every row's photo and query manifests, now (only a stat of each photo)."""
    for scene in sheet["scene"]:
        try:
            photo_manifest(SimpleNamespace(scene=scene))
            query_manifest(scene)
        except ValueError:
            pass  # an empty or missing folder: check_photos names it when the scene's jobs are planned


def photo_manifest(wildcards):
    """The manifest of the row's photo folder ([] for the synthetic demo and for a video file)."""
    scene = wildcards.scene
    source = resolve(sheet.loc[scene, "source"])
    if is_synthetic(scene) or not Path(source).is_dir():
        return []
    return manifest_of(source, scene)


def training_manifest(wildcards):
    """photo_manifest where training reads the photos themselves (factor 1): a pyramid level is an
    output folder, renewed whenever the pyramid reruns."""
    return photo_manifest(wildcards) if factor_of(wildcards.scene) == 1 else []


def query_manifest(scene):
    folder = resolve(sheet.loc[scene, "queries"]) if sheet.loc[scene, "queries"] else ""
    if not folder or sheet.loc[scene, "queries"] == "synthetic" or not Path(folder).is_dir():
        return []
    return manifest_of(folder, f"{scene}.queries")


def check_poses_file(scene, column, folder, fmt="auto"):
    """The row's poses file reads and names only photos of `folder` (before any job starts)."""
    from nerflib import scene_io

    try:
        scene_io.load_poses_for_photos(resolve(sheet.loc[scene, column]), fmt, folder)
    except ValueError as e:
        raise _sheet_error(scene, column, f"{e} (checked before any job starts: no earlier output was touched)")


def check_query_poses(scene):
    """The row's query_poses file reads (before any job starts); it may name photos other than the queries."""
    from nerflib import scene_io

    try:
        scene_io.load_poses(resolve(sheet.loc[scene, "query_poses"]), check_images=False)
    except ValueError as e:
        raise _sheet_error(scene, "query_poses", f"{e} (checked before any job starts: no earlier output was touched)")


def check_query_photos(scene):
    """The row's query photos all decode and none is too large (before any job starts)."""
    folder = query_folder(scene)
    if not folder or sheet.loc[scene, "queries"] == "synthetic" or scene in _photos_checked_queries:
        return folder
    from nerflib import images

    try:
        # the row's own folder (query_folder may be rule intake_queries' output, not written yet)
        images.check_images(resolve(sheet.loc[scene, "queries"]), min_images=1,
                            cache=f"{PHOTO_CHECKS}/{scene}.queries.json")
    except ValueError as e:
        raise _sheet_error(scene, "queries", f"{e} (checked before any job starts: no earlier output was touched)")
    _photos_checked_queries.add(scene)
    return folder


_photos_checked_queries = set()


SETTINGS_CHECK = ".snakemake/dnerf/settings_check.json"  # the last settings check_settings found good


def check_settings():
    """train.overrides and localize settings build a valid config for every row (before any job starts).

    Building the configs imports JAX (seconds); the settings found good last time (with the
    modules that judged them) are remembered in SETTINGS_CHECK, so that every later run, and
    every job (each parses this file again), skips it while nothing changed.
    """
    import hashlib
    import json

    import nerflib

    overrides = config["train"]["overrides"] or {}
    presets = {sheet.loc[s, "preset"] or config["default_preset"] for s in sheet["scene"]}
    judges = [Path(nerflib.__file__).parent / n for n in ("configs.py", "models.py", "localize/options.py")]
    key = hashlib.sha256(json.dumps([overrides, sorted(presets), config["localize"],
                                     [(str(p), p.stat().st_mtime_ns) for p in judges]],
                                    sort_keys=True, default=str).encode()).hexdigest()
    try:
        if json.loads(Path(SETTINGS_CHECK).read_text()).get("good") == key:
            return
    except (OSError, ValueError, AttributeError):
        pass
    _check_settings(overrides, presets)
    from nerflib import fileio

    fileio.write_json(SETTINGS_CHECK, {"good": key})


def _check_settings(overrides, presets):
    from nerflib import configs, localize

    for preset in sorted(p if p in configs.PRESETS else configs.AUTO_CPU_PRESET for p in presets):
        try:
            configs.override(configs.get_preset(preset), **overrides)
        except ValueError as e:
            raise WorkflowError(f"config/config.yaml, train.overrides: {e} (with preset {preset}). "
                                "Fix or remove the entry; the fields are those of nerflib.configs.Config.")
    settings = {k: v for k, v in config["localize"].items() if k in localize.Options.__dataclass_fields__}
    try:
        configs.check_fields(localize.Options, {**settings, **(config["localize"]["options"] or {})},
                             what="localize option")
    except ValueError as e:
        raise WorkflowError(f"config/config.yaml, localize.options: {e}. Fix or remove the entry; the fields are "
                            "those of nerflib.localize.Options.")


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


def preset_of(scene):
    """The row's preset, else default_preset; `auto` is resolved by the train job, where the GPU is."""
    return sheet.loc[scene, "preset"] or config["default_preset"]


def train_params(wildcards):
    return {
        "preset": preset_of(wildcards.scene),
        "factor": factor_of(wildcards.scene),
        "overrides": config["train"]["overrides"],
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


def _sheet_error(scene, column, message):
    line = sheet.loc[scene, "line"]
    return WorkflowError(f"{SHEET_PATH}, line {line} (scene {scene!r}), column {column!r}: {message}")


def check_localize_columns():
    """queries / query_poses / query_gt make sense together (checked before any job starts)."""
    for scene in sheet["scene"]:
        r = sheet.loc[scene]
        if r["queries"] == "synthetic" and not is_synthetic(scene):
            raise _sheet_error(scene, "queries", "`synthetic` queries exist only for rows whose source is "
                               "`synthetic`; give a folder of photos instead.")
        for column in ("query_poses", "query_gt"):
            if r[column] and not r["queries"]:
                raise _sheet_error(scene, column, "needs a `queries` folder of photos to localize in the same row.")
        if r["query_gt"] and not Path(resolve(r["query_gt"])).exists():
            raise _sheet_error(scene, "query_gt", f"{r['query_gt']!r} does not exist "
                               f"(resolved to {Path(resolve(r['query_gt'])).resolve()}).")


check_localize_columns()
check_settings()
write_manifests()


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
