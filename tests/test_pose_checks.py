"""Pose diagnostics (nerflib.pose_checks) against hand-built references, and SfM on an adversarial capture.

Independent references: ground-truth paths from synthetic_hard with frames
moved by hand (an injected 170-degree jump must be flagged by name, a clean
path must not be); graphs whose components and order are known by
construction; a pose set moved by a known similarity.
"""

from __future__ import annotations

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
