"""Is a pose set trustworthy? Diagnostics of an SfM reconstruction and of two aligned pose sets.

Why: SfM on a capture with symmetry or repetition (a near-symmetric object on
a tiled floor) can register every photo with a small reprojection error and
still put neighbouring video frames on opposite sides of the object. The
figures here look for that without ground truth; docs/pose_diagnostics.md says
what each one means and what to do when it warns.

  view_graph(database)           verified image pairs (inliers > 0), each image's
                                 degree, connected components, and whether the
                                 file names follow the capture order (`looks_ordered`)
  image_stats(rec)               per-image observations, track lengths
  camera_checks(rec)             implausible intrinsics (a failed self-calibration)
  capture_order(names)           names sorted with digit runs by value (video frames)
  path_continuity(names, c2w)    for ordered captures: rotation angle and centre
                                 distance between neighbours against their median;
                                 jumps flagged by name, the path split into arcs
  pose_checks_pairs.pair_consistency(rec, database)
                                 the model's relative rotations against those of
                                 each photo's strongest verified pairs; photos
                                 their pairs contradict, by name
  diagnose(...)                  all of the above as one JSON-able dict plus
                                 `warnings` (strings naming the photos, with advice)
  compare_poses(est, gt)         similarity-aligned errors of one pose set against
                                 another (rigid.pose_errors), with the alignment
                                 residuals and a warning when they are large

Short names: c2w [N, 3, 4] camera-to-world (OpenCV axes); `names` [N] in the
same order; `rot_deg`, `step` per neighbour pair [N - 1].
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from nerflib import pose_checks_pairs, rigid

# A neighbour step is a jump when its rotation exceeds JUMP_FACTOR times the
# median step and JUMP_MIN_DEG, or its centre distance exceeds JUMP_FACTOR
# times the median distance (and JUMP_MIN_RADIUS_FRACTION of the path radius).
# Smooth video changes its step by a factor ~2 at most; a frame placed on the
# other side of a symmetric object jumps by tens of steps.
JUMP_FACTOR = 4.0
JUMP_MIN_DEG = 5.0
JUMP_MIN_RADIUS_FRACTION = 0.05
# An image is weak when it has fewer than WEAK_MIN_OBSERVATIONS 3D points or
# fewer than WEAK_FRACTION of the median image's.
WEAK_MIN_OBSERVATIONS = 40
WEAK_FRACTION = 0.15
# The names are taken to be in capture order when, for at least this fraction
# of the images, a name neighbour is among the image's ORDER_TOP_K most
# strongly matched images.
ORDERED_FRACTION = 0.7
ORDER_TOP_K = 3
# compare_poses warns when the aligned median rotation exceeds this (degrees)
# or the median centre error this fraction of the set's radius.
ALIGN_WARN_DEG = 2.0
ALIGN_WARN_RADIUS_FRACTION = 0.05
# More jumps than this and no arc is trusted: measured on the adversarial
# scene, a path broken in 14 places had its longest arcs wrong too (all 32
# frames 5-179 degrees off), while a few misplaced runs of frames give 2-4.
MAX_JUMPS_FOR_CONSENSUS = 4
BRIDGE_MAX_DEG = 120.0  # _bridge: no verdict across gaps where more rotation than this is expected
# camera_checks: fx / fy beyond this (either way) or fx / longest side outside
# FOCAL_RANGE (fields of view of about 150 down to 6 degrees) is implausible.
# Measured (OPENCV, self-calibrated): good models of bonsai and the synthetic
# demo 0.999-1.001; failed models of the symmetric scene 1.085 (a smooth 3-5
# degree distortion with no path jump), 1.14, 1.23, 1.7, 2.1.
MAX_FOCAL_ASPECT = 1.05
FOCAL_RANGE = (0.15, 10.0)
MAX_JUMPS_LISTED = 6  # in the warning; summary.json has them all

ADVICE = (
    "What to try: look at the camera figure of the report; for a video use matcher 'sequential' "
    "(names in capture order); add texture to plain surfaces or photograph the object from "
    "further away so the background shows; cut the capture at the flagged frames and reconstruct the arcs "
    "separately; or give existing poses (`poses` column). See docs/pose_diagnostics.md."
)


def capture_order(names) -> list[str]:
    """Names sorted as a camera or a video export numbers them: digit runs by value (2.jpg before 10.jpg)."""
    return sorted(names, key=lambda n: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                        for t in re.split(r"(\d+)", n) if t])


def _components(n: int, edges) -> list[list[int]]:
    """Connected components (lists of node indices, largest first) of an undirected graph."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def looks_ordered(names: list[str], pairs: dict[tuple[int, int], int]) -> bool:
    """True when the sorted names follow the capture order, judged from the matches alone.

    names: [N] in sorted order; pairs: (i, j) -> verified inliers (i < j, indices into names).
    """
    n = len(names)
    if n < 4:
        return False
    strongest: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for (i, j), k in pairs.items():
        strongest[i].append((k, j))
        strongest[j].append((k, i))
    hits = 0
    for i in range(n):
        top = {j for _, j in sorted(strongest[i], reverse=True)[:ORDER_TOP_K]}
        hits += bool(top & {i - 1, i + 1})
    return hits >= ORDERED_FRACTION * n


