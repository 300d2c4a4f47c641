"""Structure from motion in process with pycolmap (>= 3.12; verified on 4.2.1).

`run_sfm(image_dir, out_dir)` runs SIFT extraction, matching and mapping
(incremental or global: `mapper`) and leaves, only on success (the paths are
`nerflib.layout.SceneLayout(out_dir)`'s sparse, database and summary_json):

    out_dir/sparse/0/        COLMAP binary model (cameras.bin, images.bin,
                             points3D.bin, and COLMAP >= 3.12's rigs.bin,
                             frames.bin); image names relative to image_dir
    out_dir/database.db      COLMAP feature/match database (keep_database=True)
    out_dir/poses/summary.json  (or `summary_path`) what `run_sfm` returns

Everything is built in a temp folder `out_dir/.sfm-*` (same file system) and
renamed into place at the end, so a failed or interrupted run leaves earlier
results as they were; the next run deletes the folder a killed one left
behind (tests/test_kill_resume.py). Images are used in their stored pixel
layout (COLMAP ignores EXIF orientation; see `nerflib.images`).

The stages live by concept: `nerflib.sift` (SIFT extraction, GPU or CPU),
`nerflib.matching` (the matcher's choice, features and verified matches in a
database: `extract_and_match`), `nerflib.vocab_tree` (`build_vocab_tree`,
`check_vocab_tree`); this module maps (`map_database`, mapper="auto"'s
fallback) and publishes the model.

pycolmap writes its own (glog) progress to stderr; the stage summaries go to
`log` (default `print`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nerflib import fileio, matching, pose_checks
from nerflib.layout import SceneLayout
from nerflib.matching import VOCAB_TREE_NUM_IMAGES

MAPPERS = ("incremental", "global", "auto")
# mapper="auto" (from AUTO_GLOBAL_MIN_IMAGES photos) runs global mapping first
# and falls back to incremental mapping (on the same matches) when the global
# model's poses contradict the verified pairs, its path jumps, a camera's
# intrinsics are implausible, or more than AUTO_MAX_PROBLEM_FRACTION of the
# photos (at least one) are unregistered or weak (pose_checks.diagnose);
# `auto_fallback_reason`. Then the model with fewer such photos is kept.
AUTO_MAX_PROBLEM_FRACTION = 0.01
# mapper="auto" maps captures of fewer photos than this incrementally, without
# trying global mapping. Measured on 2 shared CPU cores, mapping the same
# matches (global vs incremental): 24 bonsai photos 12.6 s vs 7.2 s; a 60-frame
# synthetic orbit 36 s vs 9.4 s; a 200-frame synthetic video (sequential
# matcher) 227 s vs 223 s wall, 125 s vs 69 s of CPU; bonsai's 292 photos
# (exhaustive) 397 s vs 872 s, the models agreeing to 0.007 deg. The crossover
# lies between 200 and 292 photos.
AUTO_GLOBAL_MIN_IMAGES = 250


class SfMError(RuntimeError):
    """Structure from motion ran but did not give a usable reconstruction."""


def summarize_reconstruction(rec, image_names: list[str] | None = None) -> dict:
    """Counts and quality figures of a pycolmap.Reconstruction (JSON-serializable).

    `image_names`: all input names; if given, the unregistered ones are listed.
    """
    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    summary = {
        "registered": len(registered),
        "points": int(rec.num_points3D()),
        "observations": int(rec.compute_num_observations()),
        "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
        "mean_track_length": float(rec.compute_mean_track_length()),
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image()),
        "cameras": [
            {
                "camera_id": int(cam_id),
                "model": cam.model.name,
                "width": int(cam.width),
                "height": int(cam.height),
                "params": [float(p) for p in cam.params],
            }
            for cam_id, cam in sorted(rec.cameras.items())
        ],
        "registered_names": registered,
    }
    if image_names is not None:
        reg = set(registered)
        summary["total"] = len(image_names)
        summary["unregistered"] = [n for n in image_names if n not in reg]
    return summary



WORK_PREFIX = ".sfm-"


def _remove_stale_work_dirs(out_dir: Path, log: Callable[[str], None]) -> None:
    """Delete the work folders of earlier runs that were killed (SIGKILL, node failure: no `finally` ran).

    One SfM runs per output folder at a time (Snakemake's output locks), so every
    `.sfm-*` folder found before ours is created is a leftover, with a feature
    database of up to gigabytes in it.
    """
    for stale in sorted(out_dir.glob(WORK_PREFIX + "*")):
        if stale.is_dir() and not stale.is_symlink():
            log(f"[sfm] removing {stale.name}, the work folder of an interrupted run")
            shutil.rmtree(stale, ignore_errors=True)



def _replace_dir(src: Path, dst: Path, trash_parent: Path) -> None:
    """Move folder `src` onto `dst`, replacing an existing `dst` (old one goes to trash_parent)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        os.replace(dst, trash_parent / "old_model")
    os.replace(src, dst)



def map_database(database, image_dir, models_dir, *, mapper: str, threads: int = -1, seed: int = 0) -> dict:
    """Run one mapper on a COLMAP database with verified matches: {model index: pycolmap.Reconstruction}.

    mapper: "incremental" (COLMAP's incremental mapper) or "global" (GLOMAP,
    pycolmap.global_mapping); "auto" is run_sfm's choice between the two.
    models_dir: an existing empty folder; COLMAP writes each model there (0/, 1/ ...).
    An empty dict when no model was found (no initial pair).
    """
    import pycolmap

    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads
        options.random_seed = seed
        return dict(pycolmap.global_mapping(database, image_dir, models_dir, options))
    if mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = threads
        options.mapper.num_threads = threads
        options.random_seed = seed
        options.mapper.random_seed = seed
        return dict(pycolmap.incremental_mapping(database, image_dir, models_dir, options))
    raise ValueError(f"map_database runs 'incremental' or 'global', got {mapper!r}")


def auto_mappers(n: int) -> tuple[tuple[str, ...], str]:
    """mapper="auto"'s plan for n photos: the mappers to try in order, and why (the summary's mapper_reason).

    Fewer than AUTO_GLOBAL_MIN_IMAGES photos: incremental mapping only. Else
    global mapping, then incremental mapping when `auto_fallback_reason` finds
    the global model wanting.
    """
    if n < AUTO_GLOBAL_MIN_IMAGES:
        return ("incremental",), (f"auto: {n} photos < {AUTO_GLOBAL_MIN_IMAGES}, where incremental mapping is "
                                  "the faster")
    return ("global", "incremental"), "auto: global mapping"


def auto_fallback_reason(total: int, registered: int, diag: dict | None) -> str | None:
    """Why mapper="auto" should not keep a global model (None: keep it).

    total: photos; registered: registered in the kept model; diag: its
    pose_checks.diagnose dict (None: no model). Reasons, the first that holds:
    no model; photos whose strongest verified pairs contradict their poses
    (pose_checks_pairs: names the photo itself, where a path jump may leave the
    wrong side of it suspect); path jumps (suspect frames of an ordered
    capture); implausible intrinsics; more than AUTO_MAX_PROBLEM_FRACTION of the photos
    unregistered or weak. A split view graph is no reason: both mappers see
    the same matches.
    """
    if diag is None or registered == 0:
        return "found no model"
    contradicted = diag.get("pairs", {}).get("contradicted", [])
    if contradicted:
        return (f"gave {len(contradicted)} photo(s) poses that their own verified pairs contradict "
                f"({_names_short(contradicted)})")
    suspect = diag.get("continuity", {}).get("suspect", [])
    if suspect:
        jumps = len(diag["continuity"]["jumps"])
        return f"gave a camera path with {jumps} jump(s), {len(suspect)} frame(s) suspect ({_names_short(suspect)})"
    bad = [c for c in diag.get("cameras", []) if c.get("problem")]
    if bad:
        return f"gave implausible intrinsics ({bad[0]['problem']})"
    problems = problem_count(total, registered, diag)
    tolerated = math.floor(AUTO_MAX_PROBLEM_FRACTION * total)
    if problems > tolerated:
        return (f"left {total - registered} of {total} photos unregistered and {len(diag.get('weak', []))} weak "
                f"(tolerated: {tolerated}, {AUTO_MAX_PROBLEM_FRACTION:.0%})")
    return None


def problem_count(total: int, registered: int, diag: dict | None) -> int:
    """Photos that a model does not pose trustworthily: unregistered + flagged by the diagnostics."""
    if diag is None:
        return total
    return total - registered + len(diag.get("flagged", []))


def _names_short(names, k: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _map_attempt(mapper, database, image_dir, models_dir, names, *, threads, seed, ordered, log) -> dict:
    """One mapper run and the diagnostics of its largest model (run_sfm's step 3)."""
    t0 = time.perf_counter()
    models_dir.mkdir()
    models = map_database(database, image_dir, models_dir, mapper=mapper, threads=threads, seed=seed)
    seconds = time.perf_counter() - t0
    counts = {int(k): int(rec.num_reg_images()) for k, rec in models.items()}
    log(f"[sfm] mapping ({mapper}): {len(models)} model(s) with {sorted(counts.values(), reverse=True)} "
        f"registered images, {seconds:.1f} s")
    attempt = {"mapper": mapper, "models": models, "counts": counts, "kept": None, "rec": None, "diag": None,
               "registered": 0, "seconds": seconds}
    if models:
        kept = max(counts, key=lambda k: (counts[k], -k))
        rec = models[kept]
        attempt.update(kept=kept, rec=rec, registered=counts[kept],
                       diag=pose_checks.diagnose(rec, names, database=database, ordered=ordered))
    return attempt


def _attempt_record(a: dict, total: int) -> dict:
    """The JSON-able part of an _map_attempt result (summary.json's mapper_attempts)."""
    diag = a["diag"]
    return {"mapper": a["mapper"], "registered": a["registered"], "models": len(a["models"]),
            "problems": problem_count(total, a["registered"], diag),
            "warnings": len(diag["warnings"]) if diag else None, "seconds": round(a["seconds"], 3)}


@dataclass(frozen=True)
class SfMOptions:
    """run_sfm's settings, each also a keyword argument of run_sfm (whose signature holds the defaults).

    camera_model : one of nerflib.types.CAMERA_MODELS (COLMAP names).
    single_camera: one shared camera for all photos (else COLMAP's AUTO mode:
                   photos of equal size and EXIF camera share one).
    matcher      : "exhaustive" (all pairs), "sequential" (video; each frame
                   with the next `overlap` frames, quadratic steps beyond, loop
                   detection if `vocab_tree` is given), "vocab_tree" (image
                   retrieval; needs `vocab_tree`), or "auto" (exhaustive up to
                   500 images, then vocab_tree if a tree is given, else sequential).
    vocab_tree   : a COLMAP faiss vocabulary tree file (build_vocab_tree, or
                   one of COLMAP's published trees); loaded before extraction
                   when the chosen matcher uses it (ValueError if it does not load).
    vocab_tree_num_images: matcher "vocab_tree" matches each photo with
                   (at most) this many most similar photos that retrieval finds.
    threads      : threads for extraction, matching and mapping (-1: all cores).
    max_image_size: longest side used for feature extraction (keypoints and
                   intrinsics stay in full-resolution pixels); None: no cap.
    max_num_features: SIFT features kept per image (COLMAP's default 8192);
                   matching time grows with its square, so lower it for speed.
    sift_first_octave: -1 doubles the image before SIFT (COLMAP's default:
                   more, finer features on small images), 0 does not (3-4x
                   faster extraction); "auto": -1 when the longest side used
                   for extraction is <= SIFT_UPSAMPLE_MAX_SIZE pixels, else 0.
    min_registered_fraction: fewer registered photos than this raises SfMError.
    gpu          : "auto" (SIFT extraction and matching on the GPU when pycolmap is
                   a CUDA build and a device is visible: `nerflib.sift.resolve_gpu`), True, False.
    seed         : COLMAP's random seed, for extraction, matching and both mappers
                   (GlobalPipelineOptions.random_seed reaches GLOMAP's stages). With
                   threads=1 a run is repeatable exactly. With more, extraction numbers
                   the photos in the order its threads finish them and each matching
                   thread draws its own RANSAC samples, so the database (image ids,
                   inliers of weak pairs) differs between runs and so, slightly, does the
                   model; mapping one database is repeatable (GLOMAP measured: the same
                   model from 1 and 2 threads, 9 runs).
    keep_database: move the feature/match database to out_dir/database.db.
    strict       : raise SfMError when the pose diagnostics warn (path jumps,
                   weak images, a split view graph; nerflib.pose_checks), instead
                   of only logging the warning; the model and summary are
                   written first, for inspection.
    mapper       : "auto" (the default), "incremental" (COLMAP's incremental
                   mapper) or "global" (GLOMAP, pycolmap.global_mapping: all poses
                   at once from the view graph, built for large captures). "auto"
                   (`auto_mappers`): incremental below AUTO_GLOBAL_MIN_IMAGES photos;
                   from there global, then incremental on the same matches when
                   `auto_fallback_reason` finds the global model wanting (logged
                   with the reason); the model with fewer problem photos
                   (unregistered + flagged) is kept, global on a tie. On the
                   40-view demo both register every view (tests/test_sfm.py).
    """

    camera_model: str
    single_camera: bool
    matcher: str
    vocab_tree: str | os.PathLike | None
    vocab_tree_num_images: int
    overlap: int
    threads: int
    max_image_size: int | None
    max_num_features: int
    sift_first_octave: int | str
    min_registered_fraction: float
    gpu: object
    seed: int
    keep_database: bool
    strict: bool
    mapper: str


def run_sfm(
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    camera_model: str = "OPENCV",
    single_camera: bool = True,
    matcher: str = "auto",
    vocab_tree: str | os.PathLike | None = None,
    vocab_tree_num_images: int = VOCAB_TREE_NUM_IMAGES,
    overlap: int = 10,
    threads: int = -1,
    max_image_size: int | None = 3200,
    max_num_features: int = 8192,
    sift_first_octave: int | str = "auto",
    min_registered_fraction: float = 0.5,
    gpu="auto",
    seed: int = 0,
    keep_database: bool = True,
    strict: bool = False,
    mapper: str = "auto",
    summary_path: str | os.PathLike | None = None,
    log: Callable[[str], object] = print,
    on_stage: Callable[[str, str], object] | None = None,
) -> dict:
    """Estimate camera poses and intrinsics of the photos in `image_dir` with COLMAP.

    The settings are documented on `SfMOptions`. on_stage: if given, called as on_stage(stage, "start") and
    on_stage(stage, "end") right around each timed stage ("extraction", "matching", "mapping"), e.g. to measure
    its CPU time (bench/pose_bench.py).

    Returns the summary dict (`sfm_summary` lists its keys), also written to `summary_path` (default
    out_dir/poses/summary.json). Raises ValueError for bad arguments, unreadable photos or a vocabulary tree
    that does not load, SfMError when too few photos register.
    """
    opts = SfMOptions(
        camera_model=camera_model, single_camera=single_camera, matcher=matcher, vocab_tree=vocab_tree,
        vocab_tree_num_images=vocab_tree_num_images, overlap=overlap, threads=threads, max_image_size=max_image_size,
        max_num_features=max_num_features, sift_first_octave=sift_first_octave,
        min_registered_fraction=min_registered_fraction, gpu=gpu, seed=seed, keep_database=keep_database,
        strict=strict, mapper=mapper)
    matching.check_settings(camera_model, matcher, threads, max_image_size, min_registered_fraction, overlap)
    if mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {', '.join(MAPPERS)}")
    image_dir, out_dir, layout = Path(image_dir), Path(out_dir), SceneLayout(out_dir)
    plan = matching.plan_matching(
        image_dir, camera_model=camera_model, single_camera=single_camera, matcher=matcher, vocab_tree=vocab_tree,
        vocab_tree_num_images=vocab_tree_num_images, overlap=overlap, threads=threads, max_image_size=max_image_size,
        max_num_features=max_num_features, sift_first_octave=sift_first_octave, gpu=gpu, log=log)
    summary_path = Path(summary_path) if summary_path is not None else Path(layout.summary_json)

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out_dir, log)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=WORK_PREFIX))

    def stage(name: str, event: str) -> None:
        if on_stage is not None:
            on_stage(name, event)

    t_start = time.perf_counter()
    try:
        database = work / "database.db"
        feats = matching.extract_and_match_planned(plan, database, seed=seed, log=log, stage=stage)
        timings = dict(feats["timings"])
        mapping = _mapping_stage(opts, database, image_dir, work, plan, timings=timings, stage=stage, log=log)
        timings["total_s"] = time.perf_counter() - t_start
        summary = sfm_summary(opts, image_dir, plan, feats, mapping, timings)
        _check_model(summary, mapping["chosen"], opts, image_dir, plan["names"], total_s=timings["total_s"], log=log)
        diag = mapping["chosen"]["diag"]
        _publish(mapping["chosen"]["rec"], summary, work, database, layout, summary_path, opts.keep_database)
        if strict and diag["warnings"]:
            raise SfMError(f"sfm.strict is set and the pose diagnostics warn (model and summary written to {out_dir} "
                           f"for inspection): {pose_checks.warning_message(diag)}")
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mapping_stage(opts: SfMOptions, database, image_dir, work, plan, *, timings, stage, log) -> dict:
    """run_sfm's step 3: map (incremental, global: GLOMAP, or auto: `auto_mappers`) and choose a model.

    Adds timings["mapping_s"]. Returns attempts (_map_attempt results), chosen (the attempt whose largest model
    is kept: fewest problem photos, then most registered) and reason (why that mapper, for the summary).
    """
    names, mapper = plan["names"], opts.mapper
    n = len(names)
    stage("mapping", "start")
    t0 = time.perf_counter()
    ordered = True if plan["matcher"] == "sequential" else None  # None: judged from the matches
    attempts = []
    order, reason = auto_mappers(n) if mapper == "auto" else ((mapper,), "requested")
    for m in order:
        attempts.append(_map_attempt(m, database, image_dir, work / f"models_{m}", names, threads=opts.threads,
                                     seed=opts.seed, ordered=ordered, log=log))
        if m == order[-1]:
            break
        why = auto_fallback_reason(n, attempts[-1]["registered"], attempts[-1]["diag"])
        if why is None:
            reason = "auto: global mapping registered the photos and its diagnostics are clean"
            break
        reason = f"auto: global mapping {why}"
        log(f"[sfm] mapper auto: global mapping {why}; trying incremental mapping on the same matches")
    chosen = min(attempts, key=lambda a: (problem_count(n, a["registered"], a["diag"]), -a["registered"]))
    if len(attempts) > 1:
        tally = ", ".join(f"{a['mapper']} {problem_count(n, a['registered'], a['diag'])}" for a in attempts)
        reason += f"; incremental tried, {chosen['mapper']} kept (photos unregistered or flagged: {tally})"
        log(f"[sfm] mapper auto: keeping the {chosen['mapper']} model ({reason})")
    timings["mapping_s"] = time.perf_counter() - t0
    stage("mapping", "end")
    return {"attempts": attempts, "chosen": chosen, "reason": reason}


