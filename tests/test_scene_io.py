"""nerflib.scene_io: round trips of every poses format, conventions, errors, real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from nerflib import cameras, rigid, scene_io
from nerflib.types import Camera, Scene

MIXED_CAMERAS = [
    Camera("SIMPLE_PINHOLE", 64, 48, (50.0, 32.0, 24.0)),
    Camera("PINHOLE", 64, 48, (50.5, 51.25, 31.7, 24.2)),
    Camera("SIMPLE_RADIAL", 80, 60, (70.0, 40.0, 30.0, -0.05)),
    Camera("RADIAL", 80, 60, (70.0, 40.0, 30.0, -0.05, 0.01)),
    Camera("OPENCV", 64, 48, (50.0, 52.0, 32.5, 23.5, -0.2, 0.03, 1e-3, -2e-3)),
    Camera("FULL_OPENCV", 64, 48, (50.0, 52.0, 32.5, 23.5, -0.2, 0.03, 1e-3, -2e-3, 0.01, 0.02, -0.01, 0.003)),
    Camera("OPENCV_FISHEYE", 64, 48, (30.0, 31.0, 32.0, 24.0, 0.05, -0.01, 1e-3, -1e-4)),
]


def _poses(n, rng):
    return np.stack([np.c_[rigid.exp_so3(rng.normal(size=3)), rng.normal(size=3) * 3] for _ in range(n)])


def _touch_images(folder: Path, names, cams=None):
    """Image files for `names`; real PNGs of each camera's size when `cams` is given (LLFF reads sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        if cams is None:
            (folder / n).write_bytes(b"")
        else:
            cv2.imwrite(str(folder / n), np.zeros((cams[i].height, cams[i].width, 3), np.uint8))


def _scene(tmp_path, cams, n=9, *, seed=0, points=False) -> Scene:
    rng = np.random.default_rng(seed)
    names = [f"img_{i:02d}.png" for i in range(n)]
    image_dir = tmp_path / "images"
    _touch_images(image_dir, names)
    return Scene(names=names, c2w=_poses(n, rng), cameras=list(cams), camera_idx=np.arange(n) % len(cams),
                 image_dir=str(image_dir), points=rng.normal(size=(20, 3)) if points else None)


