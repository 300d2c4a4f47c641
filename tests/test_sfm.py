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

from nerflib import rigid, scene_io, sfm

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
    with pytest.raises(ValueError, match="does not exist"):
        sfm.run_sfm(tmp_path / "images", tmp_path / "out", matcher="vocab_tree", vocab_tree=tmp_path / "tree.bin")


def test_gpu_true_without_cuda(tmp_path):
    import pycolmap

    if pycolmap.has_cuda:
        pytest.skip("this pycolmap has CUDA")
    with pytest.raises(ValueError, match="CPU-only"):
        sfm.run_sfm(tmp_path, tmp_path / "out", gpu=True)


def test_too_few_images(tmp_path):
    _noise_images(tmp_path / "images", 2)
    with pytest.raises(ValueError, match="holds 2 image"):
        sfm.run_sfm(tmp_path / "images", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_choose_matcher():
    assert sfm.choose_matcher("auto", 500, None)[0] == "exhaustive"
    assert sfm.choose_matcher("auto", 501, "tree.bin")[0] == "vocab_tree"
    name, why = sfm.choose_matcher("auto", 501, None)
    assert name == "sequential" and "no vocabulary tree" in why
    assert sfm.choose_matcher("sequential", 10, None) == ("sequential", "requested")


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
    logs = []
    with pytest.raises(sfm.SfMError, match="registered 0 of 4"):
        sfm.run_sfm(images, tmp_path / "out", matcher="sequential", overlap=2, threads=THREADS,
                    max_num_features=256, log=logs.append)
    assert any("matching (sequential)" in line for line in logs)


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
