"""The localization step: photos in a folder -> poses.json, views/ (and errors.tsv).

`optimize.localize` refines poses in the field's normalized frame; this module
turns photos in a folder into its inputs and its results into files:

Initial guesses (original frame of the scene), most trusted first, each
result saying which one it used (`start_used`):
  'pose_file'          the query's pose in a poses file (`query_poses`);
  'colmap'             absolute pose registration against the scene's COLMAP
                       model (`register_with_colmap`: SIFT matched to the
                       model's 3D-point observations, LO-RANSAC);
  'nearest_view:NAME'  the training view most like the photo (`nearest_view`).
  'perturbed_truth'    evaluation mode only (start='perturbed'): the ground
                       truth turned by exactly perturb_rot_deg about the camera
                       centre and moved by perturb_radius_fraction of the scene
                       radius, in random directions (fixed seed). It answers
                       "does refinement converge from this far off?"; it is not
                       a way to localize photos without ground truth.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from nerflib import cameras as cam_lib
from nerflib import fileio, parallel, scene_io
from nerflib import images as images_mod
from nerflib.localize.optimize import localize, score_poses
from nerflib.localize.options import WORKFLOW_OPTIONS, Options
from nerflib.localize.pixels import downsample
from nerflib.localize.poses import to_normalized, to_original
from nerflib.localize.starts import nearest_view, register_with_colmap
from nerflib.localize.truth import (
    error_rows,
    error_summary,
    errors_tsv,
    load_ground_truth,
    normalization_of,
    perturbed_starts,
    scene_radius,
)
from nerflib.settings import declared, setting
from nerflib.types import CAMERA_MODELS, Camera, Scene

STARTS = ("auto", "perturbed")


@dataclasses.dataclass(frozen=True)
class StartSettings:
    """How the queries start (config.yaml `localize:`, `nerf localize`; nerflib.settings)."""

    start: str = setting("auto", """Initial guesses. auto = the row's query_poses file, else COLMAP absolute pose
        registration against results/{scene}/sparse/0, else the nearest training view. perturbed = evaluation mode
        for rows with ground truth (query_gt, or the synthetic demo): the true pose turned by perturb_rot_deg and
        moved by perturb_radius_fraction of the scene radius; other rows use auto.""", choices=STARTS)
    perturb_rot_deg: float = setting(10.0, "Rotation of the perturbed starts (degrees, about the camera centre).",
                                     minimum=0, flag="--perturb-deg")
    perturb_radius_fraction: float = setting(
        0.1, "Camera-centre shift of the perturbed starts as a fraction of the scene radius.", minimum=0)


def workflow_settings() -> list:
    """The localization settings of config.yaml `localize:` and `nerf localize`, in that order
    (nerflib.settings.Setting); any other Options field goes through `options` / --set."""
    return declared(StartSettings) + declared(Options, WORKFLOW_OPTIONS)


def step_settings(settings: dict, options: dict | None = None) -> dict:
    """Keyword arguments of `localize_step` from the workflow settings (`workflow_settings` names; the
    rest default to their declarations) and `options` (other Options fields; a workflow setting wins).
    An unknown name raises ValueError naming it."""
    types = {s.name: s.type for s in workflow_settings()}
    unknown = sorted(set(settings) - set(types))
    if unknown:
        raise ValueError(f"localize: unknown setting(s) {', '.join(unknown)}; the settings are "
                         f"{', '.join(types)}, and `options` takes any field of nerflib.localize.Options")
    out = {**dict(options or {}), **settings}
    return {k: float(v) if types.get(k) is float else v for k, v in out.items()}  # YAML may give 10 for 10.0


def _query_camera(name: str, image: np.ndarray, pose_cams: dict[str, Camera], scene: Scene) -> Camera:
    h, w = image.shape[:2]
    if name in pose_cams:
        cam = pose_cams[name]
        if (cam.width, cam.height) != (w, h):
            raise ValueError(f"query {name}: the poses file gives a {cam.width}x{cam.height} camera for a "
                             f"{w}x{h} photo")
        return cam
    cam = scene.cameras[0]
    sx, sy = w / cam.width, h / cam.height
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise ValueError(f"query {name}: {w}x{h} does not have the aspect ratio of the scene's camera "
                         f"({cam.width}x{cam.height}); give its intrinsics in a poses file (query_poses=)")
    params = dict(zip(CAMERA_MODELS[cam.model], cam.params))
    scaled = tuple(v * (sx if n in ("f", "fx", "cx") else sy if n in ("fy", "cy") else 1.0)
                   for n, v in params.items())
    return Camera(cam.model, w, h, scaled)


# A field whose renders at the true poses correlate this little with the photos'
# edges cannot confirm any pose: the calibrated threshold never goes below it
# (a 20-step field scored 0.014 and would otherwise have passed a query 9 deg off).
MIN_THRESHOLD_NCC = 0.05


def calibrate(model, params, cfg, norm_scene: Scene, image_dir, *, near, far, mesh=None, ncc_fraction: float = 0.5,
              psnr_margin_db: float = 5.0, max_views: int = 4, problems: int | None = None, log=None,
              **options) -> dict | None:
    """Convergence thresholds from what the field achieves at known poses (None without images).

    Scores up to `max_views` held-out views of the scene (the training split
    when there are none) at their own poses with `score_poses`; the medians
    are the field's reference quality on photos it can explain. A localized
    query counts as converged when its gradient correlation reaches
    `ncc_fraction` of the reference and its PSNR is within `psnr_margin_db`
    of it. (Measured on the demo's tiny field: at the true pose queries reach
    0.26-0.35 gradient correlation, 1-3 degrees off 0.02-0.25, 7 degrees off
    ~0; PSNR moves by 1-5 dB over the same range, less on a blurry field.
    On the workflow's 1500-step demo field held-out views score 25.7 dB /
    0.66, queries localized to < 0.25 deg only 21.7-23.7 dB / 0.62-0.65: they
    lie off the orbit, where the field renders worse; queries stuck 1-14 deg
    off scored 14.4-17.6 dB / 0.02-0.26. Hence the 5 dB margin: with 3 dB,
    3 of those 4 good queries were flagged as not converged.)
    """
    from nerflib import datasets

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if image_dir is None:
        return None
    # image_dir holds the photos at the training factor; the dataset's cameras are scaled to match.
    kw = dict(image_dir=image_dir, factor=cfg.factor, white_background=cfg.white_background, normalize=None,
              near=near, far=far, lazy=True)
    ds = None
    for split, every in (("test", cfg.test_every), ("all", 0)):
        try:
            ds = datasets.load_dataset(norm_scene, split=split, test_every=every, **kw)
        except ValueError as e:
            log(f"localize: calibration views ({split}): {e}")
            continue
        if len(ds):
            break
    if ds is None or not len(ds):
        return None
    pick = np.linspace(0, len(ds) - 1, min(max_views, len(ds))).round().astype(int)
    ims = [ds.image_float(int(i)) for i in pick]
    cams = [ds.cameras[int(i)] for i in pick]
    s = score_poses(model, params, ims, cams, ds.c2w[pick], near=near, far=far, factor=1, mesh=mesh,
                    problems=problems, **options)
    ref_psnr, ref_ncc = float(np.median(s["psnr"])), float(np.median(s["ncc"]))
    out = {"views": [ds.names[int(i)] for i in pick], "split": ds.split, "reference_psnr": ref_psnr,
           "reference_ncc": ref_ncc, "threshold_psnr": ref_psnr - psnr_margin_db,
           "threshold_ncc": max(ncc_fraction * ref_ncc, MIN_THRESHOLD_NCC)}
    if ncc_fraction * ref_ncc < MIN_THRESHOLD_NCC:
        log(f"localize: WARNING the field renders too little detail to confirm a pose (gradient correlation "
            f"{ref_ncc:.3f} at known poses); queries are flagged converged only above {MIN_THRESHOLD_NCC}. "
            "Train the field longer.")
    log(f"localize: the field at the known poses of {len(pick)} {ds.split} view(s): PSNR {ref_psnr:.2f} dB, "
        f"gradient correlation {ref_ncc:.3f}; converged means PSNR >= {out['threshold_psnr']:.2f} and "
        f"correlation >= {out['threshold_ncc']:.3f}")
    return out


def localize_step(model_dir, scene_json, query_dir, out_dir, *, images=None, query_poses=None, gt_poses=None,
                  gt_reference=None, sparse_dir=None, database=None, start: str = StartSettings.start,
                  perturb_rot_deg: float = StartSettings.perturb_rot_deg,
                  perturb_radius_fraction: float = StartSettings.perturb_radius_fraction, perturb_seed: int = 0,
                  write_errors: bool = True, ncc_fraction: float = 0.5, psnr_margin_db: float = 5.0,
                  progress: bool = True, write_views: bool = True, log: Callable[[str], None] | None = None,
                  **options) -> dict:
    """Localize every photo in `query_dir` against the trained field in `model_dir`.

    scene_json : the scene the field was trained on (poses/scene.json, original frame).
    images     : the training images at the training factor (for nearest-view starts
                 and the calibration); default: the scene's image folder.
    query_poses: optional poses file (scene_io.load_poses formats) with initial poses
                 (and intrinsics) of the queries, in the scene's original frame.
    gt_poses, gt_reference : optional ground truth (see `load_ground_truth`); with
                 write_errors, out_dir/errors.tsv.
    sparse_dir, database : COLMAP model (and its database.db) for `register_with_colmap`.
    start, perturb_rot_deg, perturb_radius_fraction : StartSettings (their descriptions).
    ncc_fraction, psnr_margin_db : the convergence thresholds relative to the field's
                 reference quality (`calibrate`).
    options    : `Options` fields, and `factor` (base downsampling of the photos;
                 default the training factor).

    Writes out_dir/poses.json (scene.json format: camera-to-world, OpenCV axes, the
    scene's original frame, readable with scene_io.read_scene_json; per frame also
    c2w_start, psnr, gradient_ncc, photometric_error, converged, start_used, ...; at
    the top the calibration), out_dir/errors.tsv (see ERRORS_COLUMNS and the module
    docstring) and out_dir/views/<stem>.png (photo | render at the found pose |
    |difference|, at the training factor). Returns a summary dict.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if start not in STARTS:
        raise ValueError(f"localize: start must be one of {STARTS}, got {start!r}")
    if start == "perturbed" and not gt_poses:
        raise ValueError("localize: start='perturbed' (evaluation mode) perturbs the ground truth; pass gt_poses=")
    t0 = time.perf_counter()
    out_dir, query_dir = Path(out_dir), Path(query_dir)
    factor = options.pop("factor", None)
    opts = Options(**options)
    field = _load_field(model_dir, scene_json)
    scene = field.scene
    image_dir = Path(images) if images is not None else (Path(scene.image_dir) if scene.image_dir else None)
    names = images_mod.list_images(query_dir)
    photos = {n: images_mod.load_image(query_dir / n, background="white" if field.cfg.white_background else "black")
              for n in names}
    given = scene_io.load_poses(query_poses, check_images=False) if query_poses else None
    truth = load_ground_truth(gt_poses, scene, reference=gt_reference, log=log) if gt_poses else None
    cams = _query_cameras(photos, given, gt_poses, scene)

    starts = _initial_guesses(names, photos, cams, field, image_dir, given=given, truth=truth,
                              perturbed=start == "perturbed", perturb=(perturb_rot_deg, perturb_radius_fraction),
                              perturb_seed=perturb_seed, sparse_dir=sparse_dir, database=database, log=log)
    calib = calibrate(field.model, field.params, field.cfg, field.norm_scene, image_dir, near=field.near,
                      far=field.far, mesh=field.mesh, log=log, ncc_fraction=ncc_fraction,
                      psnr_margin_db=psnr_margin_db, n_eval=opts.n_eval, eval_chunk=opts.eval_chunk,
                      max_views=len(names) if 4 <= len(names) <= 16 else 4,
                      problems=len(names) * opts.restarts)  # shapes of localize's final scoring: one compile
    thresholds = {} if calib is None else {k: calib[k] for k in ("threshold_psnr", "threshold_ncc")}
    queries = [(n, photos[n], cams[n], to_normalized(starts[n][0], field.norm), starts[n][1]) for n in names]
    results = localize(field.model, field.params, field.cfg, queries, near=field.near, far=field.far, factor=factor,
                       mesh=field.mesh, progress=progress, log=log, **thresholds, **options)

    doc = _poses_doc(results, cams, starts, field, calib, image_dir=os.path.relpath(query_dir.resolve(),
                                                                                     out_dir.resolve()))
    main = jax.process_index() == 0  # every process computes; process 0 writes
    if main:
        fileio.write_json(out_dir / "poses.json", doc)
    summary = {"queries": len(results), "converged": sum(r["converged"] for r in results), "model_step": field.step,
               "starts": {r["name"]: r["start_used"] for r in results}}
    if truth is not None:
        rows = error_rows(doc["frames"], truth, field.norm, field.radius)
        if main and write_errors:
            fileio.write_text(out_dir / "errors.tsv", errors_tsv(rows))
        summary.update(error_summary(rows))
    if write_views:
        _write_views(results, photos, cams, field, out_dir / "views", main=main)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"localize: {summary}")
    return summary


