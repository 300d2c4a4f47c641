"""Structure from motion's first two stages: SIFT features and geometrically verified matches of a
folder of photos in a COLMAP database (pycolmap), and the choice of matcher.

`extract_and_match(image_dir, database)` runs them alone (bench/sfm_scale.py);
`nerflib.sfm.run_sfm` runs them (`plan_matching`, then `extract_and_match_planned`) before mapping.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from nerflib import sift
from nerflib.images import check_images, is_heif
from nerflib.types import CAMERA_MODELS
from nerflib.vocab_tree import VOCAB_TREE_HELP, check_vocab_tree

MATCHERS = ("auto", "exhaustive", "sequential", "vocab_tree")
# matcher="auto" matches all pairs up to this many images (n^2/2 pairs: 500
# images = 125k pairs, about an hour of CPU matching on a few cores).
AUTO_EXHAUSTIVE_MAX_IMAGES = 500
# matcher="vocab_tree": images retrieved per photo (COLMAP's VocabTreeMatching.num_images).
VOCAB_TREE_NUM_IMAGES = 100


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


def check_settings(camera_model, matcher, threads, max_image_size, min_registered_fraction, overlap):
    """ValueError for a bad run_sfm setting, checked in this order (callers pass 0.0 and 1 where the last two do not apply)."""
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"unknown camera model {camera_model!r}; supported: {', '.join(CAMERA_MODELS)}")
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}")
    sift.check_extraction_args(threads, max_image_size)
    if not 0.0 <= min_registered_fraction <= 1.0:
        raise ValueError(f"min_registered_fraction must be in [0, 1], got {min_registered_fraction!r}")
    if not isinstance(overlap, int) or overlap < 1:
        raise ValueError(f"overlap must be a positive integer, got {overlap!r}")


def plan_matching(image_dir: Path, *, camera_model, single_camera, matcher, vocab_tree, vocab_tree_num_images, overlap,
                  threads, max_image_size, max_num_features, sift_first_octave, gpu, log) -> dict:
    """Check the feature settings and the photos, choose matcher and device, log the plan (nothing written)."""
    import pycolmap

    check_settings(camera_model, matcher, threads, max_image_size, 0.0, overlap)
    sift.check_sift_args(max_num_features, sift_first_octave)
    if not isinstance(vocab_tree_num_images, int) or vocab_tree_num_images < 1:
        raise ValueError(f"vocab_tree_num_images must be a positive integer, got {vocab_tree_num_images!r}")
    use_gpu, gpu_reason = sift.resolve_gpu(gpu)
    if vocab_tree and not Path(vocab_tree).is_file():
        raise ValueError(f"vocabulary tree file {vocab_tree} does not exist. {VOCAB_TREE_HELP}")
    sizes = check_images(image_dir, min_images=3, single_camera=single_camera)
    names = [n for n, _, _ in sizes]
    heif = [name for name in names if is_heif(name)]
    if heif:  # COLMAP reads no HEIF: the workflow's intake step converts them first
        raise ValueError(f"{image_dir} holds HEIC/HEIF photos ({', '.join(heif[:3])}), which COLMAP cannot read; "
                         f"convert them first: nerf intake {image_dir} PHOTOS_DIR, then pose PHOTOS_DIR")
    n = len(names)
    matcher_used, matcher_reason = choose_matcher(matcher, n, vocab_tree)
    uses_tree = bool(vocab_tree) and matcher_used in ("vocab_tree", "sequential")
    tree_note = ""
    if uses_tree:
        tree = check_vocab_tree(vocab_tree)
        tree_note = f"; vocabulary tree {vocab_tree} ({tree['num_visual_words']} words)"
        if matcher_used == "vocab_tree":
            tree_note += f", {min(vocab_tree_num_images, n)} images retrieved per photo"
    if matcher == "auto" and matcher_used == "sequential":
        log(
            f"[sfm] WARNING: {n} images and no vocabulary tree: falling back to sequential matching, "
            "which only works for ordered captures (video). For unordered photos configure a "
            f"vocabulary tree. {VOCAB_TREE_HELP}"
        )
    longest, first_octave = sift.choose_first_octave(sizes, max_image_size, sift_first_octave)
    log(
        f"[sfm] {n} images in {image_dir} ({sizes[0][1]}x{sizes[0][2]} first); camera {camera_model}"
        f"{' shared' if single_camera else ''}; matcher {matcher_used} ({matcher_reason}){tree_note}; "
        f"threads {threads}; SIFT on {'GPU' if use_gpu else 'CPU'} ({gpu_reason}; longest side {longest} px, "
        f"first octave {first_octave}, <= {max_num_features} features); pycolmap {pycolmap.__version__}"
    )
    return {"image_dir": image_dir, "names": names, "camera_model": camera_model, "single_camera": single_camera,
            "matcher": matcher_used, "matcher_reason": matcher_reason, "uses_tree": uses_tree,
            "vocab_tree": vocab_tree, "vocab_tree_num_images": vocab_tree_num_images, "overlap": overlap,
            "threads": threads, "max_image_size": max_image_size, "max_num_features": max_num_features,
            "first_octave": first_octave, "use_gpu": use_gpu, "gpu_reason": gpu_reason}


def extract_and_match_planned(plan: dict, database: Path, *, seed, log, stage) -> dict:
    """SIFT extraction and matching of `plan` (from `plan_matching`) into a new `database`: counts and timings."""
    import pycolmap

    names, n, threads, use_gpu = plan["names"], len(plan["names"]), plan["threads"], plan["use_gpu"]
    device = pycolmap.Device.cuda if use_gpu else pycolmap.Device.cpu
    timings: dict[str, float] = {}
    pycolmap.set_random_seed(seed)

    # 1. Features.
    stage("extraction", "start")
    t0 = time.perf_counter()
    sift.extract(database, plan["image_dir"], names, camera_model=plan["camera_model"],
                 single_camera=plan["single_camera"], threads=threads, max_image_size=plan["max_image_size"],
                 max_num_features=plan["max_num_features"], first_octave=plan["first_octave"], use_gpu=use_gpu)
    timings["extraction_s"] = time.perf_counter() - t0
    stage("extraction", "end")
    with contextlib.closing(pycolmap.Database.open(database)) as db:
        n_db, n_kp, n_cams = db.num_images(), db.num_keypoints(), db.num_cameras()
    log(
        f"[sfm] extraction: {n_db}/{n} images, {n_kp} keypoints ({n_kp / max(n_db, 1):.0f}/image), "
        f"{n_cams} camera(s), {timings['extraction_s']:.1f} s"
    )
    if n_db < n:
        log(f"[sfm] WARNING: COLMAP could not read {n - n_db} of the {n} images (see its log above)")

    # 2. Matches.
    stage("matching", "start")
    t0 = time.perf_counter()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    matching.use_gpu = use_gpu
    matcher, vocab_tree = plan["matcher"], plan["vocab_tree"]
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(database, matching_options=matching, device=device)
    elif matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = plan["overlap"]
        pairing.quadratic_overlap = True
        pairing.num_threads = threads
        if vocab_tree:
            pairing.loop_detection = True
            pairing.vocab_tree_path = str(vocab_tree)
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=device)
    else:
        pairing = pycolmap.VocabTreePairingOptions()
        pairing.vocab_tree_path = str(vocab_tree)
        pairing.num_images = min(plan["vocab_tree_num_images"], n)
        pairing.num_threads = threads
        pycolmap.match_vocabtree(database, matching_options=matching, pairing_options=pairing, device=device)
    timings["matching_s"] = time.perf_counter() - t0
    stage("matching", "end")
    with contextlib.closing(pycolmap.Database.open(database)) as db:
        n_pairs = db.num_matched_image_pairs()
        # num_verified_image_pairs() also counts pairs that failed verification
        # (one row per pair tried); count the pairs with inliers instead.
        _, inliers = db.read_two_view_geometry_num_inliers()
        n_verified = sum(1 for k in inliers if k > 0)
    log(
        f"[sfm] matching ({matcher}): {n_pairs} image pairs matched, "
        f"{n_verified} geometrically verified, {timings['matching_s']:.1f} s"
    )
    return {"images": int(n_db), "keypoints": int(n_kp), "matched_pairs": int(n_pairs),
            "verified_pairs": int(n_verified), "timings": timings}


def extract_and_match(image_dir, database, *, camera_model: str = "OPENCV", single_camera: bool = True,
                      matcher: str = "auto", vocab_tree=None, vocab_tree_num_images: int = VOCAB_TREE_NUM_IMAGES,
                      overlap: int = 10, threads: int = -1, max_image_size: int | None = 3200,
                      max_num_features: int = 8192, sift_first_octave: int | str = "auto", gpu="auto",
                      seed: int = 0, log: Callable[[str], object] = print,
                      on_stage: Callable[[str, str], object] | None = None) -> dict:
    """run_sfm's first two stages alone: SIFT features and verified matches of the photos in `image_dir`
    written to a new COLMAP `database` (not atomically), for `map_database` (bench/sfm_scale.py
    maps one database with several mappers). Settings as run_sfm's. Returns names, matcher,
    matcher_reason, sift_first_octave, gpu, gpu_reason, images, keypoints, matched_pairs,
    verified_pairs and timings (extraction_s, matching_s).
    """
    database = Path(database)
    if database.exists():
        raise ValueError(f"{database} exists; extract_and_match writes a new database")
    plan = plan_matching(Path(image_dir), camera_model=camera_model, single_camera=single_camera, matcher=matcher,
                         vocab_tree=vocab_tree, vocab_tree_num_images=vocab_tree_num_images, overlap=overlap,
                         threads=threads, max_image_size=max_image_size, max_num_features=max_num_features,
                         sift_first_octave=sift_first_octave, gpu=gpu, log=log)
    database.parent.mkdir(parents=True, exist_ok=True)
    feats = extract_and_match_planned(plan, database, seed=seed, log=log,
                                      stage=on_stage if on_stage is not None else (lambda name, event: None))
    return {"names": plan["names"], "matcher": plan["matcher"], "matcher_reason": plan["matcher_reason"],
            "sift_first_octave": plan["first_octave"], "gpu": plan["use_gpu"], "gpu_reason": plan["gpu_reason"],
            **feats}