def view_graph(database, names: list[str]) -> dict:
    """Verified pairs of a COLMAP database as a graph over `names` (in capture order).

    Returns verified_pairs, degree {name: verified partners}, components (lists
    of names, largest first), isolated (names with no verified partner),
    ordered (looks_ordered), pairs {(i, j): inliers} (indices into names; not JSON).
    """
    import pycolmap

    index = {name: k for k, name in enumerate(names)}
    with contextlib.closing(pycolmap.Database.open(Path(database))) as db:
        id_to_name = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
    pairs: dict[tuple[int, int], int] = {}
    for pair_id, k in zip(pair_ids, inliers):
        a, b = pycolmap.pair_id_to_image_pair(int(pair_id))
        if k <= 0:
            continue
        ia, ib = index.get(id_to_name.get(int(a), ""), -1), index.get(id_to_name.get(int(b), ""), -1)
        if ia < 0 or ib < 0:
            continue
        pairs[(min(ia, ib), max(ia, ib))] = int(k)
    degree = np.zeros(len(names), np.int64)
    for i, j in pairs:
        degree[i] += 1
        degree[j] += 1
    comps = _components(len(names), pairs)
    return {
        "verified_pairs": len(pairs),
        "degree": {name: int(d) for name, d in zip(names, degree)},
        "components": [[names[i] for i in c] for c in comps],
        "isolated": [names[i] for i in np.flatnonzero(degree == 0)],
        "ordered": looks_ordered(names, pairs),
        "pairs": pairs,
    }


def image_stats(rec) -> dict:
    """Per-image observation counts and track-length figures of a pycolmap.Reconstruction."""
    obs = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        obs[image.name] = int(image.num_points3D)
    lengths = np.array([p.track.length() for p in rec.points3D.values()], np.int64)
    if not len(lengths):
        lengths = np.zeros(1, np.int64)
    return {
        "observations": dict(sorted(obs.items())),
        "track_length": {
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
            "histogram": {str(k): int(v) for k, v in zip(*np.unique(np.minimum(lengths, 10), return_counts=True))},
        },
    }


def camera_checks(rec) -> list[dict]:
    """Per camera of a pycolmap.Reconstruction: model, size, fx, fy and `problem` (None or a sentence).

    Implausible intrinsics are the symptom of a self-calibration that went wrong
    (measured on the adversarial scenes: fy came out at 0.3-0.5 fx with OPENCV
    while every photo registered); no real camera has pixels that far from
    square or a field of view outside FOCAL_RANGE.
    """
    out = []
    for cam_id, cam in sorted(rec.cameras.items()):
        fx, fy = float(cam.focal_length_x), float(cam.focal_length_y)
        side = max(cam.width, cam.height)
        problem = None
        if not (1 / MAX_FOCAL_ASPECT <= fx / fy <= MAX_FOCAL_ASPECT):
            problem = f"fx/fy = {fx / fy:.2f} (square pixels give 1)"
        elif not (FOCAL_RANGE[0] <= fx / side <= FOCAL_RANGE[1]):
            problem = f"focal length {fx:.0f} px is {fx / side:.2f} x the longest side (expected {FOCAL_RANGE})"
        out.append({"camera_id": int(cam_id), "model": cam.model.name, "fx": fx, "fy": fy, "problem": problem})
    return out