def _assert_same(a: Scene, b: Scene, *, order=None, tol=1e-9):
    order = list(range(len(a))) if order is None else order
    assert b.names == [a.names[i] for i in order]
    assert np.abs(b.c2w - a.c2w[order]).max() < tol
    for j, i in enumerate(order):
        ca, cb = a.camera_of(i), b.camera_of(j)
        assert (ca.model, ca.width, ca.height) == (cb.model, cb.width, cb.height)
        assert np.allclose(ca.params, cb.params, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("convention", ["opencv", "opengl"])
@pytest.mark.parametrize("pose_type", ["c2w", "w2c"])
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_plain_formats_round_trip(tmp_path, fmt, convention, pose_type):
    scene = _scene(tmp_path, MIXED_CAMERAS, n=14)
    path = tmp_path / f"poses.{fmt}"
    if fmt == "json":
        scene_io.write_poses_json(scene, path, convention=convention, pose_type=pose_type,
                                  homogeneous=pose_type == "w2c")
    else:
        scene_io.write_poses_csv(scene, path, convention=convention, pose_type=pose_type)
    back = scene_io.load_poses(path, image_dir=tmp_path / "images")
    _assert_same(scene, back)
    assert len(back.cameras) == len(MIXED_CAMERAS)
    if fmt == "json":  # image_dir is stored relative to the file
        assert Path(scene_io.read_poses_json(path).image_dir).resolve() == (tmp_path / "images").resolve()


@pytest.mark.parametrize("text", [False, True])
def test_colmap_round_trip(tmp_path, text):
    scene = _scene(tmp_path, MIXED_CAMERAS, n=12, points=True)
    sparse = tmp_path / "sparse" / "0"
    scene_io.write_colmap(scene, sparse, text=text)
    ext = ".txt" if text else ".bin"
    files = {f"{n}{ext}" for n in ("cameras", "images", "points3D", "rigs", "frames")}
    assert {p.name for p in sparse.iterdir()} == files
    back = scene_io.load_poses(tmp_path)  # project folder -> sparse/0, images/ found by the layout
    _assert_same(scene, back)
    assert np.abs(back.points - scene.points).max() < 1e-12
    assert Path(back.image_dir).resolve() == (tmp_path / "images").resolve()
    # Writing the other format replaces the model instead of hiding behind stale files.
    other = _scene(tmp_path, MIXED_CAMERAS[:2], n=12, seed=1)
    scene_io.write_colmap(other, sparse, text=not text)
    _assert_same(other, scene_io.read_colmap(sparse))


def test_colmap_text_without_rigs_and_frames(tmp_path):
    """COLMAP 3.x text models (no rigs.txt/frames.txt), as older tools and our demo write them."""
    scene = _scene(tmp_path, MIXED_CAMERAS[:3], n=5)
    sparse = tmp_path / "model"
    scene_io.write_colmap(scene, sparse, text=True)
    (sparse / "rigs.txt").unlink()
    (sparse / "frames.txt").unlink()
    _assert_same(scene, scene_io.read_colmap(sparse, image_dir=tmp_path / "images"))


def test_blender_round_trip_one_and_many_cameras(tmp_path):
    for cams in ([MIXED_CAMERAS[1]], MIXED_CAMERAS):
        scene = _scene(tmp_path, cams, n=10)
        path = tmp_path / "transforms_train.json"
        scene_io.write_blender(scene, path)
        back = scene_io.load_poses(path)
        _assert_same(scene, back)
        assert Path(back.image_dir).resolve() == (tmp_path / "images").resolve()
        assert not back.object_on_background  # RGB photos: a real capture in Blender's format


def test_llff_round_trip_and_image_scaling(tmp_path):
    rng = np.random.default_rng(2)
    cams = [Camera("PINHOLE", 64, 48, (55.0, 55.0, 32.0, 24.0)), Camera("SIMPLE_PINHOLE", 64, 48, (60.0, 32.0, 24.0))]
    names = [f"{i}.png" for i in (3, 1, 10, 2)]  # stored in sorted order: 1, 10, 2, 3
    idx = np.array([0, 1, 0, 1])
    scene = Scene(names=names, c2w=_poses(4, rng), cameras=cams, camera_idx=idx,
                  image_dir=str(tmp_path / "images"), near=0.5, far=7.25)
    _touch_images(tmp_path / "images", names, [cams[i] for i in idx])
    scene_io.write_llff(scene, tmp_path / "poses_bounds.npy")
    back = scene_io.load_poses(tmp_path / "poses_bounds.npy")
    order = sorted(range(4), key=lambda i: names[i])
    assert back.names == ["1.png", "10.png", "2.png", "3.png"]
    assert np.abs(back.c2w - scene.c2w[order]).max() < 1e-12
    for j, i in enumerate(order):
        assert np.allclose(cameras.intrinsics_matrix(back.camera_of(j)), cameras.intrinsics_matrix(scene.camera_of(i)))
    assert (back.near, back.far, back.forward_facing) == (0.5, 7.25, True)
    # The same poses with half-size images: focal and principal point halve.
    _touch_images(tmp_path / "images_2", names, [cameras.scale_camera(cams[i], 2) for i in idx])
    half = scene_io.read_llff(tmp_path / "poses_bounds.npy", tmp_path / "images_2")
    for j, i in enumerate(order):
        f = scene.camera_of(i).param("fx") / 2
        assert half.camera_of(j).params == (f, f, 16.0, 12.0)


def test_llff_writer_refuses_what_it_cannot_store(tmp_path):
    scene = _scene(tmp_path, [MIXED_CAMERAS[4]], n=3)
    scene.near, scene.far = 1.0, 2.0
    with pytest.raises(ValueError, match="does not fit poses_bounds.npy"):
        scene_io.write_llff(scene, tmp_path / "poses_bounds.npy")


# --------------------------------------------------------------------------
# Conventions against independent truths


def test_opengl_c2w_means_looking_down_minus_z(tmp_path):
    """A Blender camera at (0, 0, 5) with identity rotation looks at the origin with +y up."""
    d = {"camera_angle_x": 2 * math.atan(0.5), "w": 100, "h": 80,
         "frames": [{"file_path": "a.png",
                     "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5], [0, 0, 0, 1]]}]}
    (tmp_path / "transforms.json").write_text(json.dumps(d))
    scene = scene_io.read_blender(tmp_path / "transforms.json", check_images=False)
    cam = scene.cameras[0]
    assert np.allclose(cam.params, (100.0, 100.0, 50.0, 40.0), rtol=1e-15)
    pts = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]])
    uv, depth = cameras.project_points(cam.model, cam.params, scene.c2w[0], pts)
    assert np.allclose(depth, 5.0)
    assert np.allclose(uv, [[50, 40], [70, 40], [50, 20]])  # +x right, world up = image up


def test_w2c_means_what_opencv_means(tmp_path):
    """A w2c [R | t] in the plain format projects points as cv2.projectPoints(rvec(R), t) does."""
    rng = np.random.default_rng(3)
    R, t = rigid.exp_so3(rng.normal(size=3)), rng.normal(size=3)
    K = np.array([[200.0, 0, 60], [0, 210.0, 50], [0, 0, 1]])
    d = {"convention": "opencv", "pose_type": "w2c", "fx": 200.0, "fy": 210.0, "cx": 60.0, "cy": 50.0,
         "width": 120, "height": 100, "frames": [{"name": "a.jpg", "matrix": np.c_[R, t].tolist()}]}
    (tmp_path / "p.json").write_text(json.dumps(d))
    scene = scene_io.read_poses_json(tmp_path / "p.json", check_images=False)
    pts = (rng.normal(size=(10, 3)) + [0, 0, 8]) @ R - R.T @ t  # in front of the camera
    uv, _ = cameras.project_points("PINHOLE", scene.cameras[0].params, scene.c2w[0], pts)
    ref = cv2.projectPoints(pts, cv2.Rodrigues(R)[0], t, K, None)[0][:, 0]
    assert np.abs(uv - ref).max() < 1e-9


# --------------------------------------------------------------------------
# Errors name the file and the fix


def _plain(tmp_path, **frame_changes):
    frame = {"name": "a.jpg", "matrix": np.eye(4)[:3].tolist(), "fx": 100, "fy": 100, "cx": 50, "cy": 40,
             "width": 100, "height": 80}
    frame.update(frame_changes)
    path = tmp_path / "bad_poses.json"
    path.write_text(json.dumps({"convention": "opencv", "pose_type": "c2w", "frames": [frame]}))
    (tmp_path / "a.jpg").write_bytes(b"")
    return path


R_REFLECT = np.diag([1.0, 1.0, -1.0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "missing.jpg"}, "missing from"),
        ({"matrix": [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0]]}, "non-finite"),
        ({"matrix": (2 * np.eye(4))[:3].tolist()}, "not orthonormal"),
        ({"matrix": np.c_[R_REFLECT, np.zeros(3)].tolist()}, r"reflection \(det = -1"),
        ({"matrix": np.eye(3).tolist()}, r"shape \(3, 3\)"),
        ({"matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]}, "last row"),
        ({"convention": "colmap"}, "convention must be 'opencv' or 'opengl'"),
        ({"pose_type": "cam2world"}, "pose_type must be 'c2w' or 'w2c'"),
        ({"model": "THIN_PRISM_FISHEYE"}, "unknown camera model 'THIN_PRISM_FISHEYE'"),
        ({"fx": float("inf")}, "non-finite"),
        ({"model": "SIMPLE_PINHOLE", "fy": 101}, "fx != fy"),
        ({"k1": 0.1}, "PINHOLE has no coefficient k1"),
        ({"width": None}, "'width' is missing"),
    ],
)
def test_plain_json_errors(tmp_path, change, message):
    path = _plain(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as err:
        scene_io.load_poses(path)
    assert str(path) in str(err.value)


def test_plain_csv_errors(tmp_path):
    scene = _scene(tmp_path, MIXED_CAMERAS[:1], n=3)
    path = tmp_path / "poses.csv"
    scene_io.write_poses_csv(scene, path)
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    cases = [
        (lines[:2] + [lines[2].replace("opencv", "openGL2", 1)], "convention must be"),
        ([lines[0].replace(",m23", ",x23")] + lines[1:], "m23"),
        (lines[:2] + [",".join("nan" if k == 5 else c for k, c in enumerate(lines[2].split(",")))], "non-finite"),
    ]
    for content, message in cases:
        bad.write_text("\n".join(content) + "\n")
        with pytest.raises(ValueError, match=message) as err:
            scene_io.read_poses_csv(bad, image_dir=tmp_path / "images")
        assert str(bad) in str(err.value)


def test_colmap_errors(tmp_path):
    with pytest.raises(ValueError, match="no COLMAP model") as err:
        scene_io.read_colmap(tmp_path)
    assert str(tmp_path) in str(err.value)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="THIN_PRISM_FISHEYE", width=10, height=10,
                                                    params=[10.0] * 4 + [0.0] * 8))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.jpg", camera_id=1, image_id=1), pycolmap.Rigid3d())
    rec.write(str(tmp_path))
    with pytest.raises(ValueError, match="THIN_PRISM_FISHEYE, which nerflib does not support") as err:
        scene_io.read_colmap(tmp_path)
    assert str(tmp_path) in str(err.value) and "image_undistorter" in str(err.value)
    scene = _scene(tmp_path / "p", MIXED_CAMERAS[:1], n=3)
    scene_io.write_colmap(scene, tmp_path / "p" / "sparse" / "0")
    (tmp_path / "p" / "images" / "img_01.png").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 images .* missing .*img_01.png"):
        scene_io.load_poses(tmp_path / "p")


