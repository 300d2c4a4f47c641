"""nerflib.sfm: argument errors, failure handling, and accuracy on real and synthetic scenes.

The end-to-end runs print their figures (run pytest with -s to see them).
Each SfM run uses 2 threads and CI-sized settings (features per image capped,
photos capped in size) so it takes well under 90 s on 2 idle cores.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from nerflib import mapping, matching, rigid, scene_io, sfm, sift
from nerflib import vocab_tree as vocab_tree_lib

THREADS = 2


def _noise_images(folder, n, *, size=(96, 128), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, size=(*size, 3)).astype(np.uint8)
        assert cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    return folder


def _pose_errors(sparse_dir, image_dir, gt: scene_io.Scene):
    """Errors of the SfM poses against `gt` (matched by name), after a Umeyama similarity."""
    est = scene_io.read_colmap(sparse_dir, image_dir=image_dir, check_images=False)
    est_by_name = dict(zip(est.names, est.c2w))
    common = [n for n in gt.names if n in est_by_name]
    gt_c2w = np.array([gt.c2w[gt.names.index(n)] for n in common])
    err = rigid.pose_errors(np.array([est_by_name[n] for n in common]), gt_c2w)
    return err, gt_c2w, est


# ------------------------------------------------------------ argument errors (fast)


def test_unknown_camera_model(tmp_path):
    with pytest.raises(ValueError, match="unknown camera model 'KANNALA'") as e:
        sfm.run_sfm(tmp_path, tmp_path / "out", camera_model="KANNALA")
    for model in ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV"]:
        assert model in str(e.value)


def test_unknown_matcher_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown matcher 'spatial'"):
        sfm.run_sfm(tmp_path, tmp_path / "out", matcher="spatial")
    with pytest.raises(ValueError, match="threads"):
        sfm.run_sfm(tmp_path, tmp_path / "out", threads=0)
    with pytest.raises(ValueError, match="min_registered_fraction"):
        sfm.run_sfm(tmp_path, tmp_path / "out", min_registered_fraction=1.5)
    with pytest.raises(ValueError, match="sift_first_octave"):
        sfm.run_sfm(tmp_path, tmp_path / "out", sift_first_octave=-3)


def test_vocab_tree_matcher_needs_a_tree(tmp_path):
    _noise_images(tmp_path / "images", 3)
    with pytest.raises(ValueError, match="needs a vocabulary tree") as e:
        sfm.run_sfm(tmp_path / "images", tmp_path / "out", matcher="vocab_tree")
    assert "vocab_tree" in str(e.value) and "faiss" in str(e.value) and "http" not in str(e.value)
    assert "nerf vocab-tree" in str(e.value)  # says how to build one
    with pytest.raises(ValueError, match="does not exist"):
        sfm.run_sfm(tmp_path / "images", tmp_path / "out", matcher="vocab_tree", vocab_tree=tmp_path / "tree.bin")


def test_bad_vocab_tree_file_is_a_value_error(tmp_path):
    """COLMAP reads the tree in a matcher thread, where a bad file aborts Python; run_sfm loads it first."""
    images = _noise_images(tmp_path / "images", 3)
    legacy = tmp_path / "flann_tree.bin"  # a FLANN-era tree starts with its number of visual words
    legacy.write_bytes(np.array([32768, 128, 64, 0], np.int32).tobytes() + bytes(64))
    with pytest.raises(ValueError, match="does not load") as e:
        vocab_tree_lib.check_vocab_tree(legacy)
    assert "flann" in str(e.value).lower() and "nerf vocab-tree" in str(e.value)
    with pytest.raises(ValueError, match="does not load"):
        sfm.run_sfm(images, tmp_path / "out", matcher="vocab_tree", vocab_tree=legacy)
    assert not (tmp_path / "out").exists()  # refused before any work
    with pytest.raises(ValueError, match="vocab_tree_num_images"):
        sfm.run_sfm(images, tmp_path / "out", matcher="vocab_tree", vocab_tree=legacy, vocab_tree_num_images=0)


def test_auto_num_visual_words():
    assert vocab_tree_lib.auto_num_visual_words(60_000) == 1024  # 40 photos at 320x240
    assert vocab_tree_lib.auto_num_visual_words(vocab_tree_lib.MAX_TREE_DESCRIPTORS) == 8192
    assert vocab_tree_lib.auto_num_visual_words(10) == vocab_tree_lib.MIN_VISUAL_WORDS
    assert vocab_tree_lib.auto_num_visual_words(10**9) == vocab_tree_lib.MAX_VISUAL_WORDS
    for n in [800, 5000, 123_456, 2_000_000]:
        words = vocab_tree_lib.auto_num_visual_words(n)
        assert words & (words - 1) == 0 and vocab_tree_lib.DESCRIPTORS_PER_WORD <= n / words < 2 * vocab_tree_lib.DESCRIPTORS_PER_WORD


def test_build_vocab_tree_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        vocab_tree_lib.build_vocab_tree(tmp_path / "missing", tmp_path / "tree.bin")
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(ValueError, match="neither a folder of photos nor a COLMAP database"):
        vocab_tree_lib.build_vocab_tree(tmp_path / "notes.txt", tmp_path / "tree.bin")
    with pytest.raises(ValueError, match="num_visual_words"):
        vocab_tree_lib.build_vocab_tree(tmp_path, tmp_path / "tree.bin", num_visual_words=1)
    with pytest.raises(ValueError, match="num_iterations"):
        vocab_tree_lib.build_vocab_tree(tmp_path, tmp_path / "tree.bin", num_iterations=0)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no tree, no temp folder


def test_gpu_true_without_cuda(tmp_path):
    import pycolmap

    if pycolmap.has_cuda:
        pytest.skip("this pycolmap has CUDA")
    with pytest.raises(ValueError, match="CPU-only"):
        sfm.run_sfm(tmp_path, tmp_path / "out", gpu=True)


class _Stop(Exception):
    """Raised by a stand-in pycolmap call once it has recorded its arguments."""


def test_threads_reach_extraction_matching_and_mapping(tmp_path, monkeypatch):
    """`threads` (the job's cores) reaches pycolmap's extraction, matching, pairing and mapping options."""
    import pycolmap

    images = _noise_images(tmp_path / "images", 4, seed=2)
    seen = {}
    real_extract = pycolmap.extract_features

    def extract(*args, extraction_options, device, **kwargs):
        seen["extraction"] = (extraction_options.num_threads, extraction_options.use_gpu, device)
        return real_extract(*args, extraction_options=extraction_options, device=device, **kwargs)

    def match_sequential(database, *, matching_options, pairing_options, device):
        seen["matching"] = (matching_options.num_threads, matching_options.use_gpu, device)
        seen["pairing"] = pairing_options.num_threads
        raise _Stop

    monkeypatch.setattr(pycolmap, "extract_features", extract)
    monkeypatch.setattr(pycolmap, "match_sequential", match_sequential)
    with pytest.raises(_Stop):
        sfm.run_sfm(images, tmp_path / "out", matcher="sequential", threads=3, max_num_features=256, gpu=False,
                    log=lambda msg: None)
    assert seen == {"extraction": (3, False, pycolmap.Device.cpu), "matching": (3, False, pycolmap.Device.cpu),
                    "pairing": 3}

    def map_database(database, image_dir, models_dir, *, mapper, threads, seed):
        seen["mapping"] = (mapper, threads)
        raise _Stop

    monkeypatch.setattr(pycolmap, "match_sequential", lambda *a, **k: None)
    monkeypatch.setattr(mapping, "map_database", map_database)
    with pytest.raises(_Stop):
        sfm.run_sfm(images, tmp_path / "out", matcher="sequential", threads=5, max_num_features=256, gpu=False,
                    mapper="global", log=lambda msg: None)
    assert seen["mapping"] == ("global", 5) and seen["extraction"][0] == 5


def test_gpu_sift_is_used_when_pycolmap_has_cuda_and_a_device(tmp_path, monkeypatch):
    """gpu='auto' asks pycolmap for GPU extraction and matching on a CUDA build with a visible device, and says so."""
    import pycolmap

    images = _noise_images(tmp_path / "images", 3, seed=3)
    seen, logs = {}, []

    def extract(*args, extraction_options, device, **kwargs):
        seen["extraction"] = (extraction_options.use_gpu, device)
        raise _Stop

    monkeypatch.setattr(pycolmap, "extract_features", extract)
    monkeypatch.setattr(pycolmap, "has_cuda", True)
    monkeypatch.setattr(sift, "cuda_device_count", lambda: 2)
    with pytest.raises(_Stop):
        sfm.run_sfm(images, tmp_path / "out", max_num_features=256, log=logs.append)
    assert seen["extraction"] == (True, pycolmap.Device.cuda)
    assert any("SIFT on GPU (pycolmap CUDA build, 2 CUDA device(s)" in line for line in logs)
    # A CUDA build on a node without a visible GPU: CPU with 'auto', an error with gpu=True.
    monkeypatch.setattr(sift, "cuda_device_count", lambda: 0)
    logs.clear()
    with pytest.raises(_Stop):
        sfm.run_sfm(images, tmp_path / "out", max_num_features=256, log=logs.append)
    assert seen["extraction"] == (False, pycolmap.Device.cpu)
    assert any("SIFT on CPU (pycolmap has CUDA but no CUDA device is visible" in line for line in logs)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        sfm.run_sfm(images, tmp_path / "out", gpu=True)
    monkeypatch.setattr(pycolmap, "has_cuda", False)
    assert sift.resolve_gpu("auto") == (False, "pycolmap is a CPU-only build (pip install pycolmap-cuda12 for GPU SIFT)")


def test_auto_fallback_reason():
    clean = {"continuity": {"jumps": [], "suspect": []}, "cameras": [{"problem": None}], "weak": [], "flagged": []}
    assert sfm.auto_fallback_reason(100, 100, clean) is None
    assert sfm.auto_fallback_reason(100, 99, clean) is None  # 1 % tolerated
    assert "2 of 100 photos unregistered" in sfm.auto_fallback_reason(100, 98, clean)
    assert "unregistered" in sfm.auto_fallback_reason(40, 39, clean)  # below 100 photos nothing is tolerated
    assert sfm.auto_fallback_reason(40, 0, None) == "found no model"
    jumped = {**clean, "continuity": {"jumps": [{}], "suspect": ["007.jpg", "008.jpg"]}, "flagged": ["007.jpg"]}
    assert "1 jump(s), 2 frame(s) suspect (007.jpg, 008.jpg)" in sfm.auto_fallback_reason(40, 40, jumped)
    turned = {**jumped, "pairs": {"contradicted": ["004.jpg"]}, "flagged": ["004.jpg", "007.jpg"]}
    assert "1 photo(s) poses that their own verified pairs contradict (004.jpg)" in sfm.auto_fallback_reason(
        40, 40, turned)  # named before the path's suspects: it names the photo itself
    bad_camera = {**clean, "cameras": [{"problem": "fx / fy = 1.4"}]}
    assert "implausible intrinsics (fx / fy = 1.4)" in sfm.auto_fallback_reason(40, 40, bad_camera)
    weak = {**clean, "weak": ["a", "b"], "flagged": ["a", "b"]}
    assert "2 weak" in sfm.auto_fallback_reason(100, 100, weak)
    assert sfm.problem_count(100, 97, weak) == 5 and sfm.problem_count(100, 0, None) == 100


def test_mappers_are_declared_once():
    """sfm.MAPPERS is the one declaration: the config schema, config.yaml, run_sfm, steps.poses and the CLI follow it."""
    import argparse
    import inspect
    from pathlib import Path

    import yaml

    from nerflib import cli, steps

    root = Path(__file__).resolve().parents[1]
    entry = yaml.safe_load((root / "config" / "schemas" / "config.schema.yaml").read_text())["properties"]["sfm"][
        "properties"]["mapper"]
    assert tuple(entry["enum"]) == sfm.MAPPERS and "auto" in sfm.MAPPERS
    default = inspect.signature(sfm.run_sfm).parameters["mapper"].default
    assert entry["default"] == default == inspect.signature(steps.poses).parameters["mapper"].default
    assert yaml.safe_load((root / "config" / "config.yaml").read_text())["sfm"]["mapper"] == default
    args = cli.build_parser().parse_args(["poses", "photos", "out", "--mapper", "incremental"])
    assert args.mapper == "incremental" and cli.build_parser().parse_args(["poses", "photos", "out"]).mapper == default
    # auto's photo threshold, declared once in sfm, is what the schema and the CLI's help say
    threshold = f"{sfm.AUTO_GLOBAL_MIN_IMAGES} photos"
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    mapper_help = next(a.help for a in sub.choices["poses"]._actions if a.dest == "mapper")
    assert threshold in entry["description"] and threshold in mapper_help


def test_auto_mappers():
    """mapper='auto': incremental only below AUTO_GLOBAL_MIN_IMAGES photos, global then incremental from there."""
    k = sfm.AUTO_GLOBAL_MIN_IMAGES
    assert sfm.auto_mappers(k - 1) == (("incremental",), f"auto: {k - 1} photos < {k}, where incremental mapping "
                                                         "is the faster")
    assert sfm.auto_mappers(k)[0] == sfm.auto_mappers(5000)[0] == ("global", "incremental")


def test_gpu_setting_reaches_run_sfm(tmp_path, monkeypatch):
    """sfm.gpu (schema, config.yaml) and `nerf poses --gpu` reach run_sfm's gpu; defaults agree."""
    import inspect
    from pathlib import Path

    import yaml

    from nerflib import cli

    root = Path(__file__).resolve().parents[1]
    entry = yaml.safe_load((root / "config" / "schemas" / "config.schema.yaml").read_text())["properties"]["sfm"][
        "properties"]["gpu"]
    default = inspect.signature(sfm.run_sfm).parameters["gpu"].default
    assert entry["enum"] == ["auto", True, False] and entry["default"] == default == "auto"
    assert yaml.safe_load((root / "config" / "config.yaml").read_text())["sfm"]["gpu"] == default
    seen = []

    def run_sfm(*args, gpu, **kwargs):
        seen.append(gpu)
        raise _Stop

    monkeypatch.setattr(sfm, "run_sfm", run_sfm)
    for flag, expected in ((), "auto"), (("--gpu", "no"), False), (("--gpu", "yes"), True):
        with pytest.raises(_Stop):
            cli.main(["poses", str(tmp_path), str(tmp_path / "out"), *flag])
        assert seen[-1] == expected


def test_too_few_images(tmp_path):
    _noise_images(tmp_path / "images", 2)
    with pytest.raises(ValueError, match="holds 2 image"):
        sfm.run_sfm(tmp_path / "images", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_choose_matcher():
    assert matching.choose_matcher("auto", 500, None)[0] == "exhaustive"
    assert matching.choose_matcher("auto", 501, "tree.bin")[0] == "vocab_tree"
    name, why = matching.choose_matcher("auto", 501, None)
    assert name == "sequential" and "no vocabulary tree" in why
    assert matching.choose_matcher("sequential", 10, None) == ("sequential", "requested")


def test_failed_sfm_leaves_earlier_results(tmp_path):
    """Unrelated noise images give no model: SfMError, and out_dir/sparse/0 is untouched."""
    images = _noise_images(tmp_path / "images", 4)
    old = tmp_path / "out" / "sparse" / "0"
    old.mkdir(parents=True)
    (old / "cameras.bin").write_bytes(b"earlier result")
    logs = []
    with pytest.raises(sfm.SfMError, match=r"registered 0 of 4 images") as e:
        sfm.run_sfm(images, tmp_path / "out", threads=THREADS, max_num_features=512, log=logs.append)
    assert str(images) in str(e.value) and "overlap" in str(e.value) and "matcher" in str(e.value)
    assert (old / "cameras.bin").read_bytes() == b"earlier result"
    assert sorted(os.listdir(tmp_path / "out")) == ["sparse"]  # no temp folder, database or summary
    assert any("extraction" in line for line in logs) and any("matching" in line for line in logs)


def test_sequential_matcher_runs(tmp_path):
    """The sequential pairing path (options, call) runs; noise still gives no model."""
    images = _noise_images(tmp_path / "images", 4, seed=1)
    logs, events = [], []
    with pytest.raises(sfm.SfMError, match="registered 0 of 4"):
        sfm.run_sfm(images, tmp_path / "out", matcher="sequential", overlap=2, threads=THREADS,
                    max_num_features=256, log=logs.append, on_stage=lambda *e: events.append(e))
    assert any("matching (sequential)" in line for line in logs)
    # The on_stage hook brackets each timed stage, in order.
    assert events == [(s, e) for s in ("extraction", "matching", "mapping") for e in ("start", "end")]


# ------------------------------------------------------------ synthetic demo scene (ground truth)


@pytest.fixture(scope="module")
def synthetic_scene(tmp_path_factory):
    synthetic = pytest.importorskip("nerflib.synthetic")
    root = tmp_path_factory.mktemp("synthetic")
    # 40 orbit views (9 degrees apart), one ray per pixel: about 15 s to render.
    synthetic.generate(root, n_views=40, n_heldout=1, n_queries=1, width=320, height=240, supersample=1)
    return root


@pytest.mark.slow
def test_sfm_on_synthetic_scene(synthetic_scene, tmp_path):
    out = tmp_path / "scene"
    logs = []
    summary = sfm.run_sfm(
        synthetic_scene / "images", out, threads=THREADS, max_num_features=2048, log=logs.append
    )
    print("\n".join(logs))
    gt = scene_io.read_scene_json(synthetic_scene / "gt" / "scene.json")
    radius = json.loads((synthetic_scene / "gt" / "meta.json").read_text())["radius"]

    # Files where COLMAP users expect them; the summary on disk equals the return value.
    for name in ["cameras.bin", "images.bin", "points3D.bin"]:
        assert (out / "sparse" / "0" / name).is_file()
    assert (out / "database.db").is_file()
    assert json.loads((out / "poses" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert not [p for p in os.listdir(out) if p.startswith(".sfm-")]
    assert summary["matcher"] == "exhaustive" and "auto" in summary["matcher_reason"]
    assert summary["mapper"] == "incremental" and summary["mapper_reason"].startswith("auto: 40 photos < ")
    assert summary["matched_pairs"] == 40 * 39 // 2 and summary["vocab_tree"] is None  # every pair
    assert set(summary["timings"]) == {"extraction_s", "matching_s", "mapping_s", "total_s"}

    err, _, est = _pose_errors(out / "sparse" / "0", synthetic_scene / "images", gt)
    assert sorted(est.names) == sorted(gt.names)  # names relative to the image folder
    rot_med = float(np.median(err["rotation_deg"]))
    pos_med = float(np.median(err["position"])) / radius
    f_gt, f_est = gt.cameras[0].param("fx"), summary["cameras"][0]["params"][0]
    print(
        f"synthetic: registered {summary['registered']}/{summary['total']}, median rotation error "
        f"{rot_med:.3f} deg (max {err['rotation_deg'].max():.3f}), median position error "
        f"{100 * pos_med:.3f}% of the orbit radius, reprojection {summary['mean_reprojection_error_px']:.3f} px, "
        f"focal {f_est:.1f} vs {f_gt:.1f} px, timings {summary['timings']}"
    )
    assert summary["registered"] == summary["total"] == len(gt.names)
    assert summary["unregistered"] == []
    assert rot_med < 0.5
    assert pos_med < 0.01
    # A clean orbit (names in capture order, detected from the matches): the pose checks stay quiet.
    diag = summary["diagnostics"]
    print(f"diagnostics: {diag['warnings']}, {diag['cameras']}")
    assert diag["ordered"] and diag["warnings"] == [] and diag["flagged"] == []
    assert diag["continuity"]["jumps"] == [] and len(diag["view_graph"]["components"]) == 1


# ------------------------------------------------------------ vocabulary tree (image retrieval)


def _orbit_steps(database, n_views):
    """Orbit steps between the two photos of each pair the matcher tried (names are orbit indices: 000.jpg ...).

    Read with sqlite: the matches table has one row per pair tried, empty or not
    (pycolmap's read_all_matches leaves out the empty ones).
    """
    import contextlib
    import sqlite3

    import pycolmap

    with contextlib.closing(sqlite3.connect(database)) as db:
        index = {image_id: int(name.split(".")[0]) for image_id, name in db.execute("SELECT image_id, name FROM images")}
        pair_ids = [row[0] for row in db.execute("SELECT pair_id FROM matches")]
    steps = []
    for pair_id in pair_ids:
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        d = abs(index[a] - index[b]) % n_views
        steps.append(min(d, n_views - d))
    return np.array(steps)


@pytest.fixture(scope="module")
def vocab_tree(synthetic_scene, tmp_path_factory):
    """A tree trained on the demo scene's own photos (CI-sized: ~17k descriptors, 256 words, ~5 s)."""
    tree = tmp_path_factory.mktemp("tree") / "vocab_tree.bin"
    summary = vocab_tree_lib.build_vocab_tree(
        synthetic_scene / "images", tree, threads=THREADS, max_num_features=1024, sift_first_octave=0,
        max_num_descriptors=20_000, log=print,
    )
    print(f"vocab tree: {summary}")
    assert summary["images"] == 40 and summary["num_visual_words"] == vocab_tree_lib.auto_num_visual_words(
        summary["descriptors_used"])
    assert sorted(os.listdir(tree.parent)) == ["vocab_tree.bin"]  # the temp database is gone
    return tree


@pytest.mark.slow
def test_sfm_with_vocab_tree_matcher(synthetic_scene, vocab_tree, tmp_path):
    """Retrieval with a tree built from the scene's own photos: every view, exhaustive-grade poses, fewer pairs."""
    out = tmp_path / "scene"
    n_retrieved = 8
    summary = sfm.run_sfm(
        synthetic_scene / "images", out, matcher="vocab_tree", vocab_tree=vocab_tree,
        vocab_tree_num_images=n_retrieved, threads=THREADS, max_num_features=512, log=print,
    )
    gt = scene_io.read_scene_json(synthetic_scene / "gt" / "scene.json")
    radius = json.loads((synthetic_scene / "gt" / "meta.json").read_text())["radius"]
    n = len(gt.names)
    err, _, _ = _pose_errors(out / "sparse" / "0", synthetic_scene / "images", gt)
    rot_med = float(np.median(err["rotation_deg"]))
    pos_med = float(np.median(err["position"])) / radius
    steps = _orbit_steps(out / "database.db", n)
    print(
        f"vocab_tree: registered {summary['registered']}/{n}, {summary['matched_pairs']} pairs matched "
        f"(exhaustive: {n * (n - 1) // 2}), orbit steps apart {np.bincount(steps).tolist()}, median rotation "
        f"error {rot_med:.3f} deg, median position error {100 * pos_med:.3f}% of the orbit radius, "
        f"timings {summary['timings']}"
    )
    assert summary["matcher"] == "vocab_tree" and summary["matcher_reason"] == "requested"
    assert summary["vocab_tree"] == str(vocab_tree) and summary["vocab_tree_num_images"] == n_retrieved
    assert summary["registered"] == summary["total"] == n and summary["unregistered"] == []
    assert rot_med < 0.5  # the bounds of test_sfm_on_synthetic_scene (exhaustive)
    assert pos_med < 0.01
    # Retrieval was used: at most n_retrieved partners per photo instead of all n - 1 ...
    assert len(steps) == summary["matched_pairs"] <= n * n_retrieved < n * (n - 1) // 2
    # ... chosen by what the photos show: every photo is paired with its orbit neighbour (9 degrees away),
    # and pairs up to 3 steps apart are over twice as common as among all pairs (6 of 39). (With so small
    # a tree some far pairs come too; measured 41-45% within 3 steps, 39-40 of the 40 neighbour pairs.)
    assert np.sum(steps == 1) >= 0.9 * n
    assert np.mean(steps <= 3) > 2 * 6 / 39

    # The same tree from that run's database (no second extraction) loads too; a failed build keeps it.
    tree2 = tmp_path / "trees" / "from_db.bin"
    built = vocab_tree_lib.build_vocab_tree(out / "database.db", tree2, threads=THREADS, max_num_descriptors=10_000, log=print)
    assert built["descriptors_total"] == summary["keypoints"] and built["descriptors_used"] == 10_000
    assert vocab_tree_lib.check_vocab_tree(tree2)["num_visual_words"] == built["num_visual_words"] == 128
    before = tree2.read_bytes()
    with pytest.raises(ValueError, match="exceeds"):
        vocab_tree_lib.build_vocab_tree(out / "database.db", tree2, num_visual_words=20_000, max_num_descriptors=10_000)
    assert tree2.read_bytes() == before and sorted(os.listdir(tree2.parent)) == ["from_db.bin"]


@pytest.mark.slow
def test_auto_picks_vocab_tree_beyond_threshold(synthetic_scene, vocab_tree, tmp_path, monkeypatch):
    """matcher="auto" with more photos than AUTO_EXHAUSTIVE_MAX_IMAGES and a tree: vocab_tree, said in the summary."""
    images = tmp_path / "images"
    images.mkdir()
    n = 12  # an arc of consecutive orbit views
    for name in sorted(os.listdir(synthetic_scene / "images"))[:n]:
        (images / name).symlink_to(synthetic_scene / "images" / name)
    monkeypatch.setattr(matching, "AUTO_EXHAUSTIVE_MAX_IMAGES", 10)
    logs = []
    summary = sfm.run_sfm(images, tmp_path / "out", matcher="auto", vocab_tree=vocab_tree, vocab_tree_num_images=5,
                          threads=THREADS, max_num_features=1024, log=logs.append)
    print("\n".join(logs))
    on_disk = json.loads((tmp_path / "out" / "poses" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["matcher"] == "vocab_tree" and on_disk["vocab_tree"] == str(vocab_tree)
    assert on_disk["matcher_reason"] == f"auto: {n} images > 10 and a vocabulary tree is configured"
    assert on_disk["registered"] == n
    assert on_disk["matched_pairs"] <= n * 5 < n * (n - 1) // 2
    assert any("matching (vocab_tree)" in line for line in logs)
    assert not any("WARNING" in line for line in logs)


# ------------------------------------------------------------ real photos


@pytest.mark.slow
@pytest.mark.data
def test_sfm_on_sceaux_castle(dataset, tmp_path):
    """11 photos, 2832x2128, one camera; openMVG gives focal 2905.88 px (from the sensor database)."""
    images = dataset("sceaux_castle") / "images"
    summary = sfm.run_sfm(
        images, tmp_path / "sceaux", max_image_size=1600, max_num_features=4096, threads=THREADS, log=print
    )
    cam = summary["cameras"][0]
    fx, fy = cam["params"][:2]
    known = 2905.88
    print(
        f"sceaux: registered {summary['registered']}/{summary['total']}, points {summary['points']}, "
        f"reprojection {summary['mean_reprojection_error_px']:.3f} px, focal fx {fx:.1f} fy {fy:.1f} vs known "
        f"{known} ({100 * (0.5 * (fx + fy) / known - 1):+.1f}%), timings {summary['timings']}"
    )
    assert (cam["width"], cam["height"]) == (2832, 2128)  # intrinsics in full-size pixels
    assert summary["registered"] >= 0.9 * summary["total"]
    assert abs(0.5 * (fx + fy) / known - 1) < 0.10


@pytest.mark.slow
@pytest.mark.data
def test_sfm_on_real_cup_against_shipped_model(dataset, tmp_path):
    """77 hand-held photos; compare with the COLMAP model shipped with the data.

    images_4/ (200x150) gives only ~100 SIFT features per photo on this
    texture-poor cup and registers 2/77, so we use images/ capped at 400 px.
    The shipped model has one focal length per photo (529-632 px), which
    each shipped pose partly absorbs; even at the full 800x600 our model
    differs from it by 1.7 deg median (measured), so the thresholds below
    are about twice what we measure at 400 px, not the accuracy of SfM.
    """
    root = dataset("real_cup_colmap")
    summary = sfm.run_sfm(
        root / "images", tmp_path / "cup", max_image_size=400, max_num_features=2048, threads=THREADS, log=print
    )
    ref = scene_io.read_colmap(root / "sparse" / "0", image_dir=root / "images", check_images=False)
    err, gt_c2w, _ = _pose_errors(tmp_path / "cup" / "sparse" / "0", root / "images", ref)
    centres = gt_c2w[:, :, 3]
    spread = float(np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean()))  # RMS distance to the centroid
    rot_med = float(np.median(err["rotation_deg"]))
    pos_med = float(np.median(err["position"])) / spread
    print(
        f"cup: registered {summary['registered']}/{summary['total']}, median rotation error {rot_med:.2f} deg "
        f"(p90 {np.percentile(err['rotation_deg'], 90):.2f}), median position error {100 * pos_med:.2f}% of the "
        f"camera spread (p90 {100 * np.percentile(err['position'], 90) / spread:.2f}%), "
        f"reprojection {summary['mean_reprojection_error_px']:.3f} px, timings {summary['timings']}"
    )
    assert summary["registered"] >= 0.9 * summary["total"]
    assert rot_med < 3.5
    assert pos_med < 0.07


@pytest.mark.slow
def test_global_mapper_on_synthetic_scene(synthetic_scene, tmp_path):
    """mapper='global' (GLOMAP, pycolmap.global_mapping) poses the demo orbit as the incremental mapper does."""
    # One thread: an exactly repeatable run. With two, extraction numbers the photos as its threads finish
    # and matching threads draw their own RANSAC samples, so the database differs between runs (GLOMAP maps
    # one database the same with 1 or 2 threads). One earlier 2-thread run returned 2.5 deg median / 112 deg
    # max here; 24 later ones (issue #22) were all within 0.06 deg, and the pair check names such a view.
    summary = sfm.run_sfm(synthetic_scene / "images", tmp_path / "scene", threads=1, max_num_features=2048,
                          mapper="global", log=lambda msg: None)
    gt = scene_io.read_scene_json(synthetic_scene / "gt" / "scene.json")
    radius = json.loads((synthetic_scene / "gt" / "meta.json").read_text())["radius"]
    err, _, _ = _pose_errors(tmp_path / "scene" / "sparse" / "0", synthetic_scene / "images", gt)
    rot_med = float(np.median(err["rotation_deg"]))
    pos_med = float(np.median(err["position"])) / radius
    print(f"global mapper: registered {summary['registered']}/{summary['total']}, median rotation error "
          f"{rot_med:.3f} deg (max {err['rotation_deg'].max():.3f}), median position {100 * pos_med:.3f}% "
          f"of the radius, mapping {summary['timings']['mapping_s']:.1f} s")
    assert summary["mapper"] == "global" and summary["registered"] == summary["total"] == len(gt.names)
    assert rot_med < 0.5 and pos_med < 0.01
    with pytest.raises(ValueError, match="unknown mapper 'glomap'; choose one of incremental, global, auto"):
        sfm.run_sfm(synthetic_scene / "images", tmp_path / "x", mapper="glomap")


def _arc(synthetic_scene, folder, n=12):
    """The first n views of the demo orbit (9 degrees apart), linked into `folder`: a small ordered capture."""
    folder.mkdir()
    for name in sorted(os.listdir(synthetic_scene / "images"))[:n]:
        (folder / name).symlink_to(synthetic_scene / "images" / name)
    return folder


def _turn_view(rec, name, deg):
    """Pan the camera of photo `name` in pycolmap.Reconstruction `rec` by `deg` degrees about its own vertical
    axis, keeping its centre: a pose its matches contradict, the kind of error a mapper can make silently."""
    import pycolmap

    image = next(rec.images[i] for i in rec.reg_image_ids() if rec.images[i].name == name)
    pose = image.cam_from_world()
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]) @ pose.rotation.matrix()
    centre = -pose.rotation.matrix().T @ np.asarray(pose.translation)
    rec.frames[image.frame_id].rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(rot), -rot @ centre)


@pytest.fixture(scope="module")
def arc_auto(synthetic_scene, tmp_path_factory):
    """mapper='auto' on a 12-view arc of the demo orbit (one thread; auto's photo threshold lowered to 10, so
    global mapping runs first): the run's folder, summary and log."""
    root = tmp_path_factory.mktemp("arc_auto")
    logs = []
    images = _arc(synthetic_scene, root / "images")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mapping, "AUTO_GLOBAL_MIN_IMAGES", 10)  # global first, as for a large capture
        summary = sfm.run_sfm(images, root / "scene", threads=1, max_num_features=1024, mapper="auto",
                              log=logs.append)
    return {"images": images, "out": root / "scene", "summary": summary, "logs": logs}


def test_auto_mapper_keeps_a_clean_global_model(arc_auto):
    """mapper='auto' on an arc of the demo orbit: global mapping registers every view, clean diagnostics, no fallback."""
    summary, logs = arc_auto["summary"], arc_auto["logs"]
    assert summary["mapper"] == "global" and summary["mapper_requested"] == "auto"
    assert summary["mapper_reason"].startswith("auto: global mapping registered the photos")
    assert [a["mapper"] for a in summary["mapper_attempts"]] == ["global"]
    assert summary["mapper_attempts"][0]["problems"] == 0 and summary["registered"] == summary["total"] == 12
    assert not any("trying incremental" in line for line in logs)
    pairs = summary["diagnostics"]["pairs"]
    assert pairs["contradicted"] == [] and pairs["pairs_checked"] >= 12 and pairs["median_pair_deg"] < 1.0


def test_pair_check_names_a_view_turned_against_its_matches(arc_auto):
    """pose_checks_pairs: a view panned by 8 or 112 degrees (centre kept) is named by the pair check; the correct
    model passes. A pan moves the view's points along their epipolar lines (epipolar distances miss it), and
    8 degrees is within the path check's tolerance on this 9-degree-step orbit: only the pairs' rotations show it."""
    import pycolmap

    from nerflib import pose_checks, pose_checks_pairs

    database, names = arc_auto["out"] / "database.db", sorted(os.listdir(arc_auto["images"]))
    clean = pose_checks_pairs.pair_consistency(pycolmap.Reconstruction(arc_auto["out"] / "sparse" / "0"), database)
    assert clean["contradicted"] == [] and min(clean["support"].values()) >= 0.9
    for deg in (8.0, 112.0):
        rec = pycolmap.Reconstruction(arc_auto["out"] / "sparse" / "0")
        _turn_view(rec, "005.jpg", deg)
        check = pose_checks_pairs.pair_consistency(rec, database)
        assert check["contradicted"] == ["005.jpg"], (deg, check["support"])
        diag = pose_checks.diagnose(rec, names, database=database)
        assert "005.jpg" in diag["flagged"] and any("005.jpg" in w and "verified pairs" in w for w in diag["warnings"])
        reason = sfm.auto_fallback_reason(12, 12, diag)
        assert reason is not None and "005.jpg" in reason


def test_auto_mapper_falls_back_to_incremental(synthetic_scene, tmp_path, monkeypatch):
    """When global mapping poses a photo against its matches and leaves photos out, 'auto' maps the same matches
    incrementally, logs why (naming the photo), keeps the better model."""
    real = sfm.map_database

    def global_goes_wrong(database, image_dir, models_dir, *, mapper, threads, seed):
        models = real(database, image_dir, models_dir, mapper=mapper, threads=threads, seed=seed)
        if mapper == "global":  # as if global mapping had turned one photo (within the path check's tolerance)
            # and failed to register three
            rec = max(models.values(), key=lambda r: r.num_reg_images())
            for image_id in sorted(rec.reg_image_ids())[-3:]:
                rec.deregister_frame(rec.images[image_id].frame_id)
            _turn_view(rec, "004.jpg", 8.0)
        return models

    monkeypatch.setattr(mapping, "map_database", global_goes_wrong)
    monkeypatch.setattr(mapping, "AUTO_GLOBAL_MIN_IMAGES", 10)  # global first, as for a large capture
    logs = []
    images = _arc(synthetic_scene, tmp_path / "images")
    summary = sfm.run_sfm(images, tmp_path / "scene", threads=THREADS, max_num_features=1024, mapper="auto",
                          log=logs.append)
    print("\n".join(line for line in logs if "mapper" in line or "mapping" in line))
    attempts = {a["mapper"]: a for a in summary["mapper_attempts"]}
    assert list(attempts) == ["global", "incremental"]
    assert attempts["global"]["registered"] == 9 and attempts["global"]["problems"] >= 4
    assert summary["mapper"] == "incremental" and summary["registered"] == summary["total"] == 12
    assert "verified pairs contradict (004.jpg)" in summary["mapper_reason"]
    assert "incremental kept" in summary["mapper_reason"]
    assert any("mapper auto: global mapping gave 1 photo(s) poses that their own verified pairs contradict (004.jpg)"
               in line and "trying incremental" in line for line in logs)
    assert summary["diagnostics"]["pairs"]["contradicted"] == []  # the kept (incremental) model's
    gt = scene_io.read_scene_json(synthetic_scene / "gt" / "scene.json")
    err, _, _ = _pose_errors(tmp_path / "scene" / "sparse" / "0", images, gt)
    assert float(np.median(err["rotation_deg"])) < 0.5
