"""Camera paths: geometry of orbits, spirals and splines against closed forms (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from nerflib import paths, rigid
from nerflib.types import Camera, Scene

FOCUS = np.array([0.1, -0.2, 0.05])


def ring(n=12, *, a=1.0, b=1.0, tilt=0.0, height=0.3, start=0.1, arc=2 * np.pi, focus=FOCUS):
    """Cameras on a (tilted) ellipse around `focus`, looking at it, image up ~ +z.

    Positions focus + (a cos t, b sin t cos(tilt), height + b sin t sin(tilt)).
    """
    t = start + arc * np.arange(n) / (n if arc >= 2 * np.pi else n - 1)
    pos = focus + np.stack([a * np.cos(t), b * np.sin(t) * np.cos(tilt), height + b * np.sin(t) * np.sin(tilt)], -1)
    return paths.look_at(pos, focus, [0.0, 0.0, 1.0])


def spacing(c2w, closed=True):
    p = c2w[:, :, 3]
    if closed:
        p = np.concatenate([p, p[:1]])
    return np.linalg.norm(np.diff(p, axis=0), axis=-1)


def assert_looks_at(c2w, focus, tol=1e-6):
    to_focus = focus - c2w[:, :, 3]
    to_focus /= np.linalg.norm(to_focus, axis=-1, keepdims=True)
    assert np.abs(np.cross(c2w[:, :, 2], to_focus)).max() < tol
    assert (np.einsum("ni,ni->n", c2w[:, :, 2], to_focus) > 0).all()


# --------------------------------------------------------------------------- orbit


def test_orbit_on_a_tilted_circle_follows_the_cameras():
    """A circle of radius 1 tilted 20 degrees (seen from above an ellipse, its heights a sinusoid):
    the path is that circle."""
    tilt = np.deg2rad(20)
    cams = ring(9, tilt=tilt)  # 9 cameras, none at the path's sample angles
    c2w = paths.orbit_path(cams, n_frames=120)
    assert c2w.shape == (120, 3, 4)
    assert rigid.is_rotation(c2w[:, :, :3], tol=1e-9).all()
    centre = FOCUS + [0, 0, 0.3]
    rel = c2w[:, :, 3] - centre
    np.testing.assert_allclose(np.linalg.norm(rel, axis=-1), 1.0, atol=1e-9)  # on the circle ...
    normal = np.array([0.0, -np.sin(tilt), np.cos(tilt)])
    np.testing.assert_allclose(rel @ normal, 0.0, atol=1e-9)  # ... in its tilted plane: heights follow
    assert_looks_at(c2w, FOCUS)
    d = spacing(c2w)
    assert d.std() / d.mean() < 1e-3
    assert (c2w[:, :, 1] @ [0, 0, 1.0] < 0).all()  # image y points down


def test_orbit_spacing_is_even_in_arc_length_on_an_ellipse():
    """On a 1 x 0.6 ellipse equal parameter steps differ by 1.7x in length; the path's do not."""
    cams = ring(16, a=1.0, b=0.6)
    c2w = paths.orbit_path(cams, n_frames=200)
    d = spacing(c2w)
    assert d.std() / d.mean() < 1e-3
    rel = c2w[:, :, 3] - FOCUS
    np.testing.assert_allclose(rel[:, 0] ** 2 + (rel[:, 1] / 0.6) ** 2, 1.0, atol=1e-9)
    np.testing.assert_allclose(rel[:, 2], 0.3, atol=1e-12)
    # a naive parameter-uniform ellipse would fail the same check
    t = 2 * np.pi * np.arange(200) / 200
    naive = np.linalg.norm(np.diff(np.stack([np.cos(t), 0.6 * np.sin(t)], -1), axis=0), axis=-1)
    assert naive.std() / naive.mean() > 0.1