def test_llff_and_blender_errors(tmp_path):
    rng = np.random.default_rng(5)
    arr = np.zeros((3, 17))
    for i, c2w in enumerate(_poses(3, rng)):
        arr[i, :15] = np.c_[c2w[:, 1], c2w[:, 0], -c2w[:, 2], c2w[:, 3], [48, 64, 50]].ravel()
        arr[i, 15:] = [1, 5]
    np.save(tmp_path / "poses_bounds.npy", arr)
    _touch_images(tmp_path / "images", ["a.png", "b.png"], [Camera("PINHOLE", 64, 48, (1, 1, 1, 1))] * 2)
    with pytest.raises(ValueError, match="3 poses but 2 images") as err:
        scene_io.read_llff(tmp_path / "poses_bounds.npy")
    assert str(tmp_path / "poses_bounds.npy") in str(err.value)
    np.save(tmp_path / "wrong.npy", arr[:, :15])
    with pytest.raises(ValueError, match=r"\[N, 17\]"):
        scene_io.load_poses(tmp_path / "wrong.npy")
    bad = tmp_path / "transforms_x.json"
    bad.write_text(json.dumps({"camera_angle_x": 0.7, "w": 10, "h": 10, "frames": [
        {"file_path": "a.png", "transform_matrix": np.diag([1.0, 1, -1, 1]).tolist()}]}))
    with pytest.raises(ValueError, match="reflection") as err:
        scene_io.load_poses(bad, check_images=False)
    assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match="unknown poses format 'nerf'"):
        scene_io.load_poses(bad, "nerf")