@dataclasses.dataclass(frozen=True)
class _Field:
    """The trained field and the scene it was trained on, normalized as training did."""

    cfg: Any
    params: Any
    step: int
    model: Any
    render_fn: Any  # evaluate.field_of's chunk renderer (the views)
    mesh: Any
    scene: Scene
    norm_scene: Scene
    norm: dict | None
    radius: float
    near: float
    far: float


def _load_field(model_dir, scene_json) -> _Field:
    from nerflib import checkpoint, evaluate

    mesh = parallel.make_mesh()  # a tiled field's params replicated too: every device renders all tiles
    cfg, params, ckpt_step = checkpoint.restore_params(model_dir, mesh)
    scene = scene_io.read_scene_json(scene_json)
    norm_scene, norm, cfg = normalization_of(cfg, scene)
    near = cfg.near if cfg.near is not None else (norm_scene.near if norm_scene.near is not None else cfg.model.near)
    far = cfg.far if cfg.far is not None else (norm_scene.far if norm_scene.far is not None else cfg.model.far)
    model, render_fn = evaluate.field_of(cfg, params, mesh, num_images=max(1, len(scene)))  # untiled or tiled
    return _Field(cfg=cfg, params=params, step=ckpt_step, model=model, render_fn=render_fn, mesh=mesh, scene=scene,
                  norm_scene=norm_scene, norm=norm, radius=scene_radius(cfg, norm_scene), near=near, far=far)