def test_orbit_starts_at_camera_zero_and_runs_the_cameras_way():
    cams = ring(10, a=1.5, b=1.5, height=0.0)
    fwd = paths.orbit_path(cams, n_frames=40)
    np.testing.assert_allclose(fwd[0, :, 3], cams[0, :, 3], atol=1e-9)  # on the circle, at camera 0's angle
    back = paths.orbit_path(cams[::-1], n_frames=40)
    np.testing.assert_allclose(back[0, :, 3], cams[-1, :, 3], atol=1e-9)

    def turn(c2w):  # the sign of the angular velocity about +z
        p = c2w[:, :2, 3] - FOCUS[:2]
        return np.sign(p[0, 0] * p[1, 1] - p[0, 1] * p[1, 0])

    assert turn(fwd) == turn(cams) == -turn(back)


def test_orbit_from_a_partial_arc_is_the_full_circle():
    """120 degrees of a circle: the centred conic fit is exact on any arc."""
    cams = ring(7, a=1.5, b=1.5, arc=np.deg2rad(120), height=0.2)
    c2w = paths.orbit_path(cams, n_frames=36)
    np.testing.assert_allclose(np.linalg.norm(c2w[:, :2, 3] - FOCUS[:2], axis=-1), 1.5, atol=1e-9)
    np.testing.assert_allclose(c2w[:, 2, 3], FOCUS[2] + 0.2, atol=1e-9)
    assert_looks_at(c2w, FOCUS)