def test_auto_format_detection(tmp_path):
    cam = Camera("PINHOLE", 64, 48, (50.0, 50.0, 32.0, 24.0))  # what LLFF can store
    scene = _scene(tmp_path, [cam], n=3)
    _touch_images(tmp_path / "images", scene.names, [cam] * 3)  # LLFF reads the image size
    scene.near, scene.far = 1.0, 3.0
    scene_io.write_poses_json(scene, tmp_path / "poses.json")
    scene_io.write_poses_csv(scene, tmp_path / "poses.csv")
    scene_io.write_blender(scene, tmp_path / "transforms.json")
    scene_io.write_scene_json(scene, tmp_path / "scene.json")
    scene_io.write_colmap(scene, tmp_path / "sparse" / "0")
    scene_io.write_llff(scene, tmp_path / "poses_bounds.npy")
    expect = {"poses.json": "json", "poses.csv": "csv", "transforms.json": "blender", "scene.json": "scene",
              "sparse/0": "colmap", "sparse/0/images.bin": "colmap", "poses_bounds.npy": "llff", ".": "colmap"}
    for rel, fmt in expect.items():
        assert scene_io.detect_format(tmp_path / rel) == fmt, rel
        _assert_same(scene, scene_io.load_poses(tmp_path / rel, image_dir=tmp_path / "images"))


