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
`check_vocab_tree`), `nerflib.mapping` (the mappers, mapper="auto"'s choice
and fallback); this module runs the stages and publishes the model.

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

from nerflib import fileio, mapping, matching, pose_checks
from nerflib.layout import SceneLayout
from nerflib.mapping import (  # noqa: F401 (re-exported: the mappers are part of run_sfm's interface)
    AUTO_GLOBAL_MIN_IMAGES,
    AUTO_MAX_PROBLEM_FRACTION,
    MAPPERS,
    attempt_record,
    auto_fallback_reason,
    auto_mappers,
    map_database,
    problem_count,
)
from nerflib.matching import VOCAB_TREE_NUM_IMAGES


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
    """run_sfm's step 3: `mapping.map_and_choose`, timed (timings["mapping_s"])."""
    stage("mapping", "start")
    t0 = time.perf_counter()
    result = mapping.map_and_choose(database, image_dir, work, plan["names"], mapper=opts.mapper,
                                    matcher=plan["matcher"], threads=opts.threads, seed=opts.seed, log=log)
    timings["mapping_s"] = time.perf_counter() - t0
    stage("mapping", "end")
    return result


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
        "mapper_attempts": [attempt_record(a, n) for a in mapping["attempts"]],
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
