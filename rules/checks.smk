# Checks of user input that run when the workflow is parsed, before any job starts (a failing
# rerun never removes an earlier run's outputs, which Snakemake deletes before running a job):
# the photos and poses files of every row, query photos, training overrides and localize options;
# and the photo manifests declared beside photo folders (docs/architecture.md, What decides a rerun).
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError


PHOTO_CHECKS = ".snakemake/dnerf/photo_checks"  # what check_images found good, per scene and folder
CHECKED_EARLY = "(checked before any job starts: no earlier output was touched)"
_photos_checked = set()


def _check_photo_folder(scene, column, folder, cache, **checks):
    """Every photo of the row's `column` folder decodes (images.check_images with `checks`), before
    any job starts; once per parse. True when checked now.

    A bad photo found inside a job would come too late: Snakemake deletes the
    job's outputs (an earlier good run's sparse model, image pyramid) before
    running it. Only new or changed photos are decoded again (the cache file).
    """
    if (scene, column) in _photos_checked:
        return False
    from nerflib import images

    try:
        images.check_images(folder, cache=f"{PHOTO_CHECKS}/{cache}.json", **checks)
    except ValueError as e:
        raise _sheet_error(scene, column, f"{e} {CHECKED_EARLY}")
    _photos_checked.add((scene, column))
    return True


def check_photos(scene):
    """The scene's photo folder, once every photo in it decodes, and its poses file reads."""
    folder = resolve(sheet.loc[scene, "source"])
    # What the poses step needs too (3 photos; one size when SfM shares one camera; sizes upright, as
    # SfM sees them after rule intake), so that it never fails on them after Snakemake deleted an
    # earlier run's poses.
    sfm_camera = config["sfm"]["single_camera"] and not sheet.loc[scene, "poses"]
    if _check_photo_folder(scene, "source", folder, scene, min_images=3, single_camera=sfm_camera, upright=True):
        if sheet.loc[scene, "poses"]:
            check_poses_file(scene, "poses", folder, sheet.loc[scene, "poses_format"])
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
        raise _sheet_error(scene, column, f"{e} {CHECKED_EARLY}")


def check_query_poses(scene):
    """The row's query_poses file reads (before any job starts); it may name photos other than the queries."""
    from nerflib import scene_io

    try:
        scene_io.load_poses(resolve(sheet.loc[scene, "query_poses"]), check_images=False)
    except ValueError as e:
        raise _sheet_error(scene, "query_poses", f"{e} {CHECKED_EARLY}")


def check_query_photos(scene):
    """The row's query photos all decode and none is too large (before any job starts)."""
    folder = query_folder(scene)
    if folder and sheet.loc[scene, "queries"] != "synthetic":
        # the row's own folder (query_folder may be rule intake_queries' output, not written yet)
        _check_photo_folder(scene, "queries", resolve(sheet.loc[scene, "queries"]), f"{scene}.queries", min_images=1)
    return folder


SETTINGS_CHECK = ".snakemake/dnerf/settings_check.json"  # the last settings check_settings found good


def check_settings():
    """train.overrides, tiles and localize settings build a valid config for every row (before any job starts).

    Building the configs imports JAX (seconds); the settings found good last time (with the
    modules that judged them) are remembered in SETTINGS_CHECK, so that every later run, and
    every job (each parses this file again), skips it while nothing changed.
    """
    import hashlib
    import json

    import nerflib

    rows = {s: (preset_of(s), tiles_of(s)) for s in sheet["scene"]}
    judges = [Path(nerflib.__file__).parent / n
              for n in ("configs.py", "models.py", "model_config.py", "localize/options.py")]
    key = hashlib.sha256(json.dumps([config["train"], sorted(set(rows.values())), config["localize"],
                                     [(str(p), p.stat().st_mtime_ns) for p in judges]],
                                    sort_keys=True, default=str).encode()).hexdigest()
    try:
        if json.loads(Path(SETTINGS_CHECK).read_text()).get("good") == key:
            return
    except (OSError, ValueError, AttributeError):
        pass
    _check_settings(rows)
    from nerflib import fileio

    fileio.write_json(SETTINGS_CHECK, {"good": key})


def _check_settings(rows):
    """rows: {scene: (preset, tiles)}."""
    from nerflib import configs, localize

    checked = set()
    for scene, (preset, tiles) in rows.items():
        preset = preset if preset in configs.PRESETS else configs.AUTO_CPU_PRESET  # auto: tiny or fast, alike here
        if (preset, tiles) in checked:
            continue
        try:
            configs.override(configs.get_preset(preset), **train_overrides(scene))
        except ValueError as e:
            if tiles != 1 and "tiles" in str(e):
                message = f"{e} (preset {preset})."
                in_row = "tiles" in sheet.columns and not pd.isna(sheet.loc[scene].get("tiles"))
                raise _sheet_error(scene, "tiles", message) if in_row else WorkflowError(
                    f"config/config.yaml, train.tiles: {message}")
            raise WorkflowError(f"config/config.yaml, train.overrides: {e} (with preset {preset}). "
                                "Fix or remove the entry; the fields are those of nerflib.configs.Config.")
        checked.add((preset, tiles))
    settings = {k: v for k, v in config["localize"].items() if k in localize.Options.__dataclass_fields__}
    try:
        configs.check_fields(localize.Options, {**settings, **(config["localize"]["options"] or {})},
                             what="localize option")
    except ValueError as e:
        raise WorkflowError(f"config/config.yaml, localize.options: {e}. Fix or remove the entry; the fields are "
                            "those of nerflib.localize.Options.")


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