# --------------------------------------------------------------------------
# Normalization


def _orbit(n, centre, radius, rng):
    """Cameras around `centre`, all looking at it, world +y up (so camera up is not +z)."""
    c2ws = []
    for _ in range(n):
        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.8)
        pos = centre + radius * np.array([np.cos(el) * np.cos(az), np.sin(el), np.cos(el) * np.sin(az)])
        z = (centre - pos) / np.linalg.norm(centre - pos)
        x = np.cross(z, [0, -1.0, 0])
        x /= np.linalg.norm(x)
        c2ws.append(np.c_[x, np.cross(z, x), z, pos])
    return np.array(c2ws)


def test_normalize_360(tmp_path):
    rng = np.random.default_rng(6)
    centre = np.array([3.0, -1.0, 2.0])
    scene = Scene(names=[f"{i}.png" for i in range(30)], c2w=_orbit(30, centre, 7.0, rng),
                  cameras=[MIXED_CAMERAS[4]], camera_idx=np.zeros(30), points=centre + rng.normal(size=(50, 3)),
                  near=0.5, far=20.0)
    out, tr = scene_io.normalize_scene(scene, mode="360")
    assert np.allclose(tr["center"], centre, atol=1e-9)
    assert np.isclose(np.linalg.norm(out.c2w[:, :, 3], axis=1).max(), 1.0)
    up = -out.c2w[:, :, 1].mean(0)
    assert np.allclose(up / np.linalg.norm(up), [0, 0, 1], atol=1e-12)
    assert np.isclose(out.near, 0.5 / 7.0) and np.isclose(tr["scale"], 1 / 7.0)
    # Images are unchanged, and the inverse transform maps back.
    cam = scene.cameras[0]
    uv, _ = cameras.project_points(cam.model, cam.params, scene.c2w[:, None], scene.points[None])
    uv2, _ = cameras.project_points(cam.model, cam.params, out.c2w[:, None], out.points[None])
    assert np.abs(uv - uv2).max() < 1e-8
    assert np.abs(scene_io.transform_poses(out.c2w, tr["T_inv"]) - scene.c2w).max() < 1e-12
    assert np.allclose(tr["T"] @ tr["T_inv"], np.eye(4))
    # scene.json keeps the transform next to the scene (and old readers ignore it).
    scene_io.write_scene_json(out, tmp_path / "scene.json", normalization=tr)
    back = scene_io.read_normalization(tmp_path / "scene.json")
    assert back["mode"] == "360" and np.allclose(back["T"], tr["T"]) and np.allclose(back["center"], centre)
    _assert_same(out, scene_io.read_scene_json(tmp_path / "scene.json"), tol=1e-12)


def test_normalize_forward():
    rng = np.random.default_rng(7)
    base = rigid.exp_so3(np.array([0.2, -0.5, 0.1]))
    c2w = np.stack([np.c_[base @ rigid.exp_so3(rng.normal(scale=0.05, size=3)),
                          [1, 2, 3] + rng.normal(scale=0.3, size=3)] for _ in range(20)])
    scene = Scene(names=[str(i) for i in range(20)], c2w=c2w, cameras=[MIXED_CAMERAS[0]], camera_idx=np.zeros(20),
                  near=2.0, far=40.0, forward_facing=True)
    out, tr = scene_io.normalize_scene(scene, mode="forward")
    assert np.allclose(out.c2w[:, :, 3].mean(0), 0, atol=1e-12)
    fwd = out.c2w[:, :, 2].mean(0)
    assert np.allclose(fwd / np.linalg.norm(fwd), [0, 0, 1], atol=1e-12)
    assert np.isclose(out.near, 1 / 0.75) and np.isclose(out.far, 40 / 1.5) and out.forward_facing
    assert np.abs(scene_io.transform_poses(out.c2w, tr["T_inv"]) - c2w).max() < 1e-12
    with pytest.raises(ValueError, match="parallel"):
        scene_io.normalize_scene(Scene(names=["a", "b", "c"], c2w=np.stack([np.eye(4)[:3]] * 3),
                                       cameras=[MIXED_CAMERAS[0]], camera_idx=np.zeros(3)), mode="360")
    with pytest.raises(ValueError, match="mode must be"):
        scene_io.normalize_scene(scene, mode="ndc")


