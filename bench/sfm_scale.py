r"""SfM at scale: global (GLOMAP) against incremental mapping, on a large synthetic video or a photo folder.

Features and matches are computed once (nerflib.matching.extract_and_match, as
run_sfm does them), then each mapper maps the same database
(nerflib.sfm.map_database) in its own child process, killed when it runs past
its cap (`--cap-seconds`, mapping wall time): a slow run is reported as
"> cap" and does not eat the rest of the call. Each model gets the pose
diagnostics run_sfm writes (pose_checks.diagnose).

--synthetic N : renders an ordered, video-like capture of N photos of the demo
    scene (nerflib.synthetic: textured objects, ground and dome) on a helix of
    `--loops` turns around it, with the height bob, roll and aim wander of a
    hand-held camera, in parallel over the threads (its time reported apart),
    and reports per mapper: registered, and the median / max rotation error and
    median position error after a similarity alignment to the ground truth
    (pose_checks.compare_poses).
--photos DIR : a real capture; per mapper: time and registered, and the
    agreement of the mappers after a similarity alignment (median / max rotation
    and position difference).
--save-scene DIR : the chosen model (`--save-mapper`; `best`: fewest photos
    unregistered or flagged, then most registered, global on a tie) as a project
    bench/train_bench.py --data reads: DIR/sparse/0, DIR/scene.json, DIR/images/
    (hard links to the photos, or copies).

Results: a JSON file (--json, default OUT/sfm_scale_<tag>.json) and a table.
Needs pycolmap, numpy, opencv and jax (CPU is enough); no snakemake.

    END=$(( $(date +%s) + 540 ))
    python bench/sfm_scale.py /tmp/scale --synthetic 1000 --matcher sequential --threads 16 \
        --cap-seconds incremental=60 --total-seconds 320
    python bench/sfm_scale.py /tmp/scale --photos .bench_data/bonsai/images --matcher sequential \
        --threads 16 --until $END --save-scene .bench_data/bonsai

Measured on 2 busy cores (pycolmap 4.2.1 CPU): 200 frames, sequential
matching: extraction 34 s, matching 61 s, global mapping 244 s (200/200,
median rotation error 0.072 deg), incremental capped at 60 s.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the poses need no accelerator (rigid imports jax)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

MAPPERS = ("global", "incremental")
# The helix of --synthetic: radius and height bands around the demo scene's
# objects (within ~1.7 m of the origin; the orbit of nerflib.synthetic is 4 m).
RADIUS = (3.6, 4.4)
HEIGHT = (1.0, 2.3)
FRAMES_PER_LOOP = 240  # --loops auto: about 1.5 degrees of azimuth per frame
RESERVE_S = 15.0  # --total-seconds: kept back for reading the models, comparing and writing


# --------------------------------------------------------------------------- the synthetic video


def video_path_c2w(n: int, loops: int, seed: int = 0) -> np.ndarray:
    """c2w [n, 3, 4] of a hand-held video circling the demo scene `loops` times on a rising helix."""
    from nerflib import synthetic

    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 6)
    t = np.arange(n) / n
    az = 2 * np.pi * loops * t
    radius = np.mean(RADIUS) + 0.5 * np.ptp(RADIUS) * np.sin(2 * np.pi * 3.3 * t + phase[0])
    height = (HEIGHT[0] + np.ptp(HEIGHT) * t + 0.15 * np.sin(az * 2.0 + phase[1])).clip(*HEIGHT)
    eyes = np.stack([radius * np.cos(az), radius * np.sin(az), height], axis=1)
    wander = 0.25 * np.stack([np.sin(2 * np.pi * 7.1 * t + phase[2]), np.sin(2 * np.pi * 5.3 * t + phase[3]),
                              0.5 * np.sin(2 * np.pi * 4.7 * t + phase[4])], axis=1)
    targets = np.asarray(synthetic.SCENE_CENTER) + wander
    rolls = np.radians(4.0) * np.sin(2 * np.pi * 6.1 * t + phase[5])
    return np.stack([synthetic.look_at(e, g, roll=r) for e, g, r in zip(eyes, targets, rolls)])


def _render_chunk(job) -> int:
    from nerflib import synthetic

    folder, names, c2ws, width, height, supersample = job
    camera = synthetic.pinhole(width, height)
    for name, c2w in zip(names, c2ws):
        rgb, _ = synthetic.render_view(camera, c2w, supersample=supersample)
        synthetic.write_jpeg(Path(folder) / name, rgb, quality=95)
    return len(names)


def generate_video(out: Path, n: int, *, width: int, height: int, loops: int, supersample: int, seed: int,
                   workers: int) -> dict:
    """out/images/NNNN.jpg and out/gt/scene.json; reused when out/gt/meta.json matches the settings."""
    from nerflib import fileio, scene_io, synthetic
    from nerflib.types import Scene

    meta = {"frames": n, "width": width, "height": height, "loops": loops, "supersample": supersample, "seed": seed}
    meta_path = out / "gt" / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return {"reused": True, "seconds": 0.0, **meta}
    t0 = time.perf_counter()
    c2w = video_path_c2w(n, loops, seed)
    names = [f"{i:04d}.jpg" for i in range(n)]
    folder = out / "images"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    chunk = max(1, math.ceil(n / (4 * workers)))
    jobs = [(str(folder), names[i:i + chunk], c2w[i:i + chunk], width, height, supersample)
            for i in range(0, n, chunk)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        done = sum(pool.imap_unordered(_render_chunk, jobs))
    assert done == n, (done, n)
    scene = Scene(names=names, c2w=c2w, cameras=[synthetic.pinhole(width, height)],
                  camera_idx=np.zeros(n, np.int32), image_dir=str(folder))
    scene_io.write_scene_json(scene, out / "gt" / "scene.json")
    fileio.write_json(meta_path, meta)
    step = float(np.median(np.degrees(np.diff(2 * np.pi * loops * np.arange(n) / n))))
    return {"reused": False, "seconds": round(time.perf_counter() - t0, 2), "workers": workers,
            "azimuth_step_deg": round(step, 3), **meta}


# --------------------------------------------------------------------------- children (one stage each)


def _child(task: dict) -> None:
    """Run one stage in this (child) process and write its JSON result to task['result']."""
    from nerflib import fileio, matching, pose_checks, sfm

    if task["stage"] == "features":
        out = matching.extract_and_match(task["image_dir"], task["database"], log=print, **task["settings"])
    else:
        t0 = time.perf_counter()
        models_dir = Path(task["models_dir"])
        if models_dir.exists():
            shutil.rmtree(models_dir)
        models_dir.mkdir(parents=True)
        models = sfm.map_database(task["database"], task["image_dir"], models_dir, mapper=task["mapper"],
                                  threads=task["threads"], seed=0)
        seconds = time.perf_counter() - t0
        out = {"mapper": task["mapper"], "mapping_s": round(seconds, 2), "models": len(models),
               "model_sizes": sorted((r.num_reg_images() for r in models.values()), reverse=True), "registered": 0}
        if models:
            rec = max(models.values(), key=lambda r: r.num_reg_images())
            sparse = Path(task["sparse"])
            if sparse.exists():
                shutil.rmtree(sparse)
            sparse.mkdir(parents=True)
            rec.write_binary(sparse)
            t1 = time.perf_counter()
            diag = pose_checks.diagnose(rec, task["names"], database=task["database"], ordered=task["ordered"])
            out.update(
                registered=int(rec.num_reg_images()), points=int(rec.num_points3D()),
                reproj_px=round(float(rec.compute_mean_reprojection_error()), 3),
                diagnose_s=round(time.perf_counter() - t1, 2), warnings=diag["warnings"],
                flagged=diag["flagged"], jumps=len(diag.get("continuity", {}).get("jumps", [])),
                problems=sfm.problem_count(len(task["names"]), int(rec.num_reg_images()), diag),
                auto_fallback_reason=sfm.auto_fallback_reason(len(task["names"]), int(rec.num_reg_images()), diag),
            )
    fileio.write_json(task["result"], out)


def run_capped(task: dict, cap: float | None, log_path: Path) -> dict:
    """Run `task` in a child process (own session); kill its process group past `cap` seconds."""
    result = Path(task["result"])
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(task)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = child.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child's own group: it and whatever it started
            child.wait()
            return {"status": f"> {cap:.0f} s", "capped": True, "wall_s": round(time.perf_counter() - t0, 1)}
    wall = round(time.perf_counter() - t0, 1)
    if rc != 0 or not result.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {"status": f"failed (exit {rc})", "capped": False, "wall_s": wall, "log_tail": tail}
    return {"status": "ok", "capped": False, "wall_s": wall, **json.loads(result.read_text())}


# --------------------------------------------------------------------------- comparisons


def _poses(sparse: Path):
    from nerflib import scene_io

    scene = scene_io.read_colmap(sparse, check_images=False)
    return dict(zip(scene.names, scene.c2w))


def compare(est: dict, ref: dict) -> dict:
    """compare_poses of est against ref (name -> c2w) on their common names, rounded."""
    from nerflib import pose_checks

    names = [n for n in ref if n in est]
    if len(names) < 3:
        return {"common": len(names)}
    cmp = pose_checks.compare_poses(np.stack([est[n] for n in names]), np.stack([ref[n] for n in names]),
                                    names=names)
    return {"common": len(names), "median_rot_deg": round(cmp["median_rot_deg"], 4),
            "max_rot_deg": round(cmp["max_rot_deg"], 3), "median_pos_pct": round(cmp["median_pos_pct"], 4),
            "max_pos_pct": round(cmp["max_pos_pct"], 3), "over_5_deg": len(cmp["over_5_deg"]),
            "worst": cmp["worst"][:3], "warning": cmp["warning"]}


def choose(results: dict, which: str) -> str | None:
    done = {m: r for m, r in results.items() if r.get("status") == "ok" and r.get("registered")}
    if which != "best":
        return which if which in done else None
    if not done:
        return None
    return min(done, key=lambda m: (done[m]["problems"], -done[m]["registered"], MAPPERS.index(m)))


def save_scene(out: Path, sparse: Path, image_dir: Path) -> dict:
    """out/sparse/0 (the model), out/images/ (links or copies of the photos, unless they are there
    already: out may be the photo folder's parent), out/scene.json (image_dir relative to it)."""
    from nerflib import scene_io

    if (out / "sparse" / "0").exists():
        shutil.rmtree(out / "sparse" / "0")
    shutil.copytree(sparse, out / "sparse" / "0")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    scene = scene_io.read_colmap(out / "sparse" / "0", check_images=False)
    for name in [] if images.resolve() == image_dir.resolve() else scene.names:
        dst = images / name
        if dst.exists():
            dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image_dir / name, dst)
        except OSError:  # another file system
            shutil.copy2(image_dir / name, dst)
    scene.image_dir = str(images.resolve())
    scene_io.write_scene_json(scene, out / "scene.json")
    return {"dir": str(out), "images": len(scene.names)}


