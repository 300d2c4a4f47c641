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
results as they were; the next run deletes the folder a killed one left
behind (tests/test_kill_resume.py). Images are used in their stored pixel
layout (COLMAP ignores EXIF orientation; see `nerflib.images`).

`build_vocab_tree(source, tree_path)` trains a vocabulary tree (a COLMAP
faiss visual index) on the SIFT descriptors of a folder of photos or of a
COLMAP database.db, for matcher="vocab_tree" (`nerf vocab-tree` on the
command line).

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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nerflib import fileio, pose_checks
from nerflib.images import check_images, is_heif
from nerflib.types import CAMERA_MODELS

MATCHERS = ("auto", "exhaustive", "sequential", "vocab_tree")
MAPPERS = ("incremental", "global", "auto")
# mapper="auto" runs global mapping first and falls back to incremental mapping
# (on the same matches) when the global model's path jumps, a camera's
# intrinsics are implausible, or more than AUTO_MAX_PROBLEM_FRACTION of the
# photos (at least one) are unregistered or weak (pose_checks.diagnose);
# `auto_fallback_reason`. Then the model with fewer such photos is kept.
AUTO_MAX_PROBLEM_FRACTION = 0.01
# matcher="auto" matches all pairs up to this many images (n^2/2 pairs: 500
# images = 125k pairs, about an hour of CPU matching on a few cores).
AUTO_EXHAUSTIVE_MAX_IMAGES = 500
# sift_first_octave="auto" upsamples images up to this size (longest side, px).
# Measured on a 1600x1202 Sceaux photo: first octave -1 takes 8.7 s, 0 takes
# 2.4 s for the same number of features (about 5000).
SIFT_UPSAMPLE_MAX_SIZE = 1024

# matcher="vocab_tree": images retrieved per photo (COLMAP's VocabTreeMatching.num_images).
VOCAB_TREE_NUM_IMAGES = 100
# build_vocab_tree: about this many training descriptors per visual word (faiss's
# k-means wants >= 39 points per centroid), as a power of two within these bounds.
DESCRIPTORS_PER_WORD = 50
MIN_VISUAL_WORDS = 16
MAX_VISUAL_WORDS = 65536  # COLMAP vocab_tree_builder's default
# build_vocab_tree trains on at most this many descriptors (float32: 256 MB;
# with the rule above, 8192 words), sampled at random over all photos.
MAX_TREE_DESCRIPTORS = 500_000