# --------------------------------------------------------------------------
# Real data (skipped with the reason when DNERF_DATA lacks them)


@pytest.mark.data
def test_real_cup_colmap_and_llff_agree(dataset):
    cup = dataset("real_cup_colmap")
    col = scene_io.load_poses(cup / "sparse" / "0")
    llff = scene_io.load_poses(cup / "poses_bounds.npy")
    assert len(col) == len(llff) == 77 and col.names == llff.names
    assert col.points.shape == (9262, 3) and len(col.cameras) == 77  # one SIMPLE_PINHOLE per image
    e = rigid.pose_errors(llff.c2w, col.c2w)
    print(f"cup LLFF vs COLMAP: rotation error max {e['rotation_deg'].max():.3g} deg, "
          f"position max {e['position'].max():.3g}, scale {e['scale']:.12f}")
    assert e["rotation_deg"].max() < 1.0
    assert e["position"].max() < 1e-6 * np.linalg.norm(col.c2w[:, :, 3], axis=1).max()
    # LLFF stores one focal length: the first COLMAP camera's.
    assert np.isclose(llff.cameras[0].param("fx"), col.camera_of(0).param("fx"))
    assert len(scene_io.load_poses(cup / "poses_bounds.npy", image_dir=cup / "images_4").cameras[0].params) == 4


@pytest.mark.data
def test_real_lego_blender(dataset):
    lego = dataset("nerf_synthetic_lego")
    train = scene_io.load_poses(lego / "transforms_train.json")
    assert len(train) == 100 and train.names[0] == "r_0.png"
    cam = train.cameras[0]
    assert len(train.cameras) == 1 and (cam.width, cam.height) == (800, 800)
    assert np.isclose(cam.param("fx"), 400 / math.tan(0.5 * 0.6911112070083618))
    both = scene_io.load_poses(lego)
    assert len(both) == 200 and both.names[0] == "train/r_0.png" and both.names[-1].startswith("test/")
    # Every camera looks at the object at the origin (OpenCV +z towards it).
    to_origin = -train.c2w[:, :, 3] / np.linalg.norm(train.c2w[:, :, 3], axis=1, keepdims=True)
    cos = np.clip(np.einsum("ni,ni->n", to_origin, train.c2w[:, :, 2]), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 1.0
    out, tr = scene_io.normalize_scene(train)
    assert np.linalg.norm(tr["center"]) < 0.01 and np.isclose(np.linalg.norm(out.c2w[:, :, 3], axis=1).max(), 1)
    # RGBA renders: an object on a plain background, kept through normalization and scene.json.
    assert train.object_on_background and out.object_on_background
    assert scene_io.scene_from_dict(scene_io.scene_to_dict(train)).object_on_background


@pytest.mark.data
def test_real_fern_llff(dataset):
    fern = dataset("llff_fern")
    scene = scene_io.load_poses(fern / "poses_bounds.npy", image_dir=fern / "images_8")
    assert len(scene) == 20 and scene.forward_facing
    cam = scene.cameras[0]
    raw = np.load(fern / "poses_bounds.npy")
    assert (cam.width, cam.height) == (504, 378)
    assert np.allclose(cam.params, (raw[0, 14] / 8, raw[0, 14] / 8, 252.0, 189.0))
    assert np.isclose(scene.near, raw[:, 15:].min()) and np.isclose(scene.far, raw[:, 15:].max())
    out, _ = scene_io.normalize_scene(scene, mode="forward")
    assert np.isclose(out.near, 1 / 0.75)