def weak_images(observations: dict[str, int]) -> list[str]:
    """Registered images with too few 3D points (WEAK_MIN_OBSERVATIONS, WEAK_FRACTION of the median)."""
    if not observations:
        return []
    median = float(np.median(list(observations.values())))
    limit = max(WEAK_MIN_OBSERVATIONS, WEAK_FRACTION * median)
    return [name for name, k in observations.items() if k < limit]


def path_continuity(names: list[str], c2w) -> dict:
    """Continuity of an ordered path: names [N] in capture order, c2w [N, 3, 4].

    Returns rot_deg / step [N - 1] between neighbours (step in the poses' units),
    their medians, `radius` (median distance of the centres from their mean),
    `jumps` [{from, to, rot_deg, step, rot_ratio, step_ratio}] and `arcs`
    (runs of names between jumps, longest first) and `suspect` frames. Each
    arc is self-consistent, but arcs separated by jumps disagree; the longest
    arc is trusted, and another arc joins it when it continues a trusted arc
    across the frames between them (`_bridge`): a few frames put on the wrong
    side of the object leave the path on both sides of them trusted. Frames
    outside the trusted arcs are suspect; when those hold less than half the
    frames, or the path has more than MAX_JUMPS_FOR_CONSENSUS jumps, there is
    no consensus and every frame is suspect.
    """
    c2w = np.asarray(c2w, np.float64)
    if len(names) != len(c2w):
        raise ValueError(f"path_continuity needs one pose per name, got {len(names)} names, {len(c2w)} poses")
    n = len(names)
    if n < 3:
        return {"frames": n, "jumps": [], "arcs": [list(names)], "suspect": []}
    rot = rigid.rotation_error_deg(c2w[1:, :, :3], c2w[:-1, :, :3])
    step = np.linalg.norm(np.diff(c2w[:, :, 3], axis=0), axis=1)
    med_rot, med_step = float(np.median(rot)), float(np.median(step))
    centres = c2w[:, :, 3]
    radius = float(np.median(np.linalg.norm(centres - centres.mean(0), axis=1)))
    rot_limit = max(JUMP_FACTOR * med_rot, JUMP_MIN_DEG)
    step_limit = max(JUMP_FACTOR * med_step, JUMP_MIN_RADIUS_FRACTION * radius)
    jump = (rot > rot_limit) | (step > step_limit)
    jumps = [
        {"from": names[k], "to": names[k + 1], "rot_deg": round(float(rot[k]), 2), "step": float(step[k]),
         "rot_ratio": round(float(rot[k] / max(med_rot, 1e-9)), 1),  # eps: a still camera has a zero median
         "step_ratio": round(float(step[k] / max(med_step, 1e-12)), 1)}
        for k in np.flatnonzero(jump)
    ]
    cuts = [0, *(int(k) + 1 for k in np.flatnonzero(jump)), n]
    spans = sorted(((a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a), key=lambda ab: (ab[0] - ab[1], ab[0]))
    trusted = _bridge(spans, c2w, med_rot, med_step, step_limit)
    if 2 * len(trusted) < n or len(jumps) > MAX_JUMPS_FOR_CONSENSUS:  # no consensus
        trusted = set()
    arcs = [list(names[a:b]) for a, b in spans]
    return {
        "frames": n,
        "rot_deg": [round(float(r), 3) for r in rot],
        "step": [float(s) for s in step],
        "median_rot_deg": med_rot,
        "median_step": med_step,
        "radius": radius,
        "rot_limit_deg": rot_limit,
        "step_limit": step_limit,
        "jumps": jumps,
        "arcs": arcs,
        "suspect": [name for k, name in enumerate(names) if k not in trusted],
    }


def _bridge(spans, c2w, med_rot: float, med_step: float, step_limit: float) -> set[int]:
    """Indices of the frames in the longest span (spans[0]) and in the spans that continue it.

    A span continues a trusted frame k steps before its start (or after its end)
    when the rotation and centre distance between the two frames are within
    1.5 * k typical steps (+ JUMP_MIN_DEG / step_limit); beyond BRIDGE_MAX_DEG
    of expected rotation no decision is possible (rotation angles wrap at 180).
    """
    trusted = set(range(*spans[0]))
    changed = True
    while changed:
        changed = False
        for a, b in spans[1:]:
            if a in trusted:
                continue
            for inside, outside in ((a, max((k for k in trusted if k < a), default=None)),
                                    (b - 1, min((k for k in trusted if k >= b), default=None))):
                if outside is None:
                    continue
                k = abs(inside - outside)
                rot_allow = 1.5 * k * med_rot + JUMP_MIN_DEG
                if rot_allow > BRIDGE_MAX_DEG:
                    continue
                rot = float(rigid.rotation_error_deg(c2w[inside, :, :3], c2w[outside, :, :3]))
                dist = float(np.linalg.norm(c2w[inside, :, 3] - c2w[outside, :, 3]))
                if rot <= rot_allow and dist <= 1.5 * k * med_step + step_limit:
                    trusted.update(range(a, b))
                    changed = True
                    break
    return trusted


def _short(names: list[str], k: int = 12) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def diagnose(rec, names: list[str], *, database=None, ordered: bool | None = None) -> dict:
    """Diagnostics of a reconstruction `rec` (pycolmap) of the photos `names` (any order; the path
    check follows `capture_order`).

    database: the COLMAP database (for the view graph and the pair check), or None.
    ordered: True/False: whether the names follow the capture order; None:
    decide from the matches (view_graph's `ordered`), False without a database.
    Returns a JSON-able dict: images (observations, track_length), view_graph
    (verified_pairs, components, isolated, degree, ordered), pairs
    (pose_checks_pairs.pair_consistency: photos whose verified pairs contradict
    the model), continuity (for ordered captures), weak, flagged, warnings [str]
    (empty when nothing looks wrong).
    """
    out: dict = {}
    warnings: list[str] = []
    names = capture_order(names)
    stats = image_stats(rec)
    out["images"] = stats
    if database is not None:
        graph = view_graph(database, names)
        graph.pop("pairs")
        out["view_graph"] = graph
        if ordered is None:
            ordered = graph["ordered"]
        if len(graph["components"]) > 1:
            sizes = [len(c) for c in graph["components"]]
            warnings.append(
                f"the view graph falls into {len(sizes)} unconnected groups of photos (sizes {sizes}); "
                f"photos outside the largest: {_short(sorted(n for c in graph['components'][1:] for n in c))}"
            )
    contradicted = []
    if database is not None:
        out["pairs"] = pose_checks_pairs.pair_consistency(rec, database)
        contradicted = out["pairs"]["contradicted"]
        if contradicted:
            warnings.append(
                f"{len(contradicted)} photo(s) posed against their own matches: the model turns them more than "
                f"{pose_checks_pairs.PAIR_MAX_ROT_DEG:g} deg away from the relative rotation of most of their "
                f"strongest verified pairs: {_short(contradicted)}"
            )
    ordered = bool(ordered)
    out["ordered"] = ordered
    weak = weak_images(stats["observations"])
    out["weak"] = weak
    if weak:
        warnings.append(f"{len(weak)} weak image(s) with few 3D points: {_short(weak)}")
    out["cameras"] = camera_checks(rec)
    bad_cams = {c["camera_id"]: c["problem"] for c in out["cameras"] if c["problem"]}
    uncalibrated = sorted(rec.images[i].name for i in rec.reg_image_ids() if rec.images[i].camera_id in bad_cams)
    for cam_id, problem in bad_cams.items():
        warnings.append(f"camera {cam_id} has implausible intrinsics ({problem}): self-calibration failed, so "
                        "the poses of every photo taken with it are suspect; give the focal length (EXIF, or a "
                        "camera model with one focal length such as SIMPLE_RADIAL)")
    if ordered:
        reg = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
        order = [n for n in names if n in reg]
        c2w = np.stack([np.linalg.inv(np.vstack([reg[n].cam_from_world().matrix(), [0, 0, 0, 1]]))[:3]
                        for n in order]) if order else np.zeros((0, 3, 4))
        cont = path_continuity(order, c2w)
        out["continuity"] = cont
        for j in cont["jumps"][:MAX_JUMPS_LISTED]:
            warnings.append(
                f"path jump between {j['from']} and {j['to']}: {j['rot_deg']:.1f} deg "
                f"({j['rot_ratio']}x the typical step), centre step {j['step_ratio']}x the typical"
            )
        if len(cont["jumps"]) > MAX_JUMPS_LISTED:
            warnings.append(f"{len(cont['jumps']) - MAX_JUMPS_LISTED} more path jump(s) (summary.json lists them)")
        if cont["suspect"]:
            where = ("no consensus (too many jumps, or no arc holds half the frames), so no arc can be trusted"
                     if len(cont["suspect"]) == cont["frames"]
                     else "frames outside the longest arc (and the arcs that continue it)")
            warnings.append(
                f"the camera path breaks into {len(cont['arcs'])} arcs; {where}; {len(cont['suspect'])} frame(s) "
                f"may be placed wrongly (e.g. on the wrong side of a symmetric object): {_short(cont['suspect'])}"
            )
    suspect = out.get("continuity", {}).get("suspect", [])
    out["flagged"] = capture_order(set(weak) | set(suspect) | set(uncalibrated) | set(contradicted))
    out["warnings"] = warnings
    return out


def compare_poses(est_c2w, gt_c2w, *, names: list[str] | None = None) -> dict:
    """Errors of est_c2w [N, 3, 4] against gt_c2w [N, 3, 4] after a similarity alignment.

    Returns rotation_deg / position [N] (gt units), position_pct (of the gt
    radius: the median distance of gt centres from their mean), their median
    and max, scale, worst (names of the 5 largest rotation errors, with names)
    and `warning` (None, or a sentence: the residuals are large, so the two
    sets disagree and per-view errors measured against gt say more about the
    alignment than about the method).
    """
    est, gt = np.asarray(est_c2w, np.float64), np.asarray(gt_c2w, np.float64)
    errors = rigid.pose_errors(est, gt)
    rot, pos = errors["rotation_deg"], errors["position"]
    radius = float(np.median(np.linalg.norm(gt[:, :, 3] - gt[:, :, 3].mean(0), axis=1)))
    pct = 100.0 * pos / max(radius, 1e-12)  # eps: all gt centres at one point
    names = list(names) if names is not None else [str(i) for i in range(len(est))]
    order = np.argsort(-rot)[:5]
    out = {
        "count": len(est),
        "rotation_deg": rot,
        "position": pos,
        "position_pct": pct,
        "median_rot_deg": float(np.median(rot)),
        "max_rot_deg": float(rot.max()),
        "median_pos_pct": float(np.median(pct)),
        "max_pos_pct": float(pct.max()),
        "radius": radius,
        "scale": float(errors["scale"]),
        "worst": [(names[k], round(float(rot[k]), 2)) for k in order],
        "over_5_deg": [names[k] for k in np.flatnonzero(rot > 5.0)],
        "warning": None,
    }
    if out["median_rot_deg"] > ALIGN_WARN_DEG or out["median_pos_pct"] > 100 * ALIGN_WARN_RADIUS_FRACTION:
        out["warning"] = (
            f"the two pose sets disagree after a similarity alignment: median residual "
            f"{out['median_rot_deg']:.2f} deg, {out['median_pos_pct']:.1f} % of the radius (warn above "
            f"{ALIGN_WARN_DEG} deg / {100 * ALIGN_WARN_RADIUS_FRACTION:.0f} %); per-view errors against them "
            "measure the disagreement, not the method"
        )
    return out


def summary_line(diag: dict) -> str:
    """One log line of the figures in `diagnose`'s dict."""
    parts = []
    obs = list(diag["images"]["observations"].values())
    if obs:
        parts.append(f"3D points per image median {int(np.median(obs))} (min {min(obs)})")
    parts.append(f"track length median {diag['images']['track_length']['median']:.0f}")
    graph = diag.get("view_graph")
    if graph:
        parts.append(f"{graph['verified_pairs']} verified pairs, {len(graph['components'])} component(s)")
    pairs = diag.get("pairs")
    if pairs and pairs["pairs_checked"]:
        parts.append(f"{pairs['pairs_checked']} strongest pairs checked against the model: median "
                     f"{pairs['median_pair_deg']:.2f} deg off, {len(pairs['contradicted'])} photo(s) contradicted")
    cont = diag.get("continuity")
    if cont and "median_rot_deg" in cont:
        parts.append(f"ordered path: typical step {cont['median_rot_deg']:.2f} deg, {len(cont['jumps'])} jump(s)")
    elif not diag.get("ordered"):
        parts.append("unordered capture (no path check)")
    return "; ".join(parts)


def warning_message(diag: dict) -> str:
    """The loud warning of a reconstruction that `diagnose` flagged ('' when clean)."""
    if not diag["warnings"]:
        return ""
    return "POSES MAY BE WRONG: " + " | ".join(diag["warnings"]) + ". " + ADVICE