VOCAB_TREE_HELP = (
    "Build one with `nerf vocab-tree PHOTOS_OR_DATABASE TREE.bin` (nerflib.sfm.build_vocab_tree) "
    "from the capture itself or a similar set of photos, or download one of COLMAP's published "
    "vocabulary trees (see 'Vocabulary trees' on the Datasets page of the COLMAP documentation; "
    "pycolmap >= 3.12 needs the faiss-format trees, vocab_tree_faiss_flickr100K_words32K.bin for "
    "up to ~1000 images, the 256K-word tree beyond; the older FLANN-format "
    "vocab_tree_flickr100K_*.bin files do not load), store it on a shared disk and set the "
    "`vocab_tree` config key (run_sfm's vocab_tree=) to its path."
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


def cuda_device_count() -> int:
    """CUDA devices the driver shows this process (0 without a driver or a GPU); no CUDA toolkit needed."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0  # e.g. CUDA_VISIBLE_DEVICES="" or a driver without devices
    return int(count.value)


def resolve_gpu(gpu) -> tuple[bool, str]:
    """(SIFT on the GPU?, why) for run_sfm's `gpu` ("auto", True, False).

    "auto" uses the GPU when pycolmap is a CUDA build (pycolmap.has_cuda: the
    pycolmap-cuda12 wheel; PyPI's pycolmap is CPU-only) and the driver shows a
    device (a CPU node of a cluster running the same environment does not).
    """
    import pycolmap

    if gpu not in ("auto", True, False):
        raise ValueError(f"gpu must be 'auto', True or False, got {gpu!r}")
    if gpu is False:
        return False, "gpu=False"
    if not pycolmap.has_cuda:
        if gpu is True:
            raise ValueError(
                "gpu=True but this pycolmap is a CPU-only build (pycolmap.has_cuda is False; "
                "PyPI's pycolmap wheels are CPU-only); use gpu='auto' or install the CUDA build: "
                "pip uninstall pycolmap && pip install pycolmap-cuda12"
            )
        return False, "pycolmap is a CPU-only build (pip install pycolmap-cuda12 for GPU SIFT)"
    devices = cuda_device_count()
    if devices == 0:
        if gpu is True:
            raise ValueError("gpu=True but no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)")
        return False, "pycolmap has CUDA but no CUDA device is visible"
    return True, f"pycolmap CUDA build, {devices} CUDA device(s)"


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


def _check_sift_args(max_num_features, sift_first_octave) -> None:
    if not isinstance(max_num_features, int) or max_num_features < 64:
        raise ValueError(f"max_num_features must be an integer >= 64, got {max_num_features!r}")
    if sift_first_octave != "auto" and sift_first_octave not in (-1, 0, 1, 2):
        raise ValueError(f"sift_first_octave must be 'auto', -1, 0, 1 or 2, got {sift_first_octave!r}")


def _first_octave(sizes, max_image_size, sift_first_octave) -> tuple[int, int]:
    """(longest side used for extraction, SIFT first octave) for check_images' `sizes`."""
    longest = max(max(w, h) for _, w, h in sizes)
    if max_image_size is not None:
        longest = min(longest, max_image_size)
    if sift_first_octave == "auto":
        return longest, -1 if longest <= SIFT_UPSAMPLE_MAX_SIZE else 0
    return longest, int(sift_first_octave)


def _extract(database: Path, image_dir: Path, names, *, camera_model, single_camera, threads, max_image_size,
             max_num_features, first_octave, use_gpu) -> None:
    """SIFT keypoints and descriptors of `names` into `database` (run_sfm and build_vocab_tree alike)."""
    import pycolmap

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
        image_names=list(names),
        camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cuda if use_gpu else pycolmap.Device.cpu,
    )


def check_vocab_tree(path: str | os.PathLike) -> dict:
    """Load a vocabulary tree file as matching will; ValueError (with advice) if it does not load.

    COLMAP reads the tree inside a matcher thread, where a bad file aborts the
    whole Python process (SIGABRT, measured with pycolmap 4.2.1), so run_sfm
    loads it here first. Returns num_visual_words, feature_type, bytes.
    """
    import pycolmap

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"vocabulary tree file {path} does not exist. {VOCAB_TREE_HELP}")
    try:
        index = pycolmap.VisualIndex.read(path)
    except Exception as e:  # ValueError/RuntimeError from COLMAP's checks and faiss
        raise ValueError(
            f"vocabulary tree {path} does not load in pycolmap {pycolmap.__version__} ({str(e).strip()[:300]}). "
            f"{VOCAB_TREE_HELP}"
        ) from e
    feature_type = index.feature_type()
    if feature_type != pycolmap.FeatureExtractorType.SIFT or index.desc_dim() != 128:
        raise ValueError(
            f"vocabulary tree {path} was built for {feature_type.name} descriptors of dimension "
            f"{index.desc_dim()}; this pipeline extracts SIFT (128). {VOCAB_TREE_HELP}"
        )
    return {"num_visual_words": int(index.num_visual_words()), "feature_type": feature_type.name,
            "bytes": path.stat().st_size}