def test_fit_ellipse_recovers_axes_and_falls_back_to_a_circle():
    rot = np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    t = np.linspace(0, 2, 9)  # an arc
    xy = np.stack([2.0 * np.cos(t), 0.5 * np.sin(t)], -1) @ rot.T
    axes, radii = paths.fit_ellipse(xy)
    np.testing.assert_allclose(radii, [2.0, 0.5], rtol=1e-9)
    np.testing.assert_allclose(np.abs(axes.T @ rot), np.eye(2), atol=1e-9)
    # two points cannot fix a conic: a circle of the median radius
    axes, radii = paths.fit_ellipse(np.array([[1.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_allclose(radii, [2.0, 2.0])


def test_orbit_options_and_errors():
    cams = ring(8)
    lifted = paths.orbit_path(cams, n_frames=8, radius_scale=2.0, height_offset=0.5, focus=FOCUS)
    np.testing.assert_allclose(np.linalg.norm(lifted[:, :2, 3] - FOCUS[:2], axis=-1), 2.0, atol=1e-9)
    np.testing.assert_allclose(lifted[:, 2, 3], FOCUS[2] + 0.8, atol=1e-9)
    with pytest.raises(ValueError, match="n_frames"):
        paths.orbit_path(cams, n_frames=0)
    with pytest.raises(ValueError, match="shape"):
        paths.orbit_path(cams[:, :3, :3], n_frames=4)


# --------------------------------------------------------------------------- spiral


def forward_cameras():
    """A 4 x 3 grid of cameras looking along +z with small yaw jitter (an LLFF-like capture)."""
    out = []
    for i, x in enumerate(np.linspace(-0.3, 0.3, 4)):
        for j, y in enumerate(np.linspace(-0.2, 0.2, 3)):
            r = rigid.exp_so3(np.array([0.02 * j, 0.03 * (i - 1.5), 0.0]))
            out.append(np.concatenate([r, [[x], [y], [0.05 * i]]], axis=1))
    return np.stack(out)


def test_spiral_stays_forward():
    cams = forward_cameras()
    c2w = paths.spiral_path(cams, n_frames=120, near=1.33, far=20.0)
    assert c2w.shape == (120, 3, 4) and rigid.is_rotation(c2w[:, :, :3], tol=1e-9).all()
    avg = paths.average_pose(cams)
    # every frame looks forward (within 15 degrees of the mean camera) and keeps the image upright
    assert (c2w[:, :, 2] @ avg[:, 2] > np.cos(np.deg2rad(15))).all()
    assert (c2w[:, :, 1] @ avg[:, 1] > 0.9).all()
    # centres stay inside the box of the cameras' 90th-percentile offsets around the mean camera
    offsets = (cams[:, :, 3] - avg[:, 3]) @ avg[:, :3]
    radii = np.percentile(np.abs(offsets), 90, axis=0)
    local = (c2w[:, :, 3] - avg[:, 3]) @ avg[:, :3]
    assert (np.abs(local) <= radii + 1e-12).all()
    # all frames aim at one point on the mean camera's axis, at multinerf's focal depth
    depth = 1.0 / (0.25 / (0.9 * 1.33) + 0.75 / (5.0 * 20.0))
    assert_looks_at(c2w, avg[:, 3] + depth * avg[:, 2])
    # two turns: frame k and k + 60 share x and y offsets (z turns at half the rate)
    np.testing.assert_allclose(local[:60, :2], local[60:, :2], atol=1e-12)


def test_spiral_needs_bounds():
    with pytest.raises(ValueError, match="near < far"):
        paths.spiral_path(forward_cameras(), n_frames=4, near=2.0, far=1.0)


# --------------------------------------------------------------------------- spline


def test_spline_passes_through_keyframes_exactly():
    cams = ring(12, tilt=0.3)
    keys = [0, 3, 5, 9]
    c2w = paths.spline_path(cams, keys, n_frames=40)
    assert c2w.shape == (40, 3, 4) and rigid.is_rotation(c2w[:, :, :3], tol=1e-9).all()
    hits = [int(np.flatnonzero((c2w == cams[k]).all(axis=(1, 2)))[0]) for k in keys]
    assert hits[0] == 0 and hits[-1] == 39 and hits == sorted(hits)
    # smooth: no step is far longer than the mean step, no big rotation jumps
    d = spacing(c2w, closed=False)
    assert d.max() < 2.5 * d.mean()
    turn = rigid.rotation_error_deg(c2w[:-1, :, :3], c2w[1:, :, :3])
    assert turn.max() < 3 * turn.mean() + 1e-9
    closed = paths.spline_path(cams, keys, n_frames=40, closed=True)
    assert closed.shape == (40, 3, 4)
    assert all((closed == cams[k]).all(axis=(1, 2)).any() for k in keys)


def test_spline_on_a_line_stays_on_it_and_slerps_between_two_rotations():
    """Collinear evenly spaced keyframes: centripetal Catmull-Rom stays on the line;
    rotations about one axis interpolate that angle monotonically (squad = slerp then)."""
    angles = np.deg2rad([0.0, 10.0, 20.0, 30.0])
    cams = np.stack([np.concatenate([rigid.exp_so3(np.array([0.0, 0.0, a])), [[i], [2.0 * i], [0.0]]], axis=1)
                     for i, a in enumerate(angles)])
    c2w = paths.spline_path(cams, [0, 1, 2, 3], n_frames=31)
    p = c2w[:, :, 3]
    direction = np.array([1.0, 2.0, 0.0]) / np.sqrt(5.0)
    np.testing.assert_allclose(p - np.outer(p @ direction, direction), 0.0, atol=1e-12)
    assert (np.diff(p @ direction) > 0).all()
    yaw = rigid.log_so3(c2w[:, :, :3])
    np.testing.assert_allclose(yaw[:, :2], 0.0, atol=1e-12)
    np.testing.assert_allclose(yaw[:, 2], np.deg2rad(np.arange(31)), atol=1e-9)  # 10 frames per 10 degrees


def test_spline_shares_frames_by_length_and_checks_arguments():
    line = np.stack([np.concatenate([np.eye(3), [[x], [0.0], [0.0]]], axis=1) for x in (0.0, 1.0, 5.0)])
    c2w = paths.spline_path(line, [0, 1, 2], n_frames=21)  # segments 1 and 4 long
    assert (c2w[4] == line[1]).all()  # 20 steps shared 1 : 4
    far = line.copy()
    far[2, 0, 3] = 100.0  # 3 steps shared 1 : 99 would give the short segment none: it still gets one
    np.testing.assert_array_equal(paths.spline_path(far, [0, 1, 2], n_frames=4)[[0, 1, 3]], far)
    cams = ring(12)
    with pytest.raises(ValueError, match="too few"):
        paths.spline_path(cams, [0, 1, 5], n_frames=2)
    with pytest.raises(ValueError, match="at least 2 keyframes"):
        paths.spline_path(cams, [3], n_frames=5)
    with pytest.raises(ValueError, match="out of range"):
        paths.spline_path(cams, [0, 12], n_frames=5)


# --------------------------------------------------------------------------- make_path


def scene_of(c2w, *, forward_facing):
    cam = Camera("PINHOLE", 16, 12, (12.0, 12.0, 8.0, 6.0))
    return Scene(names=[f"{i:03d}.png" for i in range(len(c2w))], c2w=c2w, cameras=[cam],
                 camera_idx=np.zeros(len(c2w), np.int32), near=1.33, far=20.0, forward_facing=forward_facing)


def test_make_path_auto_picks_orbit_or_spiral():
    ring_cams, ff_cams = ring(8), forward_cameras()
    np.testing.assert_array_equal(paths.make_path("auto", scene_of(ring_cams, forward_facing=False), n_frames=10),
                                  paths.orbit_path(ring_cams, n_frames=10))
    np.testing.assert_array_equal(paths.make_path("auto", scene_of(ff_cams, forward_facing=True), n_frames=10),
                                  paths.spiral_path(ff_cams, n_frames=10, near=1.33, far=20.0))
    np.testing.assert_array_equal(paths.make_path("spline", ring_cams, n_frames=9, keyframes=[0, 4]),
                                  paths.spline_path(ring_cams, [0, 4], n_frames=9))
    with pytest.raises(ValueError, match="path kind"):
        paths.make_path("circle", ring_cams, n_frames=4)
    with pytest.raises(ValueError, match="keyframes"):
        paths.make_path("spline", ring_cams, n_frames=4)
    with pytest.raises(ValueError, match="near and far"):
        paths.make_path("spiral", ff_cams, n_frames=4)


# --------------------------------------------------------------------------- timed keyframes and path files


def test_keyframe_path_keeps_the_keyframes_timing():
    cams = ring(4)
    times = [0.0, 1.0, 3.0, 3.5]
    c2w, fov, t = paths.keyframe_path(cams, times, fps=4, fov=[40.0, 60.0, 60.0, 30.0])
    assert len(c2w) == 15 and np.allclose(t, np.arange(15) / 4)  # 0 .. 3.5 s at 4 fps, both ends included
    for key, when in enumerate(times):  # each keyframe is exactly the frame at its time
        np.testing.assert_array_equal(c2w[int(when * 4)], cams[key])
    assert rigid.is_rotation(c2w[:, :, :3], tol=1e-9).all()
    np.testing.assert_allclose(fov[[0, 2, 4, 12, 14]], [40.0, 50.0, 60.0, 60.0, 30.0])
    # the same spline as spline_path: a segment sampled at the same fractions gives the same poses
    equal = paths.keyframe_path(cams[:2], [0.0, 1.0], fps=8)[0]
    np.testing.assert_allclose(equal, paths.spline_path(cams, [0, 1], n_frames=9), atol=1e-12)
    with pytest.raises(ValueError, match="strictly increasing"):
        paths.keyframe_path(cams[:2], [1.0, 1.0], fps=4)
    with pytest.raises(ValueError, match="fov"):
        paths.keyframe_path(cams[:2], [0.0, 1.0], fps=4, fov=[50.0, 190.0])


def test_path_file_round_trip_and_opengl_convention(tmp_path):
    import json

    from nerflib import camera_path

    cams = ring(3)
    camera_path.write_path(tmp_path / "p.json", cams, [0.0, 0.5, 2.0], fps=6, fov=[50.0, 45.0, 50.0], width=32,
                           height=24)
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["format"] == "nerflib-camera-path" and len(d["keyframes"]) == 3 and d["keyframes"][1]["time"] == 0.5
    cp = camera_path.read_path(tmp_path / "p.json")
    want, fov, _ = paths.keyframe_path(cams, [0.0, 0.5, 2.0], fps=6, fov=[50.0, 45.0, 50.0])
    np.testing.assert_allclose(cp.c2w, want, atol=1e-12)
    np.testing.assert_allclose(cp.fov, fov)
    assert (cp.width, cp.height, cp.fps, len(cp.c2w)) == (32, 24, 6.0, 13)
    # the same keyframes written by hand as OpenGL 4x4 matrices, without fov or size
    gl = np.tile(np.eye(4), (3, 1, 1))
    gl[:, :3, :3] = cams[:, :, :3] @ np.diag([1.0, -1.0, -1.0])
    gl[:, :3, 3] = cams[:, :, 3]
    (tmp_path / "gl.json").write_text(json.dumps(
        {"convention": "opengl", "fps": 6, "keyframes": [{"c2w": m.tolist(), "time": t}
                                                        for m, t in zip(gl, [0.0, 0.5, 2.0])]}))
    cp_gl = camera_path.read_path(tmp_path / "gl.json")
    np.testing.assert_allclose(cp_gl.c2w, want, atol=1e-12)
    assert cp_gl.fov is None and cp_gl.width is None
    bad = {"keyframes": [{"c2w": (2 * np.eye(4)).tolist(), "time": 0}, {"c2w": np.eye(4).tolist(), "time": 1}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not a rotation"):
        camera_path.read_path(tmp_path / "bad.json")


def test_nerfstudio_camera_path_written_and_read(tmp_path):
    import json

    from nerflib import camera_path

    cams = ring(3)
    camera_path.write_path(tmp_path / "p.json", cams, [0.0, 1.0, 2.0], fps=5, fov=[50.0, 40.0, 50.0])
    cp = camera_path.read_path(tmp_path / "p.json")
    camera_path.write_nerfstudio_path(tmp_path / "ns.json", cp, width=64, height=48)
    d = json.loads((tmp_path / "ns.json").read_text())
    assert d["render_width"] == 64 and d["render_height"] == 48 and d["fps"] == 5.0 and d["seconds"] == 2.0
    assert len(d["camera_path"]) == 11 and len(d["camera_path"][0]["camera_to_world"]) == 16
    # OpenGL axes, row-major: the third column is minus the viewing direction
    m = np.array(d["camera_path"][0]["camera_to_world"]).reshape(4, 4)
    np.testing.assert_allclose(m[:3, 2], -cams[0, :, 2], atol=1e-12)
    # the viewer's keyframes: column-major matrices as JSON strings, with their time and fov
    k1 = d["keyframes"][1]
    np.testing.assert_allclose(np.array(json.loads(k1["matrix"])).reshape(4, 4).T[:3, 3], cams[1, :, 3])
    assert ["TIME", 1.0] in json.loads(k1["properties"]) and k1["fov"] == 40.0
    back = camera_path.read_path(tmp_path / "ns.json")
    np.testing.assert_allclose(back.c2w, cp.c2w, atol=1e-12)
    np.testing.assert_allclose(back.fov, cp.fov)
    assert (back.width, back.height, back.fps) == (64, 48, 5.0)
    # a nerfstudio model's frame mapped back through its dataparser_transforms.json (x_ns = s (R x + t))
    rot = rigid.exp_so3(np.array([0.1, -0.2, 0.3]))
    t, s = np.array([0.5, -1.0, 0.2]), 0.25
    (tmp_path / "dp.json").write_text(json.dumps({"transform": np.concatenate([rot, t[:, None]], 1).tolist(),
                                                  "scale": s}))
    moved = dict(d)
    ns_c2w = np.stack([np.concatenate([rot @ c[:, :3], (s * (rot @ c[:, 3] + t))[:, None]], 1) for c in cp.c2w])
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV -> OpenGL camera axes
    moved["camera_path"] = [
        dict(f, camera_to_world=np.vstack([np.concatenate([c[:, :3] @ flip, c[:, 3:]], 1), [0, 0, 0, 1]]).ravel().tolist())
        for f, c in zip(d["camera_path"], ns_c2w)]
    (tmp_path / "ns_moved.json").write_text(json.dumps(moved))
    back = camera_path.read_path(tmp_path / "ns_moved.json", dataparser_transforms=tmp_path / "dp.json")
    np.testing.assert_allclose(back.c2w, cp.c2w, atol=1e-9)
