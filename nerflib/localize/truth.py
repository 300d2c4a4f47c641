"""Ground truth of the query photos, the evaluation mode's perturbed starts, errors.tsv.

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
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nerflib import fileio, pose_checks, rigid
from nerflib.localize.poses import perturb_pose, to_normalized, to_original
from nerflib.types import Scene


def normalization_of(cfg, scene: Scene):
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


def errors_tsv(rows: list[dict]) -> str:
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


def error_summary(rows: list[dict]) -> dict:
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
    norm_scene, norm, cfg = normalization_of(checkpoint.load_config(model_dir), scene)
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
    fileio.write_text(Path(out_path), errors_tsv(rows))
    summary = error_summary(rows)
    log(f"localize errors: {summary}")
    return summary
