"""SfM on the adversarial synthetic captures (nerflib.synthetic_hard) against ground truth.

For each variant: render the capture, run nerflib.sfm.run_sfm as the `poses`
step does (or with --sfm KEY=VALUE overrides), align the result to ground
truth (pose_checks.compare_poses) and print one JSON line: registered, median/max
rotation error (deg), median/max position error (% of the path radius), the
frames > 5 deg off, and which of them the diagnostics flagged.

    python bench/hard_poses.py OUT_DIR --frames 32 --variant sym4 --sfm matcher=sequential
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from nerflib import pose_checks, scene_io, sfm, synthetic_hard

VARIANTS = {
    # Hardest first: exactly 4-fold object, identical tiles, plain walls.
    "sym4": synthetic_hard.HardScene(symmetry=4),
    "sym2": synthetic_hard.HardScene(symmetry=2),
    "sym4_mark": synthetic_hard.HardScene(symmetry=4, asymmetry=0.6),
    "sym4_varied": synthetic_hard.HardScene(symmetry=4, floor_variation=0.6, wall_texture=0.5),
}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def run(out: Path, variant: str, frames: int, width: int, height: int, sfm_kwargs: dict, threads: int) -> dict:
    data = out / f"{variant}_{frames}"
    if not (data / "gt" / "scene.json").is_file():
        synthetic_hard.generate(data, VARIANTS[variant], n_frames=frames, width=width, height=height)
    gt = scene_io.read_scene_json(data / "gt" / "scene.json")
    tag = "_".join(f"{k}-{v}" for k, v in sorted(sfm_kwargs.items())) or "default"
    work = out / "sfm" / f"{variant}_{frames}_{tag}"
    t0 = time.perf_counter()
    kwargs = dict(camera_model="OPENCV", threads=threads, log=lambda s: None, min_registered_fraction=0.0)
    kwargs.update(sfm_kwargs)
    try:
        summary = sfm.run_sfm(data / "images", work, **kwargs)
    except sfm.SfMError as e:
        return {"variant": variant, "sfm": tag, "error": str(e)[:200]}
    est = scene_io.read_colmap(work / "sparse" / "0", image_dir=data / "images")
    idx = {n: k for k, n in enumerate(gt.names)}
    names = [n for n in gt.names if n in set(est.names)]
    e_idx = {n: k for k, n in enumerate(est.names)}
    cmp = pose_checks.compare_poses(est.c2w[[e_idx[n] for n in names]], gt.c2w[[idx[n] for n in names]], names=names)
    diag = summary.get("diagnostics", {})
    flagged = set(diag.get("flagged", []))
    return {
        "variant": variant, "sfm": tag, "frames": frames, "registered": summary["registered"],
        "median_rot_deg": round(cmp["median_rot_deg"], 3), "max_rot_deg": round(cmp["max_rot_deg"], 2),
        "median_pos_pct": round(cmp["median_pos_pct"], 2), "max_pos_pct": round(cmp["max_pos_pct"], 1),
        "over_5_deg": cmp["over_5_deg"], "flagged": sorted(flagged),
        "unflagged_wrong": sorted(set(cmp["over_5_deg"]) - flagged),
        "jumps": [(j["from"], j["to"], j["rot_deg"]) for j in diag.get("continuity", {}).get("jumps", [])],
        "warnings": len(diag.get("warnings", [])), "keypoints_per_image": round(summary["keypoints"] / frames),
        "reproj_px": round(summary["mean_reprojection_error_px"], 3), "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sfm", action="append", default=[], help="run_sfm keyword override KEY=VALUE")
    a = ap.parse_args(argv)
    kwargs = {k: _value(v) for k, v in (s.split("=", 1) for s in a.sfm)}
    for variant in a.variant or list(VARIANTS):
        print(json.dumps(run(Path(a.out), variant, a.frames, a.width, a.height, kwargs, a.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
