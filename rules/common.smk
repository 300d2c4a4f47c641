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


def image_folder(wildcards):
    """The folder of full-size photos of a scene."""
    if is_synthetic(wildcards.scene):
        return f"{synthetic_dir(wildcards.scene)}/images"
    return resolve(sheet.loc[wildcards.scene, "source"])


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


def all_targets():
    """The furthest product of every row."""
    targets = []
    for scene in sheet["scene"]:
        targets.append(f"results/{scene}/poses/summary.json")
        targets.append(f"results/{scene}/eval/metrics.tsv")
        if sheet.loc[scene, "render_path"] != "none":
            targets.append(f"results/{scene}/render/color.mp4")
    return targets
