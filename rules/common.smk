# Sheet loading and validation, input functions and wildcard constraints.
# Everything here runs before any job starts, so a bad sheet fails early.
import os
from pathlib import Path

import jsonschema
import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, schema="../config/schemas/config.schema.yaml")

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
    """Read and validate the per-scene sheet; return a DataFrame indexed by scene."""
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except Exception as e:
        raise WorkflowError(f"cannot read the dataset sheet {path}: {e}")
    raw.columns = [c.strip() for c in raw.columns]
    records = []
    for i, row in raw.iterrows():
        line = i + 2  # header is line 1
        record = {k: v.strip() for k, v in row.items() if v.strip() != ""}
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
    for rec in records:
        for column in ("source", "queries", "poses", "query_poses"):
            value = rec.get(column, "")
            if value in ("", "synthetic"):
                continue
            folder = Path(os.path.expandvars(os.path.expanduser(value)))
            if not folder.exists():
                raise WorkflowError(
                    f"{path}, line {rec['line']} (scene {rec['scene']!r}), column {column!r}: "
                    f"{value!r} does not exist (resolved to {folder.resolve()}). "
                    "Fix the path, or use `synthetic` for the built-in demo scene."
                )
    return sheet.set_index("scene", drop=False)


sheet = load_sheet(SHEET_PATH)


wildcard_constraints:
    scene="|".join(sheet["scene"]),
    factor="[248]",


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

        images.check_images(folder, min_images=1, cache=f"{PHOTO_CHECKS}/{scene}.json")
    except ValueError as e:
        raise _sheet_error(scene, "source", f"{e} (checked before any job starts: no earlier output was touched)")
    _photos_checked.add(scene)
    return folder


def image_folder(wildcards):
    """The folder of full-size photos of a scene (checked: check_photos)."""
    if is_synthetic(wildcards.scene):
        return f"{synthetic_dir(wildcards.scene)}/images"
    return check_photos(wildcards.scene)


def poses_input(wildcards):
    """Inputs of the poses step: the photos, plus the scene generator or a poses file."""
    inputs = {"images": image_folder(wildcards)}
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
    return f"results/{wildcards.scene}/images_{factor}"


def preset_of(scene):
    return sheet.loc[scene, "preset"] or config["default_preset"]


def train_params(wildcards):
    return {
        "preset": preset_of(wildcards.scene),
        "factor": factor_of(wildcards.scene),
        "overrides": config["train"]["overrides"],
    }


def render_params(wildcards):
    r = sheet.loc[wildcards.scene]
    keyframes = [k.strip() for k in r["render_keyframes"].split(",") if k.strip()]
    return {
        "path": r["render_path"],
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


def query_folder(scene):
    """The folder of photos to localize ('' when the row has none)."""
    queries = sheet.loc[scene, "queries"]
    if queries == "synthetic":
        return f"{synthetic_dir(scene)}/queries"
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
        "scene": f"results/{scene}/poses/scene.json",
        "images": training_images(wildcards),
        "model": f"results/{scene}/model/final.json",
        "sparse": f"results/{scene}/sparse/0",
        "queries": query_folder(scene),
    }
    if sheet.loc[scene, "query_poses"]:
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
        "sparse_dir": f"results/{scene}/sparse/0",
        "database": f"results/{scene}/database.db",
    }


def localize_errors_input(wildcards):
    scene = wildcards.scene
    return {
        "poses": f"results/{scene}/localize/poses.json",
        "scene": f"results/{scene}/poses/scene.json",
        "model": f"results/{scene}/model/final.json",
        "truth": query_truth(scene)["input"],
    }


def localize_errors_params(wildcards):
    truth = query_truth(wildcards.scene)
    return {"gt_poses": truth["gt_poses"], "gt_reference": truth["gt_reference"]}


def all_targets():
    """The furthest product of every row."""
    targets = []
    for scene in sheet["scene"]:
        targets.append(f"results/{scene}/poses/summary.json")
        targets.append(f"results/{scene}/eval/metrics.tsv")
        targets.append(f"results/{scene}/report/cameras.png")
        if sheet.loc[scene, "render_path"] != "none":
            targets.append(f"results/{scene}/render/color.mp4")
        if query_folder(scene):
            targets.append(f"results/{scene}/localize/poses.json")
            if query_truth(scene):
                targets.append(f"results/{scene}/localize/errors.tsv")
    return targets