def _query_cameras(photos: dict, given, gt_poses, scene: Scene) -> dict[str, Camera]:
    """Each photo's camera: from the poses file, else the ground truth's intrinsics (never its poses), else
    the scene's (`_query_camera`)."""
    pose_cams = {n: given.camera_of(i) for i, n in enumerate(given.names)} if given is not None else {}
    if gt_poses and not pose_cams:
        gt = scene_io.load_poses(gt_poses, check_images=False)
        pose_cams = {n: gt.camera_of(i) for i, n in enumerate(gt.names)}
    return {n: _query_camera(n, photo, pose_cams, scene) for n, photo in photos.items()}


def _initial_guesses(names, photos, cams, field: _Field, image_dir, *, given, truth, perturbed: bool, perturb,
                     perturb_seed, sparse_dir, database, log) -> dict[str, tuple[np.ndarray, str]]:
    """{name: (c2w in the original frame, start label)}: the most trusted start of each photo (module docstring)."""
    starts = {}
    if perturbed:
        starts.update(_perturbed(names, truth, field, rot_deg=perturb[0], radius_fraction=perturb[1],
                                 seed=perturb_seed, log=log))
    if given is not None:
        starts.update({n: (given.c2w[i], "pose_file") for i, n in enumerate(given.names)
                       if n in photos and n not in starts})
    starts.update(_from_colmap([n for n in names if n not in starts], photos, cams, sparse_dir, database, image_dir,
                               log))
    starts.update(_nearest_views([n for n in names if n not in starts], photos, field.scene, image_dir, log))
    return starts


