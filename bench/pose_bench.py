"""The pose stage against the `colmap` command-line program, on the same photos and settings.

Runs nerflib.sfm.run_sfm (pycolmap, in process) and the three `colmap` commands
(feature_extractor, {sequential,exhaustive}_matcher, mapper) with the same
options, times each stage, and compares the two models: images registered,
3-D points, mean reprojection error, and how far our camera poses are from
colmap's after a similarity alignment (median rotation error, median camera
position error in % of the camera rig's radius). Prints a Markdown table.

Each stage gets its wall-clock seconds and its CPU seconds (user + system, all
threads): getrusage(RUSAGE_SELF) deltas around our stages (run_sfm's on_stage
hook), getrusage(RUSAGE_CHILDREN) deltas around each `colmap` command (the
`colmap` processes are this script's only children, so this holds with
--parallel too; ours then also counts this script's other thread, which waits
on colmap and reads its model: well under a second). With --threads 1 the CPU seconds hardly depend on the machine's
load, so they compare the tools on a busy machine where wall times do not.
out/results.json is rewritten as each stage ends ("complete": false until the
end), so an interrupted run still leaves the stages it finished.

    python bench/pose_bench.py --images $DNERF_DATA/mipnerf360_bonsai_800/images --matcher sequential \
        --threads 1 --out /tmp/pose_bench

--parallel runs both tools at the same time, so a busy machine slows both alike
(use it with --threads 1 on a 2-core machine). Needs pycolmap and the `colmap`
program (Debian: apt-get install colmap); CPU SIFT and matching in both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerflib import fileio, pose_checks, scene_io, sfm  # noqa: E402


def colmap_version() -> str:
    out = subprocess.run(["colmap", "-h"], capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "COLMAP" in line), "colmap ?")


STAGES = ("extraction", "matching", "mapping")


OURS, CLI = "ours (pycolmap, in process)", "colmap CLI"


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF, all threads) or its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    """The results so far, written to `path` (atomically) after every stage, so a partial run still has figures."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta, self.rows, self.complete = path, meta, {}, False
        self.lock = threading.Lock()  # --parallel: two tools report at once

    def stage(self, tool: str, stage: str, wall: float, cpu: float) -> None:
        with self.lock:
            row = self.rows.setdefault(tool, {"timings": {}, "cpu": {}})
            row["timings"][f"{stage}_s"], row["cpu"][f"{stage}_s"] = wall, cpu
            self._write()

    def update(self, tool: str, **fields) -> None:
        with self.lock:
            self.rows.setdefault(tool, {"timings": {}, "cpu": {}}).update(fields)
            self._write()

    def _write(self) -> None:
        fileio.write_text(self.path, json.dumps({"meta": self.meta, "complete": self.complete,
                                                 "results": self.rows}, indent=1, default=str))


def run_colmap(images: Path, work: Path, args, record, done: dict | None = None) -> dict:
    """The three colmap commands, one after the other; the model folder.

    record(stage, wall_s, cpu_s) after each; cpu_s from RUSAGE_CHILDREN, so nothing
    else of this process may end a child process meanwhile. `done`: {stage: (wall_s, cpu_s)} of
    stages an interrupted run finished (--resume); those are not run again (their database is reused)."""
    done = done or {}
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
    start, cpu_total = time.perf_counter(), 0.0
    wall_before = 0.0  # the finished stages' wall time (--resume)
    for stage, command in stages.items():
        if stage[:-2] in done:
            wall, cpu = done[stage[:-2]]
            wall_before, cpu_total = wall_before + wall, cpu_total + cpu
            record(stage[:-2], wall, cpu)
            continue
        t0, c0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        with open(work / f"{stage[:-2]}.log", "w") as log:
            subprocess.run(["colmap", *map(str, command)], check=True, stdout=log, stderr=subprocess.STDOUT)
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - c0
        cpu_total += cpu
        record(stage[:-2], time.perf_counter() - t0, cpu)
    record("total", wall_before + time.perf_counter() - start, cpu_total)
    models = sorted((p for p in sparse.iterdir() if (p / "images.bin").is_file()),
                    key=lambda p: len(scene_io.read_colmap(p, image_dir=images, check_images=False)))
    return {"model": models[-1] if models else None}