def sfm_summary(opts: SfMOptions, image_dir: Path, plan: dict, feats: dict, mapping: dict, timings: dict) -> dict:
    """run_sfm's summary before the kept model is summarized (as written when no model was found).

    Keys: image_dir, total, registered, registered_fraction, unregistered (names), models_found, model_sizes,
    model_kept, matcher, matcher_reason, mapper (the one whose model was kept), mapper_requested, mapper_reason,
    mapper_attempts ([{mapper, registered, models, problems, warnings, seconds}]), vocab_tree (path, or None
    when no tree was used), vocab_tree_num_images, the settings used (camera_model, single_camera,
    max_image_size, max_num_features, sift_first_octave, threads, gpu, gpu_reason), keypoints, matched_pairs
    (image pairs the matcher tried: n(n-1)/2 for exhaustive), verified_pairs, pycolmap_version and timings
    (extraction_s, matching_s, mapping_s, total_s). With a model `_check_model` adds
    `summarize_reconstruction`'s keys (cameras: model, width, height, params in full-size pixels; points,
    mean_reprojection_error_px, ...) and diagnostics (pose_checks.diagnose: per-image observations, track
    lengths, view graph, path continuity, warnings).
    """
    import pycolmap

    names, chosen = plan["names"], mapping["chosen"]
    n, matcher_used = len(names), plan["matcher"]
    return {
        "image_dir": str(image_dir),
        "total": n,
        "registered": 0,
        "registered_fraction": 0.0,
        "unregistered": list(names),
        "models_found": len(chosen["models"]),
        "model_sizes": sorted(chosen["counts"].values(), reverse=True),
        "model_kept": None,
        "matcher": matcher_used,
        "matcher_reason": plan["matcher_reason"],
        "mapper": chosen["mapper"],
        "mapper_requested": opts.mapper,
        "mapper_reason": mapping["reason"],
        "mapper_attempts": [_attempt_record(a, n) for a in mapping["attempts"]],
        "vocab_tree": str(opts.vocab_tree) if plan["uses_tree"] else None,
        "vocab_tree_num_images": min(opts.vocab_tree_num_images, n) if matcher_used == "vocab_tree" else None,
        "camera_model": opts.camera_model,
        "single_camera": bool(opts.single_camera),
        "max_image_size": opts.max_image_size,
        "max_num_features": opts.max_num_features,
        "sift_first_octave": plan["first_octave"],
        "threads": opts.threads,
        "gpu": plan["use_gpu"],
        "gpu_reason": plan["gpu_reason"],
        "keypoints": feats["keypoints"],
        "matched_pairs": feats["matched_pairs"],
        "verified_pairs": feats["verified_pairs"],
        "pycolmap_version": pycolmap.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


SFM_ADVICE = (
    "Try: photos with more overlap (each point of the scene seen from 3+ nearby views), "
    "another matcher (exhaustive for unordered photos), more texture in the scene "
    "(plain walls and reflective objects give no features), a larger max_image_size, "
    "or a different camera model (SIMPLE_RADIAL for few photos, OPENCV_FISHEYE for wide lenses)."
)


def _check_model(summary: dict, chosen: dict, opts: SfMOptions, image_dir: Path, names: list[str], *, total_s: float,
                 log) -> None:
    """Add the kept model's figures and diagnostics to `summary` and log them; SfMError when it is missing or
    registers fewer than opts.min_registered_fraction of the photos."""
    n, models = len(names), chosen["models"]
    if not models:
        log(f"[sfm] summary: {summary}")
        raise SfMError(
            f"structure from motion registered 0 of {n} images in {image_dir}: "
            f"no initial image pair was found ({summary['verified_pairs']} verified pairs). {SFM_ADVICE}"
        )
    kept, diag = chosen["kept"], chosen["diag"]
    summary.update(summarize_reconstruction(chosen["rec"], names))
    summary["model_kept"] = kept
    summary["registered_fraction"] = summary["registered"] / n
    summary.pop("registered_names")  # long; the model itself lists them
    log(
        f"[sfm] kept model {kept}: {summary['registered']}/{n} images registered, "
        f"{summary['points']} points, mean reprojection error "
        f"{summary['mean_reprojection_error_px']:.3f} px, total {total_s:.1f} s"
    )
    if summary["unregistered"]:
        log(f"[sfm] unregistered: {', '.join(summary['unregistered'])}")
    summary["diagnostics"] = diag
    log(f"[sfm] diagnostics: {pose_checks.summary_line(diag)}")
    if diag["warnings"]:
        log(f"[sfm] WARNING: {pose_checks.warning_message(diag)}")
    needed = math.ceil(opts.min_registered_fraction * n)
    if summary["registered"] < needed:
        raise SfMError(
            f"structure from motion registered only {summary['registered']} of {n} images in {image_dir} "
            f"(at least {needed} = {opts.min_registered_fraction:.0%} required; {len(models)} separate model(s) "
            f"of sizes {summary['model_sizes']}). {SFM_ADVICE} If a partial model is acceptable, "
            "lower min_registered_fraction."
        )


def _publish(rec, summary: dict, work: Path, database: Path, layout: SceneLayout, summary_path: Path,
             keep_database: bool) -> None:
    """run_sfm's step 4: model folder, database, summary (each renamed into place)."""
    staged = work / "sparse0"
    staged.mkdir()
    rec.write_binary(staged)
    _replace_dir(staged, Path(layout.sparse), work)
    if keep_database:
        os.replace(database, layout.database)
    fileio.write_json(summary_path, summary)