def auto_num_visual_words(n_descriptors: int) -> int:
    """Visual words for `n_descriptors` training descriptors: a power of two near n / DESCRIPTORS_PER_WORD.

    Between MIN_VISUAL_WORDS and MAX_VISUAL_WORDS; e.g. 60k descriptors (40
    photos at 320x240) -> 1024 words, 500k (the default cap) -> 8192.
    """
    target = max(1, n_descriptors // DESCRIPTORS_PER_WORD)
    return int(min(MAX_VISUAL_WORDS, max(MIN_VISUAL_WORDS, 2 ** int(math.log2(target)))))


def _sample_database_descriptors(database: Path, max_num: int, seed: int, what: str) -> tuple[np.ndarray, int, int]:
    """(float32 [n, 128] SIFT descriptors sampled uniformly over all images, total in database, images).

    `what` names the source in error messages."""
    import pycolmap

    with contextlib.closing(pycolmap.Database.open(database)) as db:
        image_ids = [im.image_id for im in db.read_all_images()]
        counts = np.array([db.num_descriptors_for_image(i) for i in image_ids], dtype=np.int64)
        total = int(counts.sum())
        if total < MIN_VISUAL_WORDS * DESCRIPTORS_PER_WORD:
            raise ValueError(
                f"{what} gives {total} SIFT descriptors in {len(image_ids)} image(s); a vocabulary tree "
                f"needs at least {MIN_VISUAL_WORDS * DESCRIPTORS_PER_WORD} (more, or more textured, photos)"
            )
        n = min(total, max_num)
        pick = np.arange(total) if n == total else np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
        out = np.empty((n, 128), np.float32)
        starts = np.concatenate([[0], np.cumsum(counts)])
        row = 0
        for k, image_id in enumerate(image_ids):
            lo, hi = np.searchsorted(pick, [starts[k], starts[k + 1]])
            if hi == lo:
                continue
            desc = db.read_descriptors(image_id)
            if desc.type != pycolmap.FeatureExtractorType.SIFT or desc.data.shape[1] != 128:
                raise ValueError(
                    f"{what}: image {image_id} has {desc.type.name} descriptors of dimension "
                    f"{desc.data.shape[1]}; build_vocab_tree needs SIFT (128)"
                )
            # COLMAP's own conversion (FeatureDescriptors::ToFloat): the uint8 values cast to float.
            out[row:row + hi - lo] = desc.data[pick[lo:hi] - starts[k]]
            row += hi - lo
        assert row == n, (row, n)
    return out, total, len(image_ids)


def build_vocab_tree(
    source: str | os.PathLike,
    tree_path: str | os.PathLike,
    *,
    num_visual_words: int | None = None,
    max_num_descriptors: int = MAX_TREE_DESCRIPTORS,
    num_iterations: int = 25,
    num_rounds: int = 1,
    threads: int = -1,
    max_image_size: int | None = 3200,
    max_num_features: int = 8192,
    sift_first_octave: int | str = "auto",
    gpu="auto",
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> dict:
    """Train a vocabulary tree for matcher="vocab_tree" and write it to `tree_path` (atomically).

    source       : a folder of photos (SIFT is extracted as run_sfm does, with
                   the same max_image_size / max_num_features / sift_first_octave,
                   into a temp database that is deleted afterwards) or a COLMAP
                   database.db with SIFT features (e.g. run_sfm's out_dir/database.db).
    num_visual_words: None: auto_num_visual_words(descriptors used), about
                   DESCRIPTORS_PER_WORD training descriptors per word.
    max_num_descriptors: train on a random sample of at most this many
                   descriptors (k-means time grows with descriptors x words).
    num_iterations, num_rounds: k-means iterations and restarts (COLMAP's
                   vocab_tree_builder uses 100 x 3; 25 x 1 is 12x cheaper and
                   retrieval only needs rough words).

    The tree is a COLMAP faiss visual index (file version 2, SIFT, 128-D
    descriptors, 64-bit Hamming embedding) trained like COLMAP's
    vocab_tree_builder: uint8 SIFT descriptors cast to float (COLMAP's own
    conversion), k-means into visual words, a faiss search index over the
    words, and the Hamming embedding learnt from the training descriptors.
    The written file is read back before it is renamed into place.

    Returns tree, source, images, descriptors_total, descriptors_used,
    num_visual_words, bytes and timings (extraction_s, build_s, total_s).
    """
    import pycolmap

    if num_visual_words is not None and (not isinstance(num_visual_words, int) or num_visual_words < 2):
        raise ValueError(f"num_visual_words must be an integer >= 2 or None (auto), got {num_visual_words!r}")
    for name, value, low in [("max_num_descriptors", max_num_descriptors, MIN_VISUAL_WORDS * DESCRIPTORS_PER_WORD),
                             ("num_iterations", num_iterations, 1), ("num_rounds", num_rounds, 1)]:
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    _validate("OPENCV", "auto", threads, max_image_size, 0.0, 1)
    _check_sift_args(max_num_features, sift_first_octave)
    source, tree_path = Path(source), Path(tree_path)
    if source.is_file():
        with open(source, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"{source} is neither a folder of photos nor a COLMAP database (SQLite) file")
    elif not source.is_dir():
        raise ValueError(f"{source} does not exist (give a folder of photos or a COLMAP database.db)")
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    tree_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=tree_path.parent, prefix=".vocab-tree-"))
    try:
        if source.is_dir():
            use_gpu, _ = resolve_gpu(gpu)
            sizes = check_images(source, min_images=1)
            longest, first_octave = _first_octave(sizes, max_image_size, sift_first_octave)
            log(
                f"[vocab-tree] extracting SIFT from {len(sizes)} photos in {source} (longest side {longest} px, "
                f"first octave {first_octave}, <= {max_num_features} features, {'GPU' if use_gpu else 'CPU'})"
            )
            database = work / "database.db"
            _extract(database, source, [n for n, _, _ in sizes], camera_model="SIMPLE_RADIAL", single_camera=False,
                     threads=threads, max_image_size=max_image_size, max_num_features=max_num_features,
                     first_octave=first_octave, use_gpu=use_gpu)
            timings["extraction_s"] = time.perf_counter() - t_start
        else:
            database = source

        what = f"the photos in {source}" if source.is_dir() else str(source)
        descriptors, total, n_images = _sample_database_descriptors(database, max_num_descriptors, seed, what)
        words = auto_num_visual_words(len(descriptors)) if num_visual_words is None else num_visual_words
        if words > len(descriptors):
            raise ValueError(f"num_visual_words={words} exceeds the {len(descriptors)} training descriptors")
        log(
            f"[vocab-tree] {len(descriptors)} of {total} SIFT descriptors from {n_images} images -> {words} visual "
            f"words (k-means: {num_iterations} iterations x {num_rounds} round(s), threads {threads})"
        )
        t0 = time.perf_counter()
        pycolmap.set_random_seed(seed)
        options = pycolmap.VisualIndex.BuildOptions()
        options.num_visual_words = words
        options.num_iterations = num_iterations
        options.num_rounds = num_rounds
        options.num_threads = threads
        index = pycolmap.VisualIndex.create(128, 64)
        index.build(options, pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, descriptors))
        del descriptors
        timings["build_s"] = time.perf_counter() - t0

        with fileio.atomic_path(tree_path) as tmp:
            index.write(tmp)
            loaded = check_vocab_tree(tmp)
            if loaded["num_visual_words"] != index.num_visual_words():
                raise RuntimeError(f"vocabulary tree written to {tmp} reads back with {loaded} words")
        timings["total_s"] = time.perf_counter() - t_start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "tree": str(tree_path),
        "source": str(source),
        "images": n_images,
        "descriptors_total": total,
        "descriptors_used": min(total, max_num_descriptors),
        "num_visual_words": int(index.num_visual_words()),
        "bytes": loaded["bytes"],
        "pycolmap_version": pycolmap.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    log(
        f"[vocab-tree] wrote {tree_path} ({summary['num_visual_words']} words, {summary['bytes'] / 1e6:.1f} MB) "
        f"in {timings['total_s']:.1f} s (k-means and index {timings['build_s']:.1f} s)"
    )
    return summary


