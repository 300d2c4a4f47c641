"""Pose diagnostics (nerflib.pose_checks) against hand-built references, and SfM on an adversarial capture.

Independent references: ground-truth paths from synthetic_hard with frames
moved by hand (an injected 170-degree jump must be flagged by name, a clean
path must not be); graphs whose components and order are known by
construction; a pose set moved by a known similarity.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nerflib import pose_checks, rigid, synthetic_hard


def _names(n):
    return [f"{i:03d}.jpg" for i in range(n)]


def _turn_about_z(c2w, deg):
    """Poses moved rigidly by a turn of `deg` about the world z axis (the object's axis)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rigid.apply_similarity_to_poses(c2w, 1.0, R, np.zeros(3))


@pytest.mark.parametrize("n", [24, 40, 200])
def test_clean_ordered_path_is_not_flagged(n):
    c2w = synthetic_hard.ordered_path_c2w(n, seed=1)
    out = pose_checks.path_continuity(_names(n), c2w)
    assert out["jumps"] == [] and out["suspect"] == [] and out["arcs"] == [_names(n)]
    np.testing.assert_allclose(out["median_rot_deg"], 360 / n, rtol=0.25)  # the azimuth step, plus wander


def test_clean_partial_arc_with_uneven_speed_is_not_flagged():
    # A hand-held video slows down and speeds up: steps vary by 2x, no jump.
    c2w = synthetic_hard.ordered_path_c2w(60, arc_deg=120, seed=2)
    keep = np.cumsum(np.where(np.arange(60) % 3 == 0, 2, 1))
    keep = keep[keep < 60]
    out = pose_checks.path_continuity(_names(len(keep)), c2w[keep])
    assert out["jumps"] == [] and out["suspect"] == []


def test_injected_170_degree_jump_is_flagged_by_name():
    n = 32
    names = _names(n)
    c2w = synthetic_hard.ordered_path_c2w(n, seed=0)
    moved = c2w.copy()
    moved[10:15] = _turn_about_z(c2w[10:15], 170.0)  # five frames put on the other side of the object
    out = pose_checks.path_continuity(names, moved)
    assert [(j["from"], j["to"]) for j in out["jumps"]] == [("009.jpg", "010.jpg"), ("014.jpg", "015.jpg")]
    assert all(j["rot_deg"] > 150 for j in out["jumps"])
    assert out["suspect"] == names[10:15]
    assert out["arcs"] == [names[15:], names[:10], names[10:15]]  # longest first


def test_single_misplaced_frame_is_the_one_flagged():
    n = 30
    names = _names(n)
    c2w = synthetic_hard.ordered_path_c2w(n, seed=0)
    c2w[17] = _turn_about_z(c2w[17:18], 90.0)[0]  # 4-fold symmetry: a quarter turn looks the same
    out = pose_checks.path_continuity(names, c2w)
    assert {j["from"] for j in out["jumps"]} == {"016.jpg", "017.jpg"}
    assert out["suspect"] == ["017.jpg"]


def test_no_consensus_flags_every_frame():
    n = 24
    names = _names(n)
    c2w = synthetic_hard.ordered_path_c2w(n, seed=0)
    for k, a in enumerate(range(0, n, 6)):  # four arcs, each turned differently: no arc holds half the frames
        c2w[a:a + 6] = _turn_about_z(c2w[a:a + 6], 90.0 * k)
    out = pose_checks.path_continuity(names, c2w)
    assert len(out["arcs"]) == 4 and out["suspect"] == names


def test_position_jump_without_rotation_is_flagged():
    n = 20
    names = _names(n)
    c2w = synthetic_hard.ordered_path_c2w(n, arc_deg=60, seed=0)
    c2w[12:, :, 3] += np.array([0.0, 0.0, 1.5])  # the rest of the path lifted by 1.5 m, same rotations
    out = pose_checks.path_continuity(names, c2w)
    assert [(j["from"], j["to"]) for j in out["jumps"]] == [("011.jpg", "012.jpg")]
    assert out["suspect"] == names[12:]


def test_path_continuity_bad_input():
    with pytest.raises(ValueError, match="one pose per name"):
        pose_checks.path_continuity(_names(3), np.zeros((2, 3, 4)))


def test_components_against_known_graph():
    edges = [(0, 1), (1, 2), (4, 5), (7, 7)]
    assert pose_checks._components(8, edges) == [[0, 1, 2], [4, 5], [3], [6], [7]]


def test_looks_ordered():
    n = 20
    names = _names(n)
    chain = {(i, i + 1): 200 for i in range(n - 1)}
    chain.update({(i, i + 2): 80 for i in range(n - 2)})
    chain.update({(i, j): 30 for i in range(n) for j in range(i + 5, n, 5)})  # weak distant pairs
    assert pose_checks.looks_ordered(names, chain)
    perm = np.random.default_rng(0).permutation(n)  # the same graph, names shuffled
    shuffled = {(min(perm[i], perm[j]), max(perm[i], perm[j])): k for (i, j), k in chain.items()}
    assert not pose_checks.looks_ordered(names, shuffled)


def test_weak_images():
    obs = {"a.jpg": 500, "b.jpg": 480, "c.jpg": 30, "d.jpg": 60, "e.jpg": 510}
    assert pose_checks.weak_images(obs) == ["c.jpg", "d.jpg"]  # < max(40, 0.15 * 480 = 72)


def test_compare_poses_recovers_a_known_similarity():
    gt = synthetic_hard.ordered_path_c2w(20, seed=3)
    R = rigid.exp_so3(np.array([0.3, -0.2, 0.9]))
    est = rigid.apply_similarity_to_poses(gt, 0.37, R, np.array([1.0, -2.0, 0.5]))
    out = pose_checks.compare_poses(est, gt, names=_names(20))
    assert out["max_rot_deg"] < 1e-6 and out["max_pos_pct"] < 1e-6 and out["warning"] is None
    np.testing.assert_allclose(out["scale"], 1 / 0.37, rtol=1e-9)


def test_compare_poses_warns_when_sets_disagree():
    gt = synthetic_hard.ordered_path_c2w(20, seed=3)
    est = gt.copy()
    est[::2] = _turn_about_z(gt[::2], 170.0)
    out = pose_checks.compare_poses(est, gt, names=_names(20))
    assert out["warning"] and "disagree" in out["warning"]
    assert out["median_rot_deg"] > 2.0 and len(out["over_5_deg"]) >= 10


# --------------------------------------------------------------------------- SfM on the adversarial capture

HARD = dict(n_frames=24, width=240, height=180)


@pytest.fixture(scope="module")
def hard_sfm(tmp_path_factory):
    """The default pipeline's SfM (as the `poses` step runs it, strict) on a 3-fold symmetric capture.

    One thread, so COLMAP's result (and its run time) is repeatable: on this
    scene mapping time varies from seconds to minutes with thread timing
    (3-fold, 24 frames, 2 threads: mapping 5 s in one run, 68 s in another;
    4-fold: 1.5 to over 8 minutes, on 2 busy cores). One thread: 83 s of CPU
    here (measured with 3 other jobs on the 2 cores), hence `slow`.
    """
    from nerflib import scene_io, sfm

    root = tmp_path_factory.mktemp("hard")
    synthetic_hard.generate(root / "data", synthetic_hard.HardScene(symmetry=3), **HARD)
    logs: list[str] = []
    error = None
    try:
        sfm.run_sfm(root / "data" / "images", root / "sfm", camera_model="OPENCV", threads=1, strict=True,
                    log=logs.append)
    except sfm.SfMError as e:
        error = str(e)
    summary = json.loads((root / "sfm" / "poses" / "summary.json").read_text())
    est = scene_io.read_colmap(root / "sfm" / "sparse" / "0", image_dir=root / "data" / "images")
    gt = scene_io.read_scene_json(root / "data" / "gt" / "scene.json")
    return {"summary": summary, "est": est, "gt": gt, "error": error, "log": "\n".join(logs)}


@pytest.mark.slow
def test_default_sfm_recovers_the_poses_or_flags_every_wrong_frame(hard_sfm):
    est, gt, diag = hard_sfm["est"], hard_sfm["gt"], hard_sfm["summary"]["diagnostics"]
    k = {n: i for i, n in enumerate(est.names)}
    names = [n for n in gt.names if n in k]
    cmp = pose_checks.compare_poses(est.c2w[[k[n] for n in names]], gt.c2w[[gt.names.index(n) for n in names]],
                                    names=names)
    recovered = cmp["median_rot_deg"] < 0.5 and cmp["max_rot_deg"] < 5.0 and len(names) == len(gt.names)
    flagged = set(diag["flagged"])
    unregistered = set(gt.names) - set(names)
    assert recovered or set(cmp["over_5_deg"]) <= flagged, (cmp["median_rot_deg"], cmp["over_5_deg"], flagged)
    if not recovered:  # loud, by name, and strict fails
        assert hard_sfm["error"] and "POSES MAY BE WRONG" in hard_sfm["error"]
        assert "WARNING: POSES MAY BE WRONG" in hard_sfm["log"]
        for name in sorted(set(cmp["over_5_deg"]))[:3]:
            assert name in json.dumps(diag["warnings"]) or name in flagged
    assert not unregistered or hard_sfm["summary"]["unregistered"]


@pytest.mark.slow
def test_summary_holds_the_diagnostics(hard_sfm):
    diag = hard_sfm["summary"]["diagnostics"]
    n = HARD["n_frames"]
    assert diag["ordered"] is True  # decided from the matches: exhaustive matching, names in capture order
    assert set(diag["images"]["observations"]) == set(hard_sfm["est"].names)
    assert diag["images"]["track_length"]["median"] >= 2
    graph = diag["view_graph"]
    assert 0 < graph["verified_pairs"] <= n * (n - 1) // 2
    assert sum(len(c) for c in graph["components"]) == n
    assert len(diag["continuity"]["rot_deg"]) == len(hard_sfm["est"].names) - 1
    assert "[sfm] diagnostics:" in hard_sfm["log"]


# --------------------------------------------------------------------------- where the diagnostics show


def _path_scene(c2w):
    from nerflib.types import Camera, Scene

    n = len(c2w)
    return Scene(names=_names(n), c2w=np.asarray(c2w), cameras=[Camera("PINHOLE", 64, 48, (50.0, 50.0, 32.0, 24.0))],
                 camera_idx=np.zeros(n, np.int32))


def _red_pixels(path) -> int:
    import cv2

    bgr = cv2.imread(str(path)).astype(int)
    return int(((bgr[..., 2] > 200) & (bgr[..., 1] < 60) & (bgr[..., 0] < 60)).sum())


def test_camera_figure_circles_and_names_flagged_frames(tmp_path):
    from nerflib import figures

    c2w = synthetic_hard.ordered_path_c2w(32, seed=0)
    moved = c2w.copy()
    moved[10:15] = _turn_about_z(c2w[10:15], 170.0)
    figs = {}
    for key, poses in (("clean", c2w), ("jump", moved)):
        cont = pose_checks.path_continuity(_names(32), poses)
        diag = {"images": {"observations": {}, "track_length": {"median": 3}}, "ordered": True, "continuity": cont,
                "weak": [], "flagged": cont["suspect"], "warnings": ["jump"] if cont["jumps"] else []}
        figs[key] = figures.camera_figure(_path_scene(poses), tmp_path / f"{key}.png",
                                          summary={"registered": 32, "total": 32, "diagnostics": diag})
    assert _red_pixels(figs["clean"]) == 0
    assert _red_pixels(figs["jump"]) > 200  # five circled cameras in three views, their names, the warning


def test_localize_ground_truth_alignment_warns_when_the_sets_disagree(tmp_path):
    from nerflib import localize, scene_io

    c2w = synthetic_hard.ordered_path_c2w(16, seed=0)
    scene = _path_scene(c2w)
    for key, ref in (("agree", c2w), ("disagree", np.concatenate([c2w[:8], _turn_about_z(c2w[8:], 170.0)]))):
        scene_io.write_poses_json(_path_scene(ref), tmp_path / f"{key}.json")
        logs: list[str] = []
        localize.load_ground_truth(tmp_path / f"{key}.json", scene, log=logs.append)
        warned = [m for m in logs if "WARNING" in m]
        assert bool(warned) == (key == "disagree"), logs
    assert "disagree" in warned[0] and "most off:" in warned[0] and ".jpg" in warned[0]


def test_capture_order_sorts_numbers_by_value():
    names = ["10.jpg", "2.jpg", "1.jpg", "frame_100.png", "frame_20.png", "a.jpg"]
    assert pose_checks.capture_order(names) == ["1.jpg", "2.jpg", "10.jpg", "a.jpg", "frame_20.png", "frame_100.png"]
    assert pose_checks.capture_order(_names(12)) == _names(12)


def test_camera_checks_flag_implausible_intrinsics():
    import types

    import pycolmap

    cams = {
        1: pycolmap.Camera(model="PINHOLE", width=240, height=180, params=[208.0, 207.0, 120.0, 90.0]),
        2: pycolmap.Camera(model="OPENCV", width=240, height=180, params=[225.2, 112.4, 120, 90, 0, 0, 0, 0]),
        3: pycolmap.Camera(model="SIMPLE_RADIAL", width=240, height=180, params=[20.0, 120.0, 90.0, 0.0]),
        # Global mapping of the 96-frame symmetric capture: 3-5 degrees off everywhere, no path jump.
        4: pycolmap.Camera(model="OPENCV", width=240, height=180, params=[228.1, 210.3, 120, 90, -0.32, 0.21, 0, 0]),
        # A good self-calibration (bonsai, 800x533).
        5: pycolmap.Camera(model="OPENCV", width=800, height=533, params=[824.4, 823.5, 400, 266.5, -0.06, 0.15, 0, 0]),
    }
    out = pose_checks.camera_checks(types.SimpleNamespace(cameras=cams))
    assert [c["problem"] is None for c in out] == [True, False, False, False, True]
    assert "fx/fy = 2.00" in out[1]["problem"] and "focal length 20 px" in out[2]["problem"]
    assert "fx/fy = 1.08" in out[3]["problem"]


def test_many_jumps_leave_no_arc_trusted():
    n = 40
    names = _names(n)
    c2w = synthetic_hard.ordered_path_c2w(n, seed=0)
    for a in (5, 12, 19):  # three single frames a half turn off: six jumps, the longest arc still holds 17 frames
        c2w[a] = _turn_about_z(c2w[a:a + 1], 180.0)[0]
    out = pose_checks.path_continuity(names, c2w)
    assert len(out["jumps"]) == 6 and out["suspect"] == names