def _perturbed(names, truth, field: _Field, *, rot_deg, radius_fraction, seed, log) -> dict:
    """Evaluation mode: the ground truth of each query that has one, moved (see perturbed_starts)."""
    known = {n: truth[n] for n in names if n in truth}
    moved = perturbed_starts(known, field.norm, field.radius, rot_deg=rot_deg, radius_fraction=radius_fraction,
                             seed=seed)
    log(f"localize: evaluation mode: {len(moved)} of {len(names)} queries start from the ground truth moved by "
        f"{rot_deg} deg and {100 * radius_fraction:g} % of the scene radius")
    return {n: (c, "perturbed_truth") for n, c in moved.items()}


def _from_colmap(todo, photos, cams, sparse_dir, database, image_dir, log) -> dict:
    """Starts of `todo` by absolute pose registration against the COLMAP model, where it registers them."""
    if not todo or sparse_dir is None or not Path(sparse_dir).is_dir():
        return {}
    try:
        db = database if database and Path(database).is_file() else None  # else: re-extract from images
        reg = register_with_colmap({n: photos[n] for n in todo}, sparse_dir, cameras=cams, database=db,
                                   image_dir=image_dir, log=log)
    except Exception as e:  # a broken model or database must not stop the fallback
        log(f"localize: COLMAP registration failed ({type(e).__name__}: {e}); using nearest views")
        reg = {}
    return {n: (r["c2w"], "colmap") for n, r in reg.items()}


