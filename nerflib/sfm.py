"""Structure from motion in process with pycolmap (>= 3.12; verified on 4.2.1).

`run_sfm(image_dir, out_dir)` runs SIFT extraction, matching and incremental
mapping and leaves, only on success:

    out_dir/sparse/0/        COLMAP binary model (cameras.bin, images.bin,
                             points3D.bin, and COLMAP >= 3.12's rigs.bin,
                             frames.bin); image names relative to image_dir
    out_dir/database.db      COLMAP feature/match database (keep_database=True)
    out_dir/poses/summary.json  (or `summary_path`) what `run_sfm` returns

Everything is built in a temp folder `out_dir/.sfm-*` (same file system) and
renamed into place at the end, so a failed or interrupted run leaves earlier
results as they were. Images are used in their stored pixel layout (COLMAP
ignores EXIF orientation; see `nerflib.images`).

pycolmap writes its own (glog) progress to stderr; the stage summaries go to
`log` (default `print`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from nerflib import fileio
from nerflib.images import check_images
from nerflib.types import CAMERA_MODELS

MATCHERS = ("auto", "exhaustive", "sequential", "vocab_tree")
# matcher="auto" matches all pairs up to this many images (n^2/2 pairs: 500
# images = 125k pairs, about an hour of CPU matching on a few cores).
AUTO_EXHAUSTIVE_MAX_IMAGES = 500
# sift_first_octave="auto" upsamples images up to this size (longest side, px).
# Measured on a 1600x1202 Sceaux photo: first octave -1 takes 8.7 s, 0 takes
# 2.4 s for the same number of features (about 5000).
SIFT_UPSAMPLE_MAX_SIZE = 1024

VOCAB_TREE_HELP = (
    "Download one of COLMAP's published vocabulary trees (see 'Vocabulary trees' on the "
    "Datasets page of the COLMAP documentation; pycolmap >= 3.12 needs the faiss-format "
    "trees, vocab_tree_faiss_flickr100K_words32K.bin for up to ~1000 images, the 256K-word "
    "tree beyond; the older FLANN-format vocab_tree_flickr100K_*.bin files do not load), "
    "store it on a shared disk and set the `vocab_tree` config key (run_sfm's vocab_tree=) "
    "to its path."
)


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


def choose_matcher(matcher: str, n_images: int, vocab_tree: str | os.PathLike | None) -> tuple[str, str]:
    """(matcher to run, reason) for a requested matcher and image count."""
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}")
    if matcher == "vocab_tree" and not vocab_tree:
        raise ValueError(f"matcher 'vocab_tree' needs a vocabulary tree file. {VOCAB_TREE_HELP}")
    if matcher != "auto":
        return matcher, "requested"
    if n_images <= AUTO_EXHAUSTIVE_MAX_IMAGES:
        return "exhaustive", f"auto: {n_images} images <= {AUTO_EXHAUSTIVE_MAX_IMAGES}, all pairs are affordable"
    if vocab_tree:
        return "vocab_tree", f"auto: {n_images} images > {AUTO_EXHAUSTIVE_MAX_IMAGES} and a vocabulary tree is configured"
    return "sequential", (
        f"auto: {n_images} images > {AUTO_EXHAUSTIVE_MAX_IMAGES} and no vocabulary tree is configured; "
        "sequential matching assumes the file names follow the capture order (video frames)"
    )


def _resolve_gpu(gpu) -> bool:
    import pycolmap

    if gpu == "auto":
        return bool(pycolmap.has_cuda)
    if gpu is True or gpu is False:
        if gpu and not pycolmap.has_cuda:
            raise ValueError(
                "gpu=True but this pycolmap is a CPU-only build (pycolmap.has_cuda is False; "
                "PyPI wheels are CPU-only); use gpu='auto' or install a CUDA build of pycolmap"
            )
        return gpu
    raise ValueError(f"gpu must be 'auto', True or False, got {gpu!r}")


def _validate(camera_model, matcher, threads, max_image_size, min_registered_fraction, overlap):
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"unknown camera model {camera_model!r}; supported: {', '.join(CAMERA_MODELS)}")
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}")
    if not isinstance(threads, int) or (threads < 1 and threads != -1):
        raise ValueError(f"threads must be a positive integer or -1 (all cores), got {threads!r}")
    if max_image_size is not None and (not isinstance(max_image_size, int) or max_image_size < 16):
        raise ValueError(f"max_image_size must be an integer >= 16 pixels or None, got {max_image_size!r}")
    if not 0.0 <= min_registered_fraction <= 1.0:
        raise ValueError(f"min_registered_fraction must be in [0, 1], got {min_registered_fraction!r}")
    if not isinstance(overlap, int) or overlap < 1:
        raise ValueError(f"overlap must be a positive integer, got {overlap!r}")


def _replace_dir(src: Path, dst: Path, trash_parent: Path) -> None:
    """Move folder `src` onto `dst`, replacing an existing `dst` (old one goes to trash_parent)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        os.replace(dst, trash_parent / "old_model")
    os.replace(src, dst)