def run_ours(images: Path, work: Path, args, record) -> dict:
    """nerflib.sfm.run_sfm; record(stage, wall_s, cpu_s) after each stage, cpu_s from RUSAGE_SELF."""
    starts = {}

    def on_stage(stage: str, event: str) -> None:
        now = (time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF))
        if event == "start":
            starts[stage] = now
            starts.setdefault("total", now)
        else:
            record(stage, now[0] - starts[stage][0], now[1] - starts[stage][1])
            if stage == STAGES[-1]:  # extraction start to mapping end
                record("total", now[0] - starts["total"][0], now[1] - starts["total"][1])

    summary = sfm.run_sfm(images, work, camera_model=args.camera_model, matcher=args.matcher, overlap=args.overlap,
                          threads=args.threads, max_image_size=args.max_image_size,
                          max_num_features=args.max_features, sift_first_octave=-1, gpu=False,
                          min_registered_fraction=0.0, log=lambda m: None, on_stage=on_stage)
    return {"model": work / "sparse" / "0", "summary": summary}


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
    # After a similarity (Umeyama) alignment of the camera centres; the residuals say whether the two agree.
    cmp = pose_checks.compare_poses(ca, cb, names=common)
    return {"common": len(common), "rotation_deg": cmp["median_rot_deg"], "position_pct": cmp["median_pos_pct"],
            "max_rotation_deg": cmp["max_rot_deg"], "max_position_pct": cmp["max_pos_pct"],
            "over_5_deg": cmp["over_5_deg"], "worst": cmp["worst"], "warning": cmp["warning"]}


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
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run in --out: keep the stages its results.json records "
                        "(and their files), run the rest")
    args = p.parse_args(argv)
    if shutil.which("colmap") is None:
        raise SystemExit("the `colmap` program is not installed (Debian: apt-get install colmap)")
    import pycolmap

    images, out = Path(args.images), Path(args.out)
    before = {}
    if args.resume and (out / "results.json").is_file():
        before = json.loads((out / "results.json").read_text())["results"]
    elif out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len([f for f in images.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")])
    meta = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
            "pycolmap": pycolmap.__version__, "colmap": colmap_version(), "command": " ".join(sys.argv),
            "images": n, "parallel": args.parallel}
    print(meta, flush=True)
    rec = Recorder(out / "results.json", meta)

    def finished_stages(tool: str) -> dict:
        row = before.get(tool, {"timings": {}, "cpu": {}})
        return {s: (row["timings"][f"{s}_s"], row["cpu"][f"{s}_s"]) for s in STAGES
                if f"{s}_s" in row["timings"] and f"{s}_s" in row["cpu"]}

    def resumed_ours(record):
        """Ours finished earlier (--resume): its figures and model as they were."""
        for stage, (wall, cpu) in finished_stages(OURS).items():
            record(stage, wall, cpu)
        row = before[OURS]
        record("total", row["timings"]["total_s"], row["cpu"]["total_s"])
        return {"model": out / "ours" / "sparse" / "0"}

    ours_done = "registered" in before.get(OURS, {})
    runners = {OURS: resumed_ours if ours_done else lambda record: run_ours(images, out / "ours", args, record),
               CLI: lambda record: run_colmap(images, out / "colmap", args, record, done=finished_stages(CLI))}

    def job(name):
        """One tool; its model's statistics recorded as soon as it ends. None if it failed."""
        try:
            r = runners[name](lambda stage, wall, cpu: rec.stage(name, stage, wall, cpu))
        except Exception as e:  # noqa: BLE001 - keep the other tool's figures
            rec.update(name, error=f"{type(e).__name__}: {e}")
            print(f"{name} failed: {e}", file=sys.stderr, flush=True)
            return None
        stats = model_stats(r["model"], images) if r["model"] else {"registered": 0, "points": 0,
                                                                       "reprojection_px": float("nan")}
        rec.update(name, **stats)
        return r["model"]

    if args.parallel:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {name: pool.submit(job, name) for name in runners}
            models = {name: f.result() for name, f in futures.items()}
    else:
        models = {name: job(name) for name in runners}

    print(f"\n{images}: {n} photos; matcher {args.matcher} (overlap {args.overlap}), {args.camera_model}, one camera, "
          f"{args.threads} thread(s) each, max image size {args.max_image_size}, {args.max_features} features, CPU"
          f"{', both tools at once' if args.parallel else ''}; wall-clock and CPU (user + system) seconds\n")
    cols = [f"{s} (s)" for s in (*STAGES, "total")] + [f"{s} CPU (s)" for s in (*STAGES, "total")]
    print("| tool | " + " | ".join(cols) + " | registered | points | reproj. error (px) |")
    print("|---|" + "---|" * (len(cols) + 3))
    for name in runners:
        row = rec.rows.get(name, {"timings": {}, "cpu": {}})
        cells = [row[kind].get(f"{s}_s") for kind in ("timings", "cpu") for s in (*STAGES, "total")]
        cells = ["-" if c is None else f"{c:.1f}" for c in cells]
        if "registered" in row:
            cells += [f"{row['registered']}/{n}", f"{row['points']:,}", f"{row['reprojection_px']:.3f}"]
        else:
            cells += ["-", "-", "-"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if all(models.values()):
        agree = pose_agreement(*models.values(), images)
        rec.rows["agreement"] = agree
        print(f"\nour poses vs colmap's after a similarity alignment ({agree['common']} common images): median "
              f"rotation {agree['rotation_deg']:.3f} deg (max {agree['max_rotation_deg']:.2f}), median position "
              f"{agree['position_pct']:.3f} % of the radius (max {agree['max_position_pct']:.2f} %)")
        if agree["warning"]:
            print(f"WARNING: {agree['warning']}; most off: {agree['worst']}")
    with rec.lock:
        rec.complete = True
        rec._write()
    return 0 if all(models.values()) else 1

if __name__ == "__main__":
    sys.exit(main())
