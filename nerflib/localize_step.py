"""The localization step: initial guesses, ground truth, calibration and outputs.

`localize.localize` refines poses in the field's normalized frame; this module
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

Ground truth (`gt_poses`, any scene_io.load_poses format) may live in another
frame than the scene's (the demo's generator frame against SfM's): with
`gt_reference`, poses of the training photos in the ground truth's frame, or
when the ground-truth file itself holds at least 3 of the training photos,
the ground truth is mapped into the scene's frame by the similarity
(`rigid.umeyama`) between those photos' camera centres; otherwise it is taken
to be in the scene's frame already.

Errors (errors.tsv): rotation error in degrees; camera-centre error in % of
the scene radius, the largest distance of a training camera from the scene
centre (1 in the normalized frame of a 360 capture).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from nerflib import cameras as cam_lib
from nerflib import fileio, parallel, pose_checks, rigid
from nerflib.localize import (Options, downsample, localize, perturb_pose, score_poses, to_normalized, to_original,
                              _uses_glo)
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
    from nerflib.localize import WORKFLOW_OPTIONS

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


# --------------------------------------------------------------------------- initial guesses


def _thumbnail(image: np.ndarray, size=(32, 24)) -> np.ndarray:
    """Zero-mean, unit-norm grey thumbnail [size[1] * size[0]] (float64) for retrieval."""
    import cv2

    gray = np.asarray(image, np.float32).mean(-1)
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    small -= small.mean()
    return small / max(np.linalg.norm(small), 1e-12)


def nearest_view(image: np.ndarray, references: Sequence[np.ndarray]) -> tuple[int, float]:
    """(index, correlation) of the reference image [h, w, 3] most like `image` (grey thumbnail correlation)."""
    if not len(references):
        raise ValueError("nearest_view needs at least one reference image")
    t = _thumbnail(image)
    scores = np.array([float(t @ _thumbnail(r)) for r in references])
    best = int(np.argmax(scores))
    return best, float(scores[best])


def _pycolmap_camera(camera: Camera):
    import pycolmap

    return pycolmap.Camera(model=camera.model, width=int(camera.width), height=int(camera.height),
                           params=list(camera.params))


def _sift(image: np.ndarray, max_num_features: int = 8192):
    """(keypoints [M, 2] xy (COLMAP pixel convention), descriptors [M, 128] float32 unit rows) by pycolmap SIFT.

    Grey = Rec. 709 luma of the 8-bit RGB photo: with it the keypoints and
    descriptors equal those COLMAP's own extraction stored in its database
    (checked on the demo scene: 200 of 200 keypoints, cosine 1.0).
    """
    import warnings

    import pycolmap

    gray = np.asarray(image, np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    gray = np.ascontiguousarray(np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8))
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_num_features)
    opts.sift.first_octave = -1 if max(gray.shape) <= 1024 else 0  # as sfm.py chooses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycolmap.Sift: the array API that is documented
        sift = pycolmap.Sift(opts, device=pycolmap.Device.cpu)
    kp, desc = sift.extract(gray)
    desc = np.asarray(desc, np.float32)
    return np.asarray(kp)[:, :2], desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def _reference_bank(rec, database, image_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors [M, 128] unit rows, points3D [M, 3], point ids [M]): one row per observation of a 3D point.

    Descriptors come from the SfM database (its keypoint order is the
    reconstruction's points2D order); without one, SIFT is run again on the
    images in image_dir and each observation takes the descriptor of the
    keypoint within 1.5 px.
    """
    import contextlib

    import pycolmap

    descs, xyz, ids = [], [], []
    db = pycolmap.Database.open(str(database)) if database is not None else None
    with contextlib.ExitStack() as stack:
        if db is not None:
            stack.callback(db.close)
        for image in rec.images.values():
            pts = [(i, p) for i, p in enumerate(image.points2D) if p.has_point3D()]
            if not pts:
                continue
            idx = np.array([i for i, _ in pts])
            pid = np.array([p.point3D_id for _, p in pts])
            p3d = np.array([rec.points3D[k].xyz for k in pid])
            if db is not None:
                try:
                    d = np.asarray(db.read_descriptors(db.read_image_with_name(image.name).image_id).data, np.float32)
                except Exception:
                    continue
                d = d[idx]
            else:
                if image_dir is None or not (Path(image_dir) / image.name).is_file():
                    continue
                from nerflib.images import load_image

                kp, dd = _sift(load_image(Path(image_dir) / image.name))
                xy = np.array([p.xy for _, p in pts])
                dist = np.linalg.norm(xy[:, None, :] - kp[None, :, :], axis=-1)
                near = dist.argmin(1)
                ok = dist[np.arange(len(xy)), near] < 1.5
                d, p3d, pid = dd[near[ok]], p3d[ok], pid[ok]
            descs.append(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12))
            xyz.append(p3d)
            ids.append(pid)
    if not descs:
        return np.zeros((0, 128), np.float32), np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(descs).astype(np.float32), np.concatenate(xyz), np.concatenate(ids)