def run_sfm(
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    camera_model: str = "OPENCV",
    single_camera: bool = True,
    matcher: str = "auto",
    vocab_tree: str | os.PathLike | None = None,
    overlap: int = 10,
    threads: int = -1,
    max_image_size: int | None = 3200,
    max_num_features: int = 8192,
    sift_first_octave: int | str = "auto",
    min_registered_fraction: float = 0.5,
    gpu="auto",
    seed: int = 0,
    keep_database: bool = True,
    summary_path: str | os.PathLike | None = None,
    log: Callable[[str], object] = print,
) -> dict:
    """Estimate camera poses and intrinsics of the photos in `image_dir` with COLMAP.

    camera_model : one of nerflib.types.CAMERA_MODELS (COLMAP names).
    single_camera: one shared camera for all photos (else COLMAP's AUTO mode:
                   photos of equal size and EXIF camera share one).
    matcher      : "exhaustive" (all pairs), "sequential" (video; each frame
                   with the next `overlap` frames, quadratic steps beyond, loop
                   detection if `vocab_tree` is given), "vocab_tree" (image
                   retrieval; needs `vocab_tree`), or "auto" (exhaustive up to
                   500 images, then vocab_tree if a tree is given, else sequential).
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
    gpu          : "auto" (SIFT on the GPU if pycolmap has CUDA), True, False.
    seed         : COLMAP's random seed (runs are repeatable up to thread timing).

    Returns the summary dict (also written to `summary_path`, default
    out_dir/poses/summary.json): total, registered, registered_fraction,
    unregistered (names), models_found, model_sizes, model_kept, matcher,
    matcher_reason, camera_model, cameras (model, width, height, params in
    full-size pixels), points, mean_reprojection_error_px, keypoints,
    verified_pairs, the settings used, and timings (extraction_s, matching_s,
    mapping_s, total_s). Raises ValueError for bad arguments or unreadable
    photos, SfMError when too few photos register.
    """
    import pycolmap

    _validate(camera_model, matcher, threads, max_image_size, min_registered_fraction, overlap)
    if not isinstance(max_num_features, int) or max_num_features < 64:
        raise ValueError(f"max_num_features must be an integer >= 64, got {max_num_features!r}")
    if sift_first_octave != "auto" and sift_first_octave not in (-1, 0, 1, 2):
        raise ValueError(f"sift_first_octave must be 'auto', -1, 0, 1 or 2, got {sift_first_octave!r}")
    use_gpu = _resolve_gpu(gpu)
    if vocab_tree and not Path(vocab_tree).is_file():
        raise ValueError(f"vocabulary tree file {vocab_tree} does not exist. {VOCAB_TREE_HELP}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    summary_path = Path(summary_path) if summary_path is not None else out_dir / "poses" / "summary.json"
    sizes = check_images(image_dir, min_images=3, single_camera=single_camera)
    names = [n for n, _, _ in sizes]
    n = len(names)
    matcher_used, matcher_reason = choose_matcher(matcher, n, vocab_tree)
    if matcher == "auto" and matcher_used == "sequential":
        log(
            f"[sfm] WARNING: {n} images and no vocabulary tree: falling back to sequential matching, "
            "which only works for ordered captures (video). For unordered photos configure a "
            f"vocabulary tree. {VOCAB_TREE_HELP}"
        )
    longest = max(max(w, h) for _, w, h in sizes)
    if max_image_size is not None:
        longest = min(longest, max_image_size)
    if sift_first_octave == "auto":
        first_octave = -1 if longest <= SIFT_UPSAMPLE_MAX_SIZE else 0
    else:
        first_octave = int(sift_first_octave)
    device = pycolmap.Device.cuda if use_gpu else pycolmap.Device.cpu
    log(
        f"[sfm] {n} images in {image_dir} ({sizes[0][1]}x{sizes[0][2]} first); camera {camera_model}"
        f"{' shared' if single_camera else ''}; matcher {matcher_used} ({matcher_reason}); "
        f"threads {threads}; SIFT on {'GPU' if use_gpu else 'CPU'} (longest side {longest} px, "
        f"first octave {first_octave}, <= {max_num_features} features); pycolmap {pycolmap.__version__}"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".sfm-"))
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    try:
        database = work / "database.db"
        pycolmap.set_random_seed(seed)

        # 1. Features.
        t0 = time.perf_counter()
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = camera_model
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = threads
        extraction.max_image_size = -1 if max_image_size is None else int(max_image_size)
        extraction.use_gpu = use_gpu
        extraction.sift.max_num_features = int(max_num_features)
        extraction.sift.first_octave = first_octave
        pycolmap.extract_features(
            database,
            image_dir,
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO,
            reader_options=reader,
            extraction_options=extraction,
            device=device,
        )
        timings["extraction_s"] = time.perf_counter() - t0
        with contextlib.closing(pycolmap.Database.open(database)) as db:
            n_db, n_kp, n_cams = db.num_images(), db.num_keypoints(), db.num_cameras()
        log(
            f"[sfm] extraction: {n_db}/{n} images, {n_kp} keypoints ({n_kp / max(n_db, 1):.0f}/image), "
            f"{n_cams} camera(s), {timings['extraction_s']:.1f} s"
        )
        if n_db < n:
            log(f"[sfm] WARNING: COLMAP could not read {n - n_db} of the {n} images (see its log above)")

        # 2. Matches.
        t0 = time.perf_counter()
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = threads
        matching.use_gpu = use_gpu
        if matcher_used == "exhaustive":
            pycolmap.match_exhaustive(database, matching_options=matching, device=device)
        elif matcher_used == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = overlap
            pairing.quadratic_overlap = True
            pairing.num_threads = threads
            if vocab_tree:
                pairing.loop_detection = True
                pairing.vocab_tree_path = str(vocab_tree)
            pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=device)
        else:
            pairing = pycolmap.VocabTreePairingOptions()
            pairing.vocab_tree_path = str(vocab_tree)
            pairing.num_images = min(100, n)
            pairing.num_threads = threads
            pycolmap.match_vocabtree(database, matching_options=matching, pairing_options=pairing, device=device)
        timings["matching_s"] = time.perf_counter() - t0
        with contextlib.closing(pycolmap.Database.open(database)) as db:
            n_pairs = db.num_matched_image_pairs()
            # num_verified_image_pairs() also counts pairs that failed verification
            # (one row per pair tried); count the pairs with inliers instead.
            _, inliers = db.read_two_view_geometry_num_inliers()
            n_verified = sum(1 for k in inliers if k > 0)
        log(
            f"[sfm] matching ({matcher_used}): {n_pairs} image pairs matched, "
            f"{n_verified} geometrically verified, {timings['matching_s']:.1f} s"
        )

        # 3. Incremental mapping; keep the model with the most registered images.
        t0 = time.perf_counter()
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = threads
        options.mapper.num_threads = threads
        options.random_seed = seed
        options.mapper.random_seed = seed
        models_dir = work / "models"
        models_dir.mkdir()
        models = pycolmap.incremental_mapping(database, image_dir, models_dir, options)
        timings["mapping_s"] = time.perf_counter() - t0
        counts = {int(k): int(rec.num_reg_images()) for k, rec in models.items()}
        log(
            f"[sfm] mapping: {len(models)} model(s) with {sorted(counts.values(), reverse=True)} "
            f"registered images, {timings['mapping_s']:.1f} s"
        )
        timings["total_s"] = time.perf_counter() - t_start

        summary = {
            "image_dir": str(image_dir),
            "total": n,
            "registered": 0,
            "registered_fraction": 0.0,
            "unregistered": list(names),
            "models_found": len(models),
            "model_sizes": sorted(counts.values(), reverse=True),
            "model_kept": None,
            "matcher": matcher_used,
            "matcher_reason": matcher_reason,
            "camera_model": camera_model,
            "single_camera": bool(single_camera),
            "max_image_size": max_image_size,
            "max_num_features": max_num_features,
            "sift_first_octave": first_octave,
            "threads": threads,
            "gpu": use_gpu,
            "keypoints": int(n_kp),
            "verified_pairs": int(n_verified),
            "pycolmap_version": pycolmap.__version__,
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        advice = (
            "Try: photos with more overlap (each point of the scene seen from 3+ nearby views), "
            "another matcher (exhaustive for unordered photos), more texture in the scene "
            "(plain walls and reflective objects give no features), a larger max_image_size, "
            "or a different camera model (SIMPLE_RADIAL for few photos, OPENCV_FISHEYE for wide lenses)."
        )
        if not models:
            log(f"[sfm] summary: {summary}")
            raise SfMError(
                f"structure from motion registered 0 of {n} images in {image_dir}: "
                f"no initial image pair was found ({n_verified} verified pairs). {advice}"
            )
        kept = max(counts, key=lambda k: (counts[k], -k))
        rec = models[kept]
        summary.update(summarize_reconstruction(rec, names))
        summary["model_kept"] = kept
        summary["registered_fraction"] = summary["registered"] / n
        summary.pop("registered_names")  # long; the model itself lists them
        log(
            f"[sfm] kept model {kept}: {summary['registered']}/{n} images registered, "
            f"{summary['points']} points, mean reprojection error "
            f"{summary['mean_reprojection_error_px']:.3f} px, total {timings['total_s']:.1f} s"
        )
        if summary["unregistered"]:
            log(f"[sfm] unregistered: {', '.join(summary['unregistered'])}")
        needed = math.ceil(min_registered_fraction * n)
        if summary["registered"] < needed:
            raise SfMError(
                f"structure from motion registered only {summary['registered']} of {n} images in {image_dir} "
                f"(at least {needed} = {min_registered_fraction:.0%} required; {len(models)} separate model(s) "
                f"of sizes {summary['model_sizes']}). {advice} If a partial model is acceptable, "
                "lower min_registered_fraction."
            )

        # 4. Publish: model folder, database, summary (each renamed into place).
        staged = work / "sparse0"
        staged.mkdir()
        rec.write_binary(staged)
        _replace_dir(staged, out_dir / "sparse" / "0", work)
        if keep_database:
            os.replace(database, out_dir / "database.db")
        fileio.write_json(summary_path, summary)
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