def _nearest_views(todo, photos, scene: Scene, image_dir, log) -> dict:
    """Starts of `todo` at the training view most like each photo (the last resort)."""
    if not todo:
        return {}
    if image_dir is None:
        raise ValueError(f"no initial pose for {len(todo)} queries (e.g. {todo[0]}) and no training images "
                         "for nearest-view retrieval; pass query_poses=, sparse_dir= or images=")
    refs = [images_mod.load_image(image_dir / n) for n in scene.names]
    out = {}
    for n in todo:
        k, score = nearest_view(photos[n], refs)
        out[n] = (scene.c2w[k], f"nearest_view:{scene.names[k]}")
        log(f"localize: {n}: nearest training view {scene.names[k]} (correlation {score:.3f})")
    return out


def _poses_doc(results, cams, starts, field: _Field, calib, *, image_dir: str) -> dict:
    """poses.json: the results in the scene's own format and frame (scene_io.read_scene_json reads it)."""
    table: dict = {}
    frames = []
    for r in results:
        cam_i = table.setdefault(cams[r["name"]], len(table))
        frames.append({"name": r["name"], "camera": cam_i, "c2w": to_original(r["c2w"], field.norm).tolist(),
                       "c2w_start": np.asarray(starts[r["name"]][0], np.float64).tolist(),
                       **{k: r[k] for k in ("psnr", "gradient_ncc", "photometric_error", "converged", "start_used",
                                            "psnr_start", "gradient_ncc_start", "restart", "focal_scale")}})
    doc = scene_io.scene_to_dict(Scene(names=[], c2w=np.zeros((0, 3, 4)), cameras=list(table),
                                       camera_idx=np.zeros(0, np.int32)))
    doc.update(frames=frames, image_dir=image_dir, near=None, far=None, model_step=field.step, calibration=calib,
               thresholds={"psnr": results[0]["threshold_psnr"], "ncc": results[0]["threshold_ncc"]})
    return doc


def _write_views(results, photos, cams, field: _Field, folder: Path, *, main: bool) -> None:
    """views/<stem>.png: photo | render at the found pose | difference, at the training factor."""
    from nerflib import evaluate

    f = field.cfg.factor
    for r in results:
        photo = downsample(photos[r["name"]], f)
        small = cam_lib.scale_camera(cams[r["name"]], f)
        if r["focal_scale"] != 1.0:
            small = Camera(small.model, small.width, small.height, tuple(
                v * r["focal_scale"] if n in ("f", "fx", "fy") else v
                for n, v in zip(CAMERA_MODELS[small.model], small.params)))
        rays = cam_lib.generate_rays(small, r["c2w"], near=field.near, far=field.far)
        out = evaluate.render_image(field.model, field.params, rays, chunk_size=field.cfg.render_chunk_size,
                                    mesh=field.mesh, render_fn=field.render_fn)
        if main:
            fileio.write_image(folder / (Path(r["name"]).stem + ".png"), evaluate.side_by_side(photo, out["rgb"]))