# --------------------------------------------------------------------------- main


def _caps(values: list[str]) -> dict:
    caps = {m: None for m in MAPPERS}
    for v in values:
        key, _, sec = v.rpartition("=")
        for m in [key] if key else MAPPERS:
            if m not in caps:
                raise SystemExit(f"--cap-seconds: unknown mapper {m!r} in {v!r} (use {', '.join(MAPPERS)})")
            caps[m] = float(sec)
    return caps


def _cap(cap: float | None, deadline: float | None) -> float | None:
    """A stage's cap, cut to what the deadline leaves (less RESERVE_S)."""
    if deadline is None:
        return cap
    left = deadline - time.perf_counter() - RESERVE_S
    return left if cap is None else min(cap, left)


def _table(report: dict) -> str:
    feats = report.get("features", {})
    t = feats.get("timings", {})
    lines = [(f"{report['tag']}: {report['photos']} photos, threads {report['threads']}, matcher "
             f"{feats.get('matcher')}, {feats.get('keypoints', 0) / max(report['photos'], 1):.0f} keypoints/photo, "
             f"{feats.get('verified_pairs')} verified pairs; extraction {t.get('extraction_s', float('nan')):.1f} s, "
             f"matching {t.get('matching_s', float('nan')):.1f} s (shared by the mappers)")]
    if "generation" in report:
        g = report["generation"]
        lines.append(f"generation: {g['seconds']} s{' (reused)' if g['reused'] else ''} on {g.get('workers', '-')} "
                     "processes")
    head = f"{'mapper':<12} {'mapping':>10} {'registered':>16}{'rot med':>9}{'rot max':>9}{'pos med':>9} flags"
    lines.append(head + ("  (errors against ground truth: deg, % of radius)" if report["mode"] == "synthetic" else ""))
    for m, r in report["mappers"].items():
        if r.get("status") != "ok":
            lines.append(f"{m:<12} {r['status']:>10}")
            continue
        acc = r.get("accuracy", {})
        reg = f"{r['registered']}/{report['photos']} {100 * r['registered'] / report['photos']:.1f}%"
        errs = "".join(f"{acc[k]:>9.{d}f}" if k in acc else f"{'-':>9}"
                       for k, d in (("median_rot_deg", 3), ("max_rot_deg", 2), ("median_pos_pct", 3)))
        lines.append(f"{m:<12} {r['mapping_s']:>8.1f} s {reg:>16}{errs} {len(r['flagged'])} flagged, {r['jumps']} jumps")
    if "agreement" in report:
        a = report["agreement"]
        lines.append(f"incremental against global after a similarity alignment: {a.get('common')} common photos, "
                     f"rotation median {a.get('median_rot_deg')} / max {a.get('max_rot_deg')} deg, position median "
                     f"{a.get('median_pos_pct')} / max {a.get('max_pos_pct')} % of the radius")
    if "saved" in report:
        lines.append(f"saved {report['saved']['mapper']} model: {report['saved']['dir']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="work folder (data, databases, models, logs, JSON)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--synthetic", type=int, metavar="N", help="render an N-frame video of the demo scene")
    what.add_argument("--photos", type=Path, metavar="DIR", help="a folder of photos")
    ap.add_argument("--mappers", nargs="+", choices=MAPPERS, default=list(MAPPERS))
    ap.add_argument("--cap-seconds", nargs="+", default=[], metavar="[MAPPER=]S",
                    help="mapping wall-time cap, for all mappers or one (e.g. 300 incremental=120); none by default")
    ap.add_argument("--features-cap", type=float, default=None, help="wall-time cap of extraction + matching")
    ap.add_argument("--total-seconds", type=float, default=None,
                    help="wall-time budget of this whole run: every stage's cap is cut to what is left of it "
                         f"(less {RESERVE_S:g} s for the comparisons), so the run ends in time whatever the caps say")
    ap.add_argument("--until", type=float, default=None, metavar="EPOCH",
                    help="like --total-seconds, as a Unix time (date +%%s): several runs share one budget")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--matcher", default="auto", help="as run_sfm (auto: exhaustive up to 500 photos, else sequential)")
    ap.add_argument("--overlap", type=int, default=10, help="sequential matcher: neighbours per frame")
    ap.add_argument("--max-features", type=int, default=8192)
    ap.add_argument("--max-image-size", type=int, default=3200)
    ap.add_argument("--camera-model", default="OPENCV")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--loops", type=int, default=0, help=f"helix turns (0: one per {FRAMES_PER_LOOP} frames)")
    ap.add_argument("--supersample", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-scene", type=Path, metavar="DIR", help="write the chosen model for train_bench --data")
    ap.add_argument("--save-mapper", choices=("best", *MAPPERS), default="best")
    ap.add_argument("--json", type=Path, help="results file (default OUT/sfm_scale_<tag>.json)")
    a = ap.parse_args(argv)
    caps = _caps(a.cap_seconds)
    out = Path(a.out).resolve()
    report: dict = {"threads": a.threads, "argv": sys.argv[1:] if argv is None else list(argv),
                    "cpu_count": os.cpu_count()}
    t_all = time.perf_counter()
    ends = [t_all + a.total_seconds] if a.total_seconds is not None else []
    if a.until is not None:  # perf_counter and the wall clock differ by a constant
        ends.append(t_all + a.until - time.time())
    deadline = min(ends) if ends else None
    if a.synthetic:
        loops = a.loops or max(1, round(a.synthetic / FRAMES_PER_LOOP))
        tag = f"synthetic{a.synthetic}"
        data = out / tag
        report["generation"] = generate_video(data, a.synthetic, width=a.width, height=a.height, loops=loops,
                                              supersample=a.supersample, seed=a.seed, workers=a.threads)
        print(f"generation: {report['generation']}", flush=True)
        image_dir = data / "images"
        from nerflib import scene_io

        gt_scene = scene_io.read_scene_json(data / "gt" / "scene.json")
        gt = dict(zip(gt_scene.names, gt_scene.c2w))
    else:
        image_dir = a.photos.resolve()
        tag = image_dir.parent.name if image_dir.name == "images" else image_dir.name
        gt = None
    report.update(mode="synthetic" if a.synthetic else "photos", tag=tag, image_dir=str(image_dir))
    run = out / f"run_{tag}"
    run.mkdir(parents=True, exist_ok=True)
    database = run / "database.db"
    database.unlink(missing_ok=True)
    settings = {"camera_model": a.camera_model, "matcher": a.matcher, "overlap": a.overlap, "threads": a.threads,
                "max_image_size": a.max_image_size, "max_num_features": a.max_features}
    task = {"stage": "features", "image_dir": str(image_dir), "database": str(database), "settings": settings,
            "result": str(run / "features.json")}
    feats = run_capped(task, _cap(a.features_cap, deadline), run / "features.log")
    report["features"] = {k: v for k, v in feats.items() if k != "names"}
    report["photos"] = len(feats.get("names", [])) or (a.synthetic or 0)
    print(f"features: {report['features']}", flush=True)
    report["mappers"] = {}
    if feats["status"] == "ok":
        for m in a.mappers:
            db = run / f"database_{m}.db"  # a copy each, so that no mapper sees another's writes
            shutil.copyfile(database, db)
            task = {"stage": "map", "mapper": m, "image_dir": str(image_dir), "database": str(db),
                    "models_dir": str(run / m / "models"), "sparse": str(run / m / "sparse" / "0"),
                    "names": feats["names"], "threads": a.threads,
                    "ordered": True if feats["matcher"] == "sequential" else None, "result": str(run / f"{m}.json")}
            cap = _cap(caps[m], deadline)
            r = run_capped(task, cap, run / f"{m}.log") if cap is None or cap > 1 else {
                "status": "skipped (no time left)", "capped": True}
            db.unlink(missing_ok=True)
            if r["status"] == "ok" and r["registered"] and gt is not None:
                r["accuracy"] = compare(_poses(run / m / "sparse" / "0"), gt)
            report["mappers"][m] = r
            print(f"{m}: {json.dumps({k: v for k, v in r.items() if k not in ('warnings', 'flagged')})}", flush=True)
    done = [m for m in MAPPERS if report["mappers"].get(m, {}).get("registered")]
    if len(done) == 2:
        report["agreement"] = compare(_poses(run / "incremental" / "sparse" / "0"), _poses(run / "global" / "sparse" / "0"))
    if a.save_scene:
        m = choose(report["mappers"], a.save_mapper)
        if m is None:
            print(f"--save-scene: no {a.save_mapper} model to save", file=sys.stderr)
        else:
            report["saved"] = {"mapper": m, **save_scene(a.save_scene.resolve(), run / m / "sparse" / "0", image_dir)}
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    path = a.json or out / f"sfm_scale_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(_table(report))
    print(f"total {report['total_s']} s; results in {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
