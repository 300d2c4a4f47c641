"""The pose stage against the `colmap` command-line program, on the same photos and settings.

Runs nerflib.sfm.run_sfm (pycolmap, in process) and the three `colmap` commands
(feature_extractor, {sequential,exhaustive}_matcher, mapper) with the same
options, times each stage, and compares the two models: images registered,
3-D points, mean reprojection error, and how far our camera poses are from
colmap's after a similarity alignment (median rotation error, median camera
position error in % of the camera rig's radius). Prints a Markdown table.

    python bench/pose_bench.py --images $DNERF_DATA/mipnerf360_bonsai_800 --matcher sequential \
        --threads 1 --parallel --out /tmp/pose_bench

--parallel runs both tools at the same time, so a busy machine slows both alike
(use it with --threads 1 on a 2-core machine). Needs pycolmap and the `colmap`
program (Debian: apt-get install colmap); CPU SIFT and matching in both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerflib import rigid, scene_io, sfm  # noqa: E402


def colmap_version() -> str:
    out = subprocess.run(["colmap", "-h"], capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "COLMAP" in line), "colmap ?")


def run_colmap(images: Path, work: Path, args) -> dict:
    """The three colmap commands; {stage: seconds} and the model folder."""
    work.mkdir(parents=True, exist_ok=True)
    db, sparse = work / "database.db", work / "sparse"
    sparse.mkdir(exist_ok=True)
    t = str(args.threads)
    stages = {
        "extraction_s": ["feature_extractor", "--database_path", db, "--image_path", images,
                         "--ImageReader.camera_model", args.camera_model, "--ImageReader.single_camera", "1",
                         "--SiftExtraction.use_gpu", "0", "--SiftExtraction.num_threads", t,
                         "--SiftExtraction.max_image_size", str(args.max_image_size),
                         "--SiftExtraction.max_num_features", str(args.max_features)],
        "matching_s": [f"{args.matcher}_matcher", "--database_path", db, "--SiftMatching.use_gpu", "0",
                       "--SiftMatching.num_threads", t]
                      + (["--SequentialMatching.overlap", str(args.overlap),
                          "--SequentialMatching.quadratic_overlap", "1"] if args.matcher == "sequential" else []),
        "mapping_s": ["mapper", "--database_path", db, "--image_path", images, "--output_path", sparse,
                      "--Mapper.num_threads", t],
    }
    timings = {}
    start = time.perf_counter()
    for stage, command in stages.items():
        t0 = time.perf_counter()
        with open(work / f"{stage[:-2]}.log", "w") as log:
            subprocess.run(["colmap", *map(str, command)], check=True, stdout=log, stderr=subprocess.STDOUT)
        timings[stage] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    models = sorted((p for p in sparse.iterdir() if (p / "images.bin").is_file()),
                    key=lambda p: len(scene_io.read_colmap(p, image_dir=images, check_images=False)))
    return {"timings": timings, "model": models[-1] if models else None}


def run_ours(images: Path, work: Path, args) -> dict:
    summary = sfm.run_sfm(images, work, camera_model=args.camera_model, matcher=args.matcher, overlap=args.overlap,
                          threads=args.threads, max_image_size=args.max_image_size,
                          max_num_features=args.max_features, sift_first_octave=-1, gpu=False,
                          min_registered_fraction=0.0, log=lambda m: None)
    return {"timings": summary["timings"], "model": work / "sparse" / "0", "summary": summary}


def model_stats(model: Path, images: Path) -> dict:
    import pycolmap

    rec = pycolmap.Reconstruction(str(model))
    return {"registered": rec.num_reg_images(), "points": rec.num_points3D(),
            "reprojection_px": rec.compute_mean_reprojection_error()}


def pose_agreement(ours: Path, theirs: Path, images: Path) -> dict:
    a = scene_io.read_colmap(ours, image_dir=images, check_images=False)
    b = scene_io.read_colmap(theirs, image_dir=images, check_images=False)
    common = sorted(set(a.names) & set(b.names))
    ca = a.c2w[[a.names.index(n) for n in common]]
    cb = b.c2w[[b.names.index(n) for n in common]]
    errors = rigid.pose_errors(ca, cb)  # after a similarity (Umeyama) alignment of the camera centres
    radius = float(np.median(np.linalg.norm(cb[:, :, 3] - cb[:, :, 3].mean(0), axis=-1)))
    return {"common": len(common), "rotation_deg": float(np.median(errors["rotation_deg"])),
            "position_pct": 100 * float(np.median(errors["position"])) / radius}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True)
    p.add_argument("--matcher", default="sequential", choices=["sequential", "exhaustive"])
    p.add_argument("--overlap", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--camera-model", default="OPENCV")
    p.add_argument("--max-image-size", type=int, default=3200)
    p.add_argument("--max-features", type=int, default=8192)
    p.add_argument("--parallel", action="store_true", help="run both tools at the same time")
    p.add_argument("--out", default="/tmp/pose_bench")
    args = p.parse_args(argv)
    if shutil.which("colmap") is None:
        raise SystemExit("the `colmap` program is not installed (Debian: apt-get install colmap)")
    images, out = Path(args.images), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    jobs = {"ours (pycolmap, in process)": lambda: run_ours(images, out / "ours", args),
            "colmap CLI": lambda: run_colmap(images, out / "colmap", args)}
    if args.parallel:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {name: pool.submit(job) for name, job in jobs.items()}
            results = {name: f.result() for name, f in futures.items()}
    else:
        results = {name: job() for name, job in jobs.items()}
    n = len([f for f in images.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")])
    import pycolmap

    meta = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": __import__("os").cpu_count(),
            "pycolmap": pycolmap.__version__, "colmap": colmap_version(), "command": " ".join(sys.argv)}
    print(meta)
    print(f"\n{images}: {n} photos; matcher {args.matcher} (overlap {args.overlap}), {args.camera_model}, one camera, "
          f"{args.threads} thread(s) each, max image size {args.max_image_size}, {args.max_features} features, CPU"
          f"{', both tools at once' if args.parallel else ''}\n")
    print("| tool | extraction (s) | matching (s) | mapping (s) | total (s) | registered | points | reproj. error (px) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, r in results.items():
        stats = model_stats(r["model"], images) if r["model"] else {"registered": 0, "points": 0,
                                                                       "reprojection_px": float("nan")}
        tm = r["timings"]
        rows[name] = {**stats, "timings": tm}
        print(f"| {name} | {tm['extraction_s']:.1f} | {tm['matching_s']:.1f} | {tm['mapping_s']:.1f} | "
              f"{tm['total_s']:.1f} | {stats['registered']}/{n} | {stats['points']:,} | "
              f"{stats['reprojection_px']:.3f} |")
    models = [r["model"] for r in results.values()]
    if all(models):
        agree = pose_agreement(models[0], models[1], images)
        rows["agreement"] = agree
        print(f"\nour poses vs colmap's after a similarity alignment ({agree['common']} common images): median "
              f"rotation {agree['rotation_deg']:.3f} deg, median position {agree['position_pct']:.3f} % of the radius")
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
