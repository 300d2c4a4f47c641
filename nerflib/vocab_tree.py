"""Vocabulary trees (COLMAP faiss visual indexes) for matcher="vocab_tree" and sequential loop detection.

`check_vocab_tree(path)` loads a tree file as matching will (ValueError with advice if it does not);
`build_vocab_tree(source, tree_path)` trains one on the SIFT descriptors of a folder of photos or of a
COLMAP database.db (`nerf vocab-tree` on the command line).
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

from nerflib import fileio, sift
from nerflib.images import check_images

# build_vocab_tree: about this many training descriptors per visual word (faiss's
# k-means wants >= 39 points per centroid), as a power of two within these bounds.
DESCRIPTORS_PER_WORD = 50
MIN_VISUAL_WORDS = 16
MAX_VISUAL_WORDS = 65536  # COLMAP vocab_tree_builder's default
# build_vocab_tree trains on at most this many descriptors (float32: 256 MB;
# with the rule above, 8192 words), sampled at random over all photos.
MAX_TREE_DESCRIPTORS = 500_000

VOCAB_TREE_HELP = (
    "Build one with `nerf vocab-tree PHOTOS_OR_DATABASE TREE.bin` (nerflib.vocab_tree.build_vocab_tree) "
    "from the capture itself or a similar set of photos, or download one of COLMAP's published "
    "vocabulary trees (see 'Vocabulary trees' on the Datasets page of the COLMAP documentation; "
    "pycolmap >= 3.12 needs the faiss-format trees, vocab_tree_faiss_flickr100K_words32K.bin for "
    "up to ~1000 images, the 256K-word tree beyond; the older FLANN-format "
    "vocab_tree_flickr100K_*.bin files do not load), store it on a shared disk and set the "
    "`vocab_tree` config key (run_sfm's vocab_tree=) to its path."
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

    The tree is a COLMAP faiss visual index trained like COLMAP's vocab_tree_builder (`train_visual_index`).
    The written file is read back before it is renamed into place.

    Returns tree, source, images, descriptors_total, descriptors_used,
    num_visual_words, bytes and timings (extraction_s, build_s, total_s).
    """
    source, tree_path = Path(source), Path(tree_path)
    _check_build_args(source, num_visual_words, max_num_descriptors, num_iterations, num_rounds, threads,
                      max_image_size, max_num_features, sift_first_octave)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    tree_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=tree_path.parent, prefix=".vocab-tree-"))
    try:
        if source.is_dir():
            database = _extract_photos(source, work / "database.db", threads=threads, max_image_size=max_image_size,
                                       max_num_features=max_num_features, sift_first_octave=sift_first_octave,
                                       gpu=gpu, log=log)
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
        index = train_visual_index(descriptors, words, num_iterations=num_iterations, num_rounds=num_rounds,
                                   threads=threads, seed=seed)
        del descriptors
        timings["build_s"] = time.perf_counter() - t0
        loaded = _write_tree(index, tree_path)
        timings["total_s"] = time.perf_counter() - t_start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = _tree_summary(tree_path, source, n_images, total, min(total, max_num_descriptors), index, loaded, timings)
    log(
        f"[vocab-tree] wrote {tree_path} ({summary['num_visual_words']} words, {summary['bytes'] / 1e6:.1f} MB) "
        f"in {timings['total_s']:.1f} s (k-means and index {timings['build_s']:.1f} s)"
    )
    return summary


def _check_build_args(source: Path, num_visual_words, max_num_descriptors, num_iterations, num_rounds, threads,
                      max_image_size, max_num_features, sift_first_octave) -> None:
    """ValueError for a bad build_vocab_tree setting or a source that is neither a folder nor a SQLite file."""
    if num_visual_words is not None and (not isinstance(num_visual_words, int) or num_visual_words < 2):
        raise ValueError(f"num_visual_words must be an integer >= 2 or None (auto), got {num_visual_words!r}")
    for name, value, low in [("max_num_descriptors", max_num_descriptors, MIN_VISUAL_WORDS * DESCRIPTORS_PER_WORD),
                             ("num_iterations", num_iterations, 1), ("num_rounds", num_rounds, 1)]:
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    sift.check_extraction_args(threads, max_image_size)
    sift.check_sift_args(max_num_features, sift_first_octave)
    if source.is_file():
        with open(source, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"{source} is neither a folder of photos nor a COLMAP database (SQLite) file")
    elif not source.is_dir():
        raise ValueError(f"{source} does not exist (give a folder of photos or a COLMAP database.db)")


def _extract_photos(source: Path, database: Path, *, threads, max_image_size, max_num_features, sift_first_octave,
                    gpu, log) -> Path:
    """SIFT features of the photos in `source` into a new `database` (as run_sfm extracts them); returns it."""
    use_gpu, _ = sift.resolve_gpu(gpu)
    sizes = check_images(source, min_images=1)
    longest, first_octave = sift.choose_first_octave(sizes, max_image_size, sift_first_octave)
    log(
        f"[vocab-tree] extracting SIFT from {len(sizes)} photos in {source} (longest side {longest} px, "
        f"first octave {first_octave}, <= {max_num_features} features, {'GPU' if use_gpu else 'CPU'})"
    )
    sift.extract(database, source, [n for n, _, _ in sizes], camera_model="SIMPLE_RADIAL", single_camera=False,
                 threads=threads, max_image_size=max_image_size, max_num_features=max_num_features,
                 first_octave=first_octave, use_gpu=use_gpu)
    return database


def train_visual_index(descriptors: np.ndarray, words: int, *, num_iterations: int, num_rounds: int, threads: int,
                       seed: int):
    """A pycolmap.VisualIndex (SIFT, 128-D descriptors, 64-bit Hamming embedding) trained on float32 `descriptors`.

    As COLMAP's vocab_tree_builder: the uint8 SIFT descriptors cast to float (COLMAP's own conversion),
    k-means into `words` visual words, a faiss search index over the words, and the Hamming embedding
    learnt from the training descriptors.
    """
    import pycolmap

    pycolmap.set_random_seed(seed)
    options = pycolmap.VisualIndex.BuildOptions()
    options.num_visual_words = words
    options.num_iterations = num_iterations
    options.num_rounds = num_rounds
    options.num_threads = threads
    index = pycolmap.VisualIndex.create(128, 64)
    index.build(options, pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, descriptors))
    return index


def _write_tree(index, tree_path: Path) -> dict:
    """Write `index` to `tree_path` atomically after reading it back (`check_vocab_tree`'s dict)."""
    with fileio.atomic_path(tree_path) as tmp:
        index.write(tmp)
        loaded = check_vocab_tree(tmp)
        if loaded["num_visual_words"] != index.num_visual_words():
            raise RuntimeError(f"vocabulary tree written to {tmp} reads back with {loaded} words")
    return loaded


def _tree_summary(tree_path: Path, source: Path, n_images: int, total: int, used: int, index, loaded: dict,
                  timings: dict) -> dict:
    """build_vocab_tree's result (JSON-serializable)."""
    import pycolmap

    return {
        "tree": str(tree_path),
        "source": str(source),
        "images": n_images,
        "descriptors_total": total,
        "descriptors_used": used,
        "num_visual_words": int(index.num_visual_words()),
        "bytes": loaded["bytes"],
        "pycolmap_version": pycolmap.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