def _replace_dir(src: Path, dst: Path, trash_parent: Path) -> None:
    """Move folder `src` onto `dst`, replacing an existing `dst` (old one goes to trash_parent)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        os.replace(dst, trash_parent / "old_model")
    os.replace(src, dst)


def _plan(image_dir: Path, *, camera_model, single_camera, matcher, vocab_tree, vocab_tree_num_images, overlap,
          threads, max_image_size, max_num_features, sift_first_octave, gpu, log) -> dict:
    """Check the feature settings and the photos, choose matcher and device, log the plan (nothing written)."""
    import pycolmap

    _validate(camera_model, matcher, threads, max_image_size, 0.0, overlap)
    _check_sift_args(max_num_features, sift_first_octave)
    if not isinstance(vocab_tree_num_images, int) or vocab_tree_num_images < 1:
        raise ValueError(f"vocab_tree_num_images must be a positive integer, got {vocab_tree_num_images!r}")
    use_gpu, gpu_reason = resolve_gpu(gpu)
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
    longest, first_octave = _first_octave(sizes, max_image_size, sift_first_octave)
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


def _features(plan: dict, database: Path, *, seed, log, stage) -> dict:
    """SIFT extraction and matching of `plan` (from _plan) into a new `database`: counts and timings."""
    import pycolmap

    names, n, threads, use_gpu = plan["names"], len(plan["names"]), plan["threads"], plan["use_gpu"]
    device = pycolmap.Device.cuda if use_gpu else pycolmap.Device.cpu
    timings: dict[str, float] = {}
    pycolmap.set_random_seed(seed)

    # 1. Features.
    stage("extraction", "start")
    t0 = time.perf_counter()
    _extract(database, plan["image_dir"], names, camera_model=plan["camera_model"],
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
    plan = _plan(Path(image_dir), camera_model=camera_model, single_camera=single_camera, matcher=matcher,
                 vocab_tree=vocab_tree, vocab_tree_num_images=vocab_tree_num_images, overlap=overlap,
                 threads=threads, max_image_size=max_image_size, max_num_features=max_num_features,
                 sift_first_octave=sift_first_octave, gpu=gpu, log=log)
    database.parent.mkdir(parents=True, exist_ok=True)
    feats = _features(plan, database, seed=seed, log=log,
                      stage=on_stage if on_stage is not None else (lambda name, event: None))
    return {"names": plan["names"], "matcher": plan["matcher"], "matcher_reason": plan["matcher_reason"],
            "sift_first_octave": plan["first_octave"], "gpu": plan["use_gpu"], "gpu_reason": plan["gpu_reason"],
            **feats}


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


def auto_fallback_reason(total: int, registered: int, diag: dict | None) -> str | None:
    """Why mapper="auto" should not keep a global model (None: keep it).

    total: photos; registered: registered in the kept model; diag: its
    pose_checks.diagnose dict (None: no model). Reasons, the first that holds:
    no model; path jumps (suspect frames of an ordered capture); implausible
    intrinsics; more than AUTO_MAX_PROBLEM_FRACTION of the photos unregistered
    or weak. A split view graph is no reason: both mappers see the same matches.
    """
    if diag is None or registered == 0:
        return "found no model"
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
    mapper: str = "incremental",
    summary_path: str | os.PathLike | None = None,
    log: Callable[[str], object] = print,
    on_stage: Callable[[str, str], object] | None = None,
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
                   a CUDA build and a device is visible: `resolve_gpu`), True, False.
    seed         : COLMAP's random seed (runs are repeatable up to thread timing).
    strict       : raise SfMError when the pose diagnostics warn (path jumps,
                   weak images, a split view graph; nerflib.pose_checks), instead
                   of only logging the warning; the model and summary are
                   written first, for inspection.
    mapper       : "incremental" (COLMAP's incremental mapper), "global"
                   (GLOMAP, pycolmap.global_mapping: all poses at once from the
                   view graph, built for large captures), or "auto": global,
                   then incremental on the same matches when `auto_fallback_reason`
                   finds the global model wanting (logged with the reason); the
                   model with fewer problem photos (unregistered + flagged) is
                   kept, global on a tie. On the 40-view demo both register
                   every view (tests/test_sfm.py).
    on_stage     : if given, called as on_stage(stage, "start") and on_stage(stage,
                   "end") right around each timed stage ("extraction", "matching",
                   "mapping"), e.g. to measure its CPU time (bench/pose_bench.py).

    Returns the summary dict (also written to `summary_path`, default
    out_dir/poses/summary.json): total, registered, registered_fraction,
    unregistered (names), models_found, model_sizes, model_kept, matcher,
    matcher_reason, vocab_tree (path, or None when no tree was used),
    camera_model, cameras (model, width, height, params in full-size pixels),
    points, mean_reprojection_error_px, keypoints, matched_pairs (image
    pairs the matcher tried: n(n-1)/2 for exhaustive), verified_pairs, the settings
    used, mapper (the one whose model was kept), mapper_requested, mapper_reason,
    mapper_attempts ([{mapper, registered, models, problems, warnings, seconds}]), diagnostics (pose_checks.diagnose: per-image observations, track
    lengths, view graph, path continuity, warnings), and timings (extraction_s, matching_s, mapping_s, total_s). Raises
    ValueError for bad arguments, unreadable photos or a vocabulary tree that
    does not load, SfMError when too few photos register.
    """
    import pycolmap

    _validate(camera_model, matcher, threads, max_image_size, min_registered_fraction, overlap)
    if mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {', '.join(MAPPERS)}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    plan = _plan(image_dir, camera_model=camera_model, single_camera=single_camera, matcher=matcher,
                 vocab_tree=vocab_tree, vocab_tree_num_images=vocab_tree_num_images, overlap=overlap,
                 threads=threads, max_image_size=max_image_size, max_num_features=max_num_features,
                 sift_first_octave=sift_first_octave, gpu=gpu, log=log)
    names, n = plan["names"], len(plan["names"])
    matcher_used = plan["matcher"]
    summary_path = Path(summary_path) if summary_path is not None else out_dir / "poses" / "summary.json"

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out_dir, log)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=WORK_PREFIX))

    def stage(name: str, event: str) -> None:
        if on_stage is not None:
            on_stage(name, event)

    t_start = time.perf_counter()
    try:
        database = work / "database.db"
        feats = _features(plan, database, seed=seed, log=log, stage=stage)
        timings = dict(feats["timings"])

        # 3. Mapping (incremental, global: GLOMAP, or auto: global, else incremental);
        # keep the model with the most registered images.
        stage("mapping", "start")
        t0 = time.perf_counter()
        ordered = True if matcher_used == "sequential" else None  # None: judged from the matches
        attempts = []
        mapper_reason = "requested"
        for m in ("global", "incremental") if mapper == "auto" else (mapper,):
            attempts.append(_map_attempt(m, database, image_dir, work / f"models_{m}", names, threads=threads,
                                         seed=seed, ordered=ordered, log=log))
            if mapper != "auto" or m == "incremental":
                break
            why = auto_fallback_reason(n, attempts[-1]["registered"], attempts[-1]["diag"])
            if why is None:
                mapper_reason = "auto: global mapping registered the photos and its diagnostics are clean"
                break
            mapper_reason = f"auto: global mapping {why}"
            log(f"[sfm] mapper auto: global mapping {why}; trying incremental mapping on the same matches")
        chosen = min(attempts, key=lambda a: (problem_count(n, a["registered"], a["diag"]), -a["registered"]))
        if len(attempts) > 1:
            tally = ", ".join(f"{a['mapper']} {problem_count(n, a['registered'], a['diag'])}" for a in attempts)
            mapper_reason += f"; incremental tried, {chosen['mapper']} kept (photos unregistered or flagged: {tally})"
            log(f"[sfm] mapper auto: keeping the {chosen['mapper']} model ({mapper_reason})")
        timings["mapping_s"] = time.perf_counter() - t0
        stage("mapping", "end")
        models, counts = chosen["models"], chosen["counts"]
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
            "matcher_reason": plan["matcher_reason"],
            "mapper": chosen["mapper"],
            "mapper_requested": mapper,
            "mapper_reason": mapper_reason,
            "mapper_attempts": [_attempt_record(a, n) for a in attempts],
            "vocab_tree": str(vocab_tree) if plan["uses_tree"] else None,
            "vocab_tree_num_images": min(vocab_tree_num_images, n) if matcher_used == "vocab_tree" else None,
            "camera_model": camera_model,
            "single_camera": bool(single_camera),
            "max_image_size": max_image_size,
            "max_num_features": max_num_features,
            "sift_first_octave": plan["first_octave"],
            "threads": threads,
            "gpu": plan["use_gpu"],
            "gpu_reason": plan["gpu_reason"],
            "keypoints": feats["keypoints"],
            "matched_pairs": feats["matched_pairs"],
            "verified_pairs": feats["verified_pairs"],
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
                f"no initial image pair was found ({feats['verified_pairs']} verified pairs). {advice}"
            )
        kept, rec, diag = chosen["kept"], chosen["rec"], chosen["diag"]
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
        summary["diagnostics"] = diag
        log(f"[sfm] diagnostics: {pose_checks.summary_line(diag)}")
        if diag["warnings"]:
            log(f"[sfm] WARNING: {pose_checks.warning_message(diag)}")
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
        if strict and diag["warnings"]:
            raise SfMError(f"sfm.strict is set and the pose diagnostics warn (model and summary written to {out_dir} "
                           f"for inspection): {pose_checks.warning_message(diag)}")
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
