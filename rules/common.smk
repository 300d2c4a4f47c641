# Config and sheet loading and validation, the results layout, wildcard constraints and the
# small helpers every rule file uses. Everything here runs before any job starts, so a bad sheet
# fails early; checks.smk checks the rows' files, inputs.smk holds the input and param functions.
import os

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
INT_COLUMNS = ("factor", "tiles")


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


def _sheet_error(scene, column, message):
    line = sheet.loc[scene, "line"]
    return WorkflowError(f"{SHEET_PATH}, line {line} (scene {scene!r}), column {column!r}: {message}")


def preset_of(scene):
    """The row's preset, else default_preset; `auto` is resolved by the train job, where the GPU is."""
    return sheet.loc[scene, "preset"] or config["default_preset"]


def tiles_of(scene):
    """The row's spatial tiles (the `tiles` column), else config's train.tiles."""
    value = sheet.loc[scene].get("tiles") if "tiles" in sheet.columns else None
    return config["train"]["tiles"] if value is None or pd.isna(value) else int(value)


def train_overrides(scene):
    """train.overrides, with the row's tiles when K > 1 (K = 1 leaves the params, so nothing reruns)."""
    tiles = tiles_of(scene)
    return {**config["train"]["overrides"], **({"tiles": tiles} if tiles != 1 else {})}