def register_with_colmap(query_images: dict[str, np.ndarray], sparse_dir, *, cameras: dict[str, Camera],
                         database=None, image_dir=None, ratio: float = 0.8, min_inliers: int = 20,
                         log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Absolute poses of query photos against a COLMAP model (original frame).

    query_images : name -> float [H, W, 3]; cameras: name -> Camera of that photo.
    sparse_dir   : the COLMAP model (with 3D points); database: its database.db
                   (descriptors), else image_dir to re-extract them.
    Matches query SIFT to the model's 3D-point observations (ratio test), then
    pycolmap.estimate_and_refine_absolute_pose (LO-RANSAC + refinement).
    Returns name -> {'c2w' [3, 4], 'num_inliers', 'num_matches'} for the photos
    registered with at least `min_inliers` inliers (others are left out).
    """
    import cv2
    import pycolmap

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rec = pycolmap.Reconstruction(str(sparse_dir))
    bank, xyz, ids = _reference_bank(rec, database, image_dir)
    if len(bank) < min_inliers:
        log(f"register_with_colmap: {sparse_dir} has {len(bank)} usable 3D-point descriptors: nothing to match")
        return {}
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    out = {}
    for name, image in query_images.items():
        kp, desc = _sift(image)
        if len(kp) < min_inliers:
            continue
        # Ratio test against the nearest descriptor of *another* 3D point: the bank holds
        # every observation, so the runner-up is often the same point seen from elsewhere.
        good = []
        for cand in matcher.knnMatch(desc, bank, k=8):
            rival = next((m for m in cand[1:] if ids[m.trainIdx] != ids[cand[0].trainIdx]), None) if cand else None
            if cand and (rival is None or cand[0].distance < ratio * rival.distance):
                good.append(cand[0])
        if len(good) < min_inliers:
            log(f"register_with_colmap: {name}: {len(good)} matches after the ratio test")
            continue
        pts2d = np.array([kp[m.queryIdx] for m in good], np.float64)
        pts3d = np.array([xyz[m.trainIdx] for m in good], np.float64)
        est = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, _pycolmap_camera(cameras[name]))
        n_in = int(est["num_inliers"]) if est else 0
        log(f"register_with_colmap: {name}: {len(good)} matches, {n_in} inliers")
        if est is None or n_in < min_inliers:
            continue
        w2c = np.asarray(est["cam_from_world"].matrix(), np.float64)
        R, t = w2c[:, :3], w2c[:, 3]
        out[name] = {"c2w": np.concatenate([R.T, (-R.T @ t)[:, None]], axis=1), "num_inliers": n_in,
                     "num_matches": len(good)}
    return out


# --------------------------------------------------------------------------- frames and ground truth


def _normalization_of(cfg, scene: Scene):
    """(normalized scene, transform or None, cfg) exactly as training normalized it (steps._load_split)."""
    from nerflib import configs, scene_io

    # Only the normalization: the model fields for_scene adapts are in the checkpoint's config already.
    cfg = dataclasses.replace(cfg, normalize=configs.normalization_for(cfg, scene))
    if cfg.normalize is None:
        return scene, None, cfg
    norm_scene, transform = scene_io.normalize_scene(scene, mode=cfg.normalize)
    return norm_scene, transform, cfg


def scene_radius(cfg, norm_scene: Scene) -> float:
    """The scene radius in the normalized frame: the largest camera distance from the scene centre.

    1 for mode '360' (normalize_scene scales the cameras into the unit ball
    about their focus point); otherwise measured from the mean camera centre.
    """
    if cfg.normalize == "360":
        return 1.0
    centres = norm_scene.c2w[:, :, 3]
    return float(np.linalg.norm(centres - centres.mean(0), axis=1).max())


def load_ground_truth(gt_poses, scene: Scene, *, reference=None, log: Callable[[str], None] | None = None
                      ) -> dict[str, np.ndarray]:
    """name -> true c2w [3, 4] in the scene's original frame (aligned as the module docstring says).

    gt_poses  : poses file of (at least) the query photos, any scene_io.load_poses format.
    reference : optional poses file of the training photos in the same frame as gt_poses.
    """
    from nerflib import scene_io

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    gt = scene_io.load_poses(gt_poses, check_images=False)
    truth = {n: gt.c2w[i] for i, n in enumerate(gt.names)}
    in_scene = set(scene.names)
    ref = {n: c for n, c in truth.items() if n in in_scene}
    if reference:
        r = scene_io.load_poses(reference, check_images=False)
        ref.update({n: r.c2w[i] for i, n in enumerate(r.names) if n in in_scene})
    shared = [n for n in scene.names if n in ref]
    if len(shared) < 3:
        if reference:
            raise ValueError(f"{reference}: only {len(shared)} of its photos are training photos of the scene; "
                             "at least 3 are needed to map the ground truth into the scene's frame")
        log(f"localize: ground truth {gt_poses} taken to be in the scene's frame (no training photos to align by)")
        return truth
    src = np.stack([ref[n] for n in shared])
    dst = scene.c2w[[scene.names.index(n) for n in shared]]
    s, R, t = rigid.umeyama(src[:, :, 3], dst[:, :, 3], with_scale=True)
    moved = rigid.apply_similarity_to_poses(src, s, R, t)
    spread = float(np.linalg.norm(dst[:, :, 3] - dst[:, :, 3].mean(0), axis=1).max())
    pos = 100.0 * float(np.median(np.linalg.norm(moved[:, :, 3] - dst[:, :, 3], axis=1))) / max(spread, 1e-12)
    rot = float(np.median(rigid.rotation_error_deg(moved[:, :, :3], dst[:, :, :3])))
    log(f"localize: ground truth mapped into the scene's frame through {len(shared)} training photos "
        f"(scale {s:.4g}; their median residual {rot:.3f} deg, {pos:.3f} % of the radius)")
    if rot > pose_checks.ALIGN_WARN_DEG or pos > 100 * pose_checks.ALIGN_WARN_RADIUS_FRACTION:
        worst = np.argsort(-rigid.rotation_error_deg(moved[:, :, :3], dst[:, :, :3]))[:5]
        log(f"localize: WARNING: the ground truth and the scene's poses disagree (median residual {rot:.2f} deg, "
            f"{pos:.1f} % of the radius; most off: {', '.join(shared[k] for k in worst)}): query errors measured "
            "against this ground truth show the disagreement, not the localization. Check the scene's poses "
            "(the pose diagnostics in poses/summary.json, docs/pose_diagnostics.md) and that gt and reference "
            "name the same photos.")
    return {n: rigid.apply_similarity_to_poses(c, s, R, t) for n, c in truth.items()}


def perturbed_starts(truth: dict[str, np.ndarray], norm, radius: float, *, rot_deg: float,
                     radius_fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """name -> the true pose (original frame) turned by exactly rot_deg and moved by radius_fraction * radius."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(truth):
        c = perturb_pose(to_normalized(truth[name], norm), rng, rot_deg=rot_deg, trans=radius_fraction * radius)
        out[name] = to_original(c, norm)
    return out


# --------------------------------------------------------------------------- errors


ERRORS_COLUMNS = ("name", "rot_err_deg", "trans_err_pct", "rot_err_start_deg", "trans_err_start_pct", "psnr",
                  "gradient_ncc", "converged", "start_used")


def error_rows(frames: Sequence[dict], truth: dict[str, np.ndarray], norm, radius: float) -> list[dict]:
    """One errors.tsv row per frame with ground truth.

    frames: dicts with name, c2w and c2w_start [3, 4] (original frame), psnr,
    gradient_ncc, converged, start_used (as in poses.json); truth: name -> c2w
    (original frame); radius in the normalized frame (`scene_radius`).
    """
    rows = []
    for f in frames:
        if f["name"] not in truth:
            continue
        g = to_normalized(truth[f["name"]], norm)
        c = to_normalized(np.asarray(f["c2w"], np.float64), norm)
        s0 = to_normalized(np.asarray(f["c2w_start"], np.float64), norm)
        rows.append({
            "name": f["name"],
            "rot_err_deg": float(rigid.rotation_error_deg(c[:, :3], g[:, :3])),
            "trans_err_pct": 100.0 * float(np.linalg.norm(c[:, 3] - g[:, 3])) / radius,
            "rot_err_start_deg": float(rigid.rotation_error_deg(s0[:, :3], g[:, :3])),
            "trans_err_start_pct": 100.0 * float(np.linalg.norm(s0[:, 3] - g[:, 3])) / radius,
            "psnr": float(f["psnr"]), "gradient_ncc": float(f["gradient_ncc"]), "converged": bool(f["converged"]),
            "start_used": str(f["start_used"]),
        })
    return rows


def _errors_tsv(rows: list[dict]) -> str:
    """One row per query with ground truth, then 'median' (and converged as a count)."""
    cols = ERRORS_COLUMNS
    table = [list(cols)]
    for r in rows:
        table.append([str(r[c]) if isinstance(r[c], (str, bool)) else f"{r[c]:.4f}" for c in cols])
    if rows:
        num = cols[1:7]
        med = {c: float(np.median([r[c] for r in rows])) for c in num}
        conv = sum(r["converged"] for r in rows)
        table.append(["median"] + [f"{med[c]:.4f}" for c in num] + [f"{conv}/{len(rows)}", ""])
    return fileio.tsv_text(table)


def _error_summary(rows: list[dict]) -> dict:
    if not rows:
        return {}
    return {"median_rot_err_deg": float(np.median([x["rot_err_deg"] for x in rows])),
            "median_trans_err_pct": float(np.median([x["trans_err_pct"] for x in rows])),
            "with_truth": len(rows)}


def localize_errors(poses_json, scene_json, model_dir, gt_poses, out_path, *, gt_reference=None,
                    log: Callable[[str], None] | None = None) -> dict:
    """errors.tsv of a finished localization (poses.json) against ground truth; no field is loaded.

    model_dir gives the training config (how the scene was normalized, hence
    the radius). Raises ValueError when the ground truth names none of the
    localized photos. Returns the medians.
    """
    from nerflib import checkpoint, scene_io

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    scene = scene_io.read_scene_json(scene_json)
    norm_scene, norm, cfg = _normalization_of(checkpoint.load_config(model_dir), scene)
    frames = json.loads(Path(poses_json).read_text())["frames"]
    missing = [f["name"] for f in frames if "c2w_start" not in f]
    if missing:
        raise ValueError(f"{poses_json}: frames without c2w_start (e.g. {missing[0]}); localize again")
    truth = load_ground_truth(gt_poses, scene, reference=gt_reference, log=log)
    rows = error_rows(frames, truth, norm, scene_radius(cfg, norm_scene))
    if not rows:
        names = ", ".join(f["name"] for f in frames[:3])
        raise ValueError(f"{gt_poses}: no ground truth for any localized photo ({names}, ...); "
                         "the names in the ground-truth file must be the query photos' file names")
    fileio.write_text(Path(out_path), _errors_tsv(rows))
    summary = _error_summary(rows)
    log(f"localize errors: {summary}")
    return summary


# --------------------------------------------------------------------------- the pipeline step


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
    start      : 'auto' (poses file, COLMAP registration, nearest view) or 'perturbed'
                 (evaluation mode: queries with ground truth start from it, turned by
                 perturb_rot_deg and moved by perturb_radius_fraction of the scene
                 radius; the others start as with 'auto').
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
    from nerflib import checkpoint, evaluate, models, scene_io
    from nerflib import images as images_mod

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if start not in STARTS:
        raise ValueError(f"localize: start must be one of {STARTS}, got {start!r}")
    if start == "perturbed" and not gt_poses:
        raise ValueError("localize: start='perturbed' (evaluation mode) perturbs the ground truth; pass gt_poses=")
    t0 = time.perf_counter()
    out_dir, query_dir = Path(out_dir), Path(query_dir)
    factor = options.pop("factor", None)
    opts = Options(**options)
    mesh = parallel.make_mesh()
    cfg, params, ckpt_step = checkpoint.restore_params(model_dir, mesh)
    scene = scene_io.read_scene_json(scene_json)
    norm_scene, norm, cfg = _normalization_of(cfg, scene)
    radius = scene_radius(cfg, norm_scene)
    near = cfg.near if cfg.near is not None else (norm_scene.near if norm_scene.near is not None else cfg.model.near)
    far = cfg.far if cfg.far is not None else (norm_scene.far if norm_scene.far is not None else cfg.model.far)
    model = models.make_model(cfg.model, num_images=evaluate.num_images_of(params, max(1, len(scene))))
    image_dir = Path(images) if images is not None else (Path(scene.image_dir) if scene.image_dir else None)

    names = images_mod.list_images(query_dir)
    photos = {n: images_mod.load_image(query_dir / n, background="white" if cfg.white_background else "black")
              for n in names}
    given = scene_io.load_poses(query_poses, check_images=False) if query_poses else None
    pose_cams = {n: given.camera_of(i) for i, n in enumerate(given.names)} if given is not None else {}
    truth = None
    if gt_poses:
        truth = load_ground_truth(gt_poses, scene, reference=gt_reference, log=log)
        if not pose_cams:
            gt = scene_io.load_poses(gt_poses, check_images=False)
            pose_cams = {n: gt.camera_of(i) for i, n in enumerate(gt.names)}  # intrinsics only, never poses
    cams = {n: _query_camera(n, photos[n], pose_cams, scene) for n in names}

    # Initial guesses (original frame), most trusted first.
    starts: dict[str, tuple[np.ndarray, str]] = {}
    if start == "perturbed":
        known = {n: truth[n] for n in names if n in truth}
        moved = perturbed_starts(known, norm, radius, rot_deg=perturb_rot_deg,
                                 radius_fraction=perturb_radius_fraction, seed=perturb_seed)
        starts.update({n: (c, "perturbed_truth") for n, c in moved.items()})
        log(f"localize: evaluation mode: {len(moved)} of {len(names)} queries start from the ground truth moved by "
            f"{perturb_rot_deg} deg and {100 * perturb_radius_fraction:g} % of the scene radius")
    if given is not None:
        for i, n in enumerate(given.names):
            if n in photos and n not in starts:
                starts[n] = (given.c2w[i], "pose_file")
    todo = [n for n in names if n not in starts]
    if todo and sparse_dir is not None and Path(sparse_dir).is_dir():
        try:
            db = database if database and Path(database).is_file() else None  # else: re-extract from images
            reg = register_with_colmap({n: photos[n] for n in todo}, sparse_dir, cameras=cams, database=db,
                                       image_dir=image_dir, log=log)
        except Exception as e:  # a broken model or database must not stop the fallback
            log(f"localize: COLMAP registration failed ({type(e).__name__}: {e}); using nearest views")
            reg = {}
        for n, r in reg.items():
            starts[n] = (r["c2w"], "colmap")
    todo = [n for n in names if n not in starts]
    if todo:
        if image_dir is None:
            raise ValueError(f"no initial pose for {len(todo)} queries (e.g. {todo[0]}) and no training images "
                             "for nearest-view retrieval; pass query_poses=, sparse_dir= or images=")
        refs = [images_mod.load_image(image_dir / n) for n in scene.names]
        for n in todo:
            k, score = nearest_view(photos[n], refs)
            starts[n] = (scene.c2w[k], f"nearest_view:{scene.names[k]}")
            log(f"localize: {n}: nearest training view {scene.names[k]} (correlation {score:.3f})")

    calib = calibrate(model, params, cfg, norm_scene, image_dir, near=near, far=far, mesh=mesh, log=log,
                      ncc_fraction=ncc_fraction, psnr_margin_db=psnr_margin_db, n_eval=opts.n_eval,
                      eval_chunk=opts.eval_chunk, max_views=len(names) if 4 <= len(names) <= 16 else 4,
                      problems=len(names) * opts.restarts)  # shapes of localize's final scoring: one compile
    thresholds = {} if calib is None else {k: calib[k] for k in ("threshold_psnr", "threshold_ncc")}
    queries = [(n, photos[n], cams[n], to_normalized(starts[n][0], norm), starts[n][1]) for n in names]
    results = localize(model, params, cfg, queries, near=near, far=far, factor=factor, mesh=mesh,
                       progress=progress, log=log, **thresholds, **options)

    # poses.json in the scene's own format and frame.
    table: dict = {}
    frames = []
    for r in results:
        cam_i = table.setdefault(cams[r["name"]], len(table))
        frames.append({"name": r["name"], "camera": cam_i, "c2w": to_original(r["c2w"], norm).tolist(),
                       "c2w_start": np.asarray(starts[r["name"]][0], np.float64).tolist(),
                       **{k: r[k] for k in ("psnr", "gradient_ncc", "photometric_error", "converged", "start_used",
                                            "psnr_start", "gradient_ncc_start", "restart", "focal_scale")}})
    doc = scene_io.scene_to_dict(Scene(names=[], c2w=np.zeros((0, 3, 4)), cameras=list(table),
                                       camera_idx=np.zeros(0, np.int32)))
    doc.update(frames=frames, image_dir=os.path.relpath(query_dir.resolve(), out_dir.resolve()), near=None,
               far=None, model_step=ckpt_step, calibration=calib,
               thresholds={"psnr": results[0]["threshold_psnr"], "ncc": results[0]["threshold_ncc"]})
    main = jax.process_index() == 0  # every process computes; process 0 writes
    if main:
        fileio.write_json(out_dir / "poses.json", doc)

    summary = {"queries": len(results), "converged": sum(r["converged"] for r in results), "model_step": ckpt_step,
               "starts": {r["name"]: r["start_used"] for r in results}}
    if truth is not None:
        rows = error_rows(frames, truth, norm, radius)
        if main and write_errors:
            fileio.write_text(out_dir / "errors.tsv", _errors_tsv(rows))
        summary.update(_error_summary(rows))
    if write_views:
        fn = evaluate.make_render_fn(model, mesh, zero_glo=_uses_glo(model))
        for r in results:
            cam = cams[r["name"]]
            f = cfg.factor
            photo = downsample(photos[r["name"]], f)
            small = cam_lib.scale_camera(cam, f)
            if r["focal_scale"] != 1.0:
                small = Camera(small.model, small.width, small.height, tuple(
                    v * r["focal_scale"] if n in ("f", "fx", "fy") else v
                    for n, v in zip(CAMERA_MODELS[small.model], small.params)))
            rays = cam_lib.generate_rays(small, r["c2w"], near=near, far=far)
            out = evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh,
                                        render_fn=fn)
            if main:
                fileio.write_image(out_dir / "views" / (Path(r["name"]).stem + ".png"),
                                   evaluate.side_by_side(photo, out["rgb"]))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"localize: {summary}")
    return summary
