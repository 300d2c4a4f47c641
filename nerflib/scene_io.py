"""Readers and writers of posed image sets; everything becomes a `types.Scene`.

Inside nerflib there is one convention (types.py): OpenCV camera axes (x right,
y down, z forward), camera-to-world `c2w` [N, 3, 4]. Every reader converts to
it and validates (`validate_scene`); every writer converts back. Errors are
ValueErrors that name the file and say how to fix it.

Formats (the `fmt` of `load_poses`):
  colmap   a sparse model folder (cameras/images/points3D, .bin or .txt), via pycolmap.
  blender  transforms*.json of NeRF synthetic, instant-ngp and nerfstudio: c2w
           4x4 with OpenGL axes (x right, y up, z back); `camera_angle_x` or
           fl_x/fl_y/cx/cy/w/h and k1 k2 (k3) p1 p2 / `camera_model` / `is_fisheye`.
  llff     poses_bounds.npy: per image a 3x5 [R | t | (h, w, f)] whose rotation
           columns are (down, right, backwards), plus near/far bounds; rows pair
           with the sorted image files of the image folder.
  json     the plain poses format below.
  csv      the plain poses format below, as a table.
  scene    our scene.json (below).

Plain poses format (`read_poses_json` / `read_poses_csv`), one record per image:
  name        file name relative to the image folder.
  matrix      3x4, or 4x4 with last row 0 0 0 1 (json: nested list, row-major;
              csv: columns m00 m01 m02 m03 m10 ... m23, optionally m30 ... m33).
  convention  "opencv" (x right, y down, z forward: COLMAP, OpenCV) or
              "opengl" (x right, y up, z backward: Blender, NeRF, instant-ngp).
  pose_type   "c2w" (camera-to-world: last column = camera centre) or
              "w2c" (world-to-camera: x_cam = R x_world + t, as COLMAP stores).
  fx fy cx cy width height
              intrinsics in pixels; pixel centres at +0.5 (COLMAP's convention:
              an ideal principal point is (width / 2, height / 2)).
  model       optional camera model (types.CAMERA_MODELS; default PINHOLE), with
              its distortion coefficients as fields named k1 k2 k3 k4 k5 k6 p1 p2
              (only those the model has; missing ones are 0). Single-focal
              models (SIMPLE_*, RADIAL) need fx == fy.
  JSON layout: {"image_dir": "images" (optional, relative to the file; default
  the file's folder), "frames": [{record}, ...]}; any record field may also sit
  at the top level as the default for every frame (e.g. shared intrinsics,
  "convention": "opengl"). CSV: a header row naming the columns; one row per
  image; blank cells of optional columns count as absent; lines starting with
  '#' are comments. `convention` and `pose_type` are required: a silent default
  would turn a mirrored pose set into a plausible-looking wrong one.

scene.json (our own exchange format, written by the pose stage and the demo
generator; `read_scene_json` is its reader):

    {"version": 1, "convention": "opencv_c2w",
     "cameras": [{"model": "PINHOLE", "width": 320, "height": 240, "params": [fx, fy, cx, cy]}],
     "frames":  [{"name": "000.jpg", "camera": 0, "c2w": [[r00, r01, r02, tx], [..], [..]]}],
     "image_dir": "images"            (optional, relative to the json file),
     "near": null, "far": null, "forward_facing": false,
     "normalization": {...}           (optional, see `normalize_scene`; `read_normalization`)}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nerflib import fileio, rigid
from nerflib.types import CAMERA_MODELS, Camera, Scene

SCENE_JSON_VERSION = 1
FORMATS = ("colmap", "blender", "llff", "json", "csv", "scene", "auto")
# Rotations read from files must be orthonormal to this tolerance (float32
# files such as NeRF's transforms.json are good to ~1e-7).
ROTATION_TOL = 1e-4
_DISTORTION_NAMES = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")
_INTRINSIC_NAMES = ("fx", "fy", "cx", "cy", "width", "height")
_OPENGL_FLIP = np.diag([1.0, -1.0, -1.0])  # OpenCV <-> OpenGL camera axes (its own inverse)
_COLMAP_FILES = ("cameras", "images", "points3D", "rigs", "frames")
_MAX_LISTED = 5


# --------------------------------------------------------------------------
# scene.json


def scene_to_dict(scene: Scene, *, relative_to: str | os.PathLike | None = None) -> dict:
    image_dir = scene.image_dir
    if image_dir is not None and relative_to is not None:
        image_dir = os.path.relpath(image_dir, relative_to)
    return {
        "version": SCENE_JSON_VERSION,
        "convention": "opencv_c2w",
        "cameras": [
            {"model": c.model, "width": int(c.width), "height": int(c.height), "params": [float(p) for p in c.params]}
            for c in scene.cameras
        ],
        "frames": [
            {"name": name, "camera": int(ci), "c2w": np.asarray(c2w).tolist()}
            for name, ci, c2w in zip(scene.names, scene.camera_idx, scene.c2w)
        ],
        "image_dir": image_dir,
        "near": scene.near,
        "far": scene.far,
        "forward_facing": bool(scene.forward_facing),
        "object_on_background": bool(scene.object_on_background),
    }


def scene_from_dict(d: dict, *, base_dir: str | os.PathLike | None = None, source: str = "scene.json") -> Scene:
    if d.get("convention", "opencv_c2w") != "opencv_c2w":
        raise ValueError(f"{source}: convention {d.get('convention')!r} is not 'opencv_c2w'")
    cameras = [Camera(c["model"], int(c["width"]), int(c["height"]), tuple(c["params"])) for c in d["cameras"]]
    frames = d["frames"]
    image_dir = d.get("image_dir")
    if image_dir is not None and base_dir is not None:
        image_dir = str(Path(base_dir) / image_dir)
    return Scene(
        names=[f["name"] for f in frames],
        c2w=np.array([f["c2w"] for f in frames], dtype=np.float64).reshape(len(frames), 3, 4),
        cameras=cameras,
        camera_idx=np.array([f.get("camera", 0) for f in frames], dtype=np.int32),
        image_dir=image_dir,
        near=d.get("near"),
        far=d.get("far"),
        forward_facing=bool(d.get("forward_facing", False)),
        object_on_background=bool(d.get("object_on_background", False)),
    )


def write_scene_json(scene: Scene, path: str | os.PathLike, *, normalization: dict | None = None) -> None:
    """Write scene.json; `normalization` (from `normalize_scene`) is stored alongside if given."""
    path = Path(path)
    d = scene_to_dict(scene, relative_to=path.parent)
    if normalization is not None:
        d["normalization"] = {
            k: v if isinstance(v, str) else np.asarray(v).tolist() for k, v in normalization.items()
        }
    fileio.write_json(path, d)


def read_scene_json(path: str | os.PathLike) -> Scene:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read scene file {path}: {e}") from e
    return scene_from_dict(d, base_dir=path.parent, source=str(path))


def read_normalization(path: str | os.PathLike) -> dict | None:
    """The `normalization` stored in a scene.json (numpy arrays), or None."""
    path = Path(path)
    d = _read_json(path).get("normalization")
    if d is None:
        return None
    return {k: v if isinstance(v, str) else (np.asarray(v, dtype=np.float64) if isinstance(v, list) else float(v))
            for k, v in d.items()}


# --------------------------------------------------------------------------
# Validation and small helpers.


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ValueError(f"poses file {path} does not exist") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(d).__name__}")
    return d


def _listing(items) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _check_rotation(R: np.ndarray, source: str, where: str) -> None:
    if not np.isfinite(R).all():
        raise ValueError(f"{source}: {where}: the pose has non-finite values (nan/inf); remove or fix that entry")
    dev = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if dev > ROTATION_TOL:
        raise ValueError(
            f"{source}: {where}: the rotation part is not orthonormal (max |R^T R - I| = {dev:.3g}, "
            f"det = {det:.6g}); poses must be rigid: no scale or shear in the 3x3 block"
        )
    if det < 0:
        raise ValueError(
            f"{source}: {where}: the rotation is a reflection (det = {det:.6g}, not +1): one axis is mirrored; "
            "check the convention flag (opencv flips y and z of opengl, not one axis)"
        )


def validate_scene(scene: Scene, source: str, *, check_images: bool = True) -> Scene:
    """Check poses, intrinsics and (if `check_images` and scene.image_dir) the image files."""
    for i, name in enumerate(scene.names):
        if not np.isfinite(scene.c2w[i]).all():
            raise ValueError(
                f"{source}: image {name!r}: the pose has non-finite values (nan/inf); remove or fix that entry"
            )
        _check_rotation(scene.c2w[i, :, :3], source, f"image {name!r}")
    for k, cam in enumerate(scene.cameras):
        if not np.isfinite(cam.params).all():
            raise ValueError(f"{source}: camera {k} has non-finite parameters {cam.params}")
        if cam.param("fx") <= 0 or cam.param("fy") <= 0 or cam.width <= 0 or cam.height <= 0:
            raise ValueError(f"{source}: camera {k} needs positive focal lengths and image size, got {cam}")
    if len(set(scene.names)) != len(scene.names):
        dup = sorted({n for n in scene.names if scene.names.count(n) > 1})
        raise ValueError(
            f"{source}: image names appear more than once: {_listing(dup)}; give one pose per image "
            "(remove the repeated entries)"
        )
    if check_images and scene.image_dir is not None:
        folder = Path(scene.image_dir)
        if not folder.is_dir():
            raise ValueError(
                f"{source}: the image folder {folder} does not exist; pass image_dir= pointing at the photos "
                "(or check_images=False to read the poses alone)"
            )
        missing = [n for n in scene.names if not (folder / n).is_file()]
        if missing:
            raise ValueError(
                f"{source}: {len(missing)} of {len(scene)} images named there are missing from {folder}: "
                f"{_listing(missing)}; pass image_dir= pointing at the folder holding them, or fix the names"
            )
    return scene


class _CameraTable:
    """Distinct cameras, in order of first use."""

    def __init__(self):
        self.cameras: list[Camera] = []
        self._index: dict = {}

    def add(self, camera: Camera) -> int:
        key = (camera.model, camera.width, camera.height, tuple(float(p) for p in camera.params))
        if key not in self._index:
            self._index[key] = len(self.cameras)
            self.cameras.append(camera)
        return self._index[key]


def _make_camera(model: str, width, height, values: dict, source: str, where: str) -> Camera:
    """A Camera of `model` from named values (fx, fy, cx, cy, k1.., p1, p2); absent coefficients are 0."""
    model = str(model).upper()
    if model not in CAMERA_MODELS:
        raise ValueError(
            f"{source}: {where}: unknown camera model {model!r}; use one of {', '.join(CAMERA_MODELS)} "
            "(or undistort the images first and use PINHOLE)"
        )
    names = CAMERA_MODELS[model]
    try:
        values = {k: float(v) for k, v in values.items() if v is not None}
        w, h = float(width), float(height)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {where}: intrinsics must be numbers: {e}") from e
    if not all(math.isfinite(v) for v in (*values.values(), w, h)):
        raise ValueError(f"{source}: {where}: intrinsics have non-finite values {values}")
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise ValueError(f"{source}: {where}: width and height must be positive integers, got {width}x{height}")
    if "f" in names:
        if values["fx"] != values["fy"]:
            raise ValueError(f"{source}: {where}: model {model} has one focal length but fx != fy; use PINHOLE/OPENCV")
        values["f"] = values["fx"]
    extra = [n for n in _DISTORTION_NAMES if values.get(n, 0.0) != 0.0 and n not in names]
    if extra:
        raise ValueError(
            f"{source}: {where}: model {model} has no coefficient {', '.join(extra)}; pick a model that does"
        )
    return Camera(model, int(w), int(h), tuple(values.get(n, 0.0) for n in names))


def _camera_values(camera: Camera) -> dict:
    """fx fy cx cy width height model + the model's distortion coefficients, by name."""
    d = {n: camera.param(n) for n in ("fx", "fy", "cx", "cy")}
    d.update(width=int(camera.width), height=int(camera.height), model=camera.model)
    d.update({n: camera.param(n) for n in _DISTORTION_NAMES if n in CAMERA_MODELS[camera.model]})
    return d


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except OSError as e:
        raise ValueError(f"cannot read the size of image {path}: {e}") from e


def _pose_to_c2w(m, convention: str, pose_type: str, source: str, where: str) -> np.ndarray:
    """A 3x4/4x4 matrix in the given convention -> OpenCV c2w [3, 4]."""
    try:
        m = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {where}: the pose matrix is not a numeric 3x4 or 4x4 array: {e}") from e
    if m.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"{source}: {where}: the pose matrix has shape {m.shape}; give 3x4 or 4x4 (row-major)")
    if not np.isfinite(m).all():
        raise ValueError(f"{source}: {where}: the pose has non-finite values (nan/inf); remove or fix that entry")
    if m.shape == (4, 4) and np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise ValueError(f"{source}: {where}: the last row of a 4x4 pose must be 0 0 0 1, got {m[3].tolist()}")
    if convention not in ("opencv", "opengl"):
        raise ValueError(f"{source}: {where}: convention must be 'opencv' or 'opengl', got {convention!r}")
    if pose_type not in ("c2w", "w2c"):
        raise ValueError(f"{source}: {where}: pose_type must be 'c2w' or 'w2c', got {pose_type!r}")
    R, t = m[:3, :3], m[:3, 3]
    _check_rotation(R, source, where)
    if pose_type == "w2c":
        R, t = R.T, -R.T @ t
    if convention == "opengl":
        R = R @ _OPENGL_FLIP
    return np.concatenate([R, t[:, None]], axis=1)


def _c2w_to_pose(c2w: np.ndarray, convention: str, pose_type: str, homogeneous: bool) -> np.ndarray:
    if convention not in ("opencv", "opengl") or pose_type not in ("c2w", "w2c"):
        raise ValueError(f"convention must be opencv|opengl and pose_type c2w|w2c, got {convention!r}, {pose_type!r}")
    R, t = c2w[:, :3], c2w[:, 3]
    if convention == "opengl":
        R = R @ _OPENGL_FLIP
    if pose_type == "w2c":
        R, t = R.T, -R.T @ t
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m if homogeneous else m[:3]


def _write_colmap_files(rec, sparse_dir: Path, text: bool) -> None:
    """Write a pycolmap model into sparse_dir, each file atomically; drop stale files of the other format."""
    sparse_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=sparse_dir, prefix=".colmap."))
    try:
        (rec.write_text if text else rec.write_binary)(str(tmp))
        for src in sorted(tmp.iterdir()):
            with fileio.atomic_path(sparse_dir / src.name) as dst:
                shutil.copyfile(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # pycolmap reads .bin before .txt: a stale model of the other format would shadow this one.
    stale_ext = ".bin" if text else ".txt"
    for name in _COLMAP_FILES:
        (sparse_dir / f"{name}{stale_ext}").unlink(missing_ok=True)


# --------------------------------------------------------------------------
# COLMAP


def read_colmap(sparse_dir, *, image_dir=None, check_images: bool = True) -> Scene:
    """A COLMAP sparse model (binary or text; rigs/frames optional) -> Scene.

    Registered images only, sorted by name; points3D become `scene.points`.
    image_dir defaults to <project>/images for the usual <project>/sparse/0 layout.
    """
    sparse_dir = Path(sparse_dir)
    if not any((sparse_dir / f"cameras{e}").is_file() for e in (".bin", ".txt")):
        hint = f"; a project folder? try {sparse_dir / 'sparse' / '0'}" if (sparse_dir / "sparse").is_dir() else ""
        raise ValueError(f"{sparse_dir}: no COLMAP model here (cameras.bin/.txt, images, points3D){hint}")
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(sparse_dir))
    except Exception as e:  # pycolmap raises plain RuntimeErrors for damaged files
        raise ValueError(f"{sparse_dir}: pycolmap cannot read this COLMAP model: {e}") from e
    table = _CameraTable()
    cam_index: dict[int, int] = {}
    names, c2ws, idx = [], [], []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue
        cam = rec.cameras[image.camera_id]
        model = cam.model.name
        if model not in CAMERA_MODELS:
            raise ValueError(
                f"{sparse_dir}: camera {image.camera_id} uses model {model}, which nerflib does not support "
                f"(supported: {', '.join(CAMERA_MODELS)}); undistort the images with `colmap image_undistorter` "
                "(gives PINHOLE) or re-run SfM with a supported model"
            )
        if image.camera_id not in cam_index:
            camera = Camera(model, int(cam.width), int(cam.height), tuple(float(p) for p in cam.params))
            cam_index[image.camera_id] = table.add(camera)
        w2c = image.cam_from_world().matrix()
        names.append(image.name)
        c2ws.append(np.concatenate([w2c[:, :3].T, -w2c[:, :3].T @ w2c[:, 3:]], axis=1))
        idx.append(cam_index[image.camera_id])
    if not names:
        raise ValueError(f"{sparse_dir}: the COLMAP model has no registered images")
    pts = [rec.points3D[k].xyz for k in sorted(rec.points3D.keys())]
    if image_dir is None:
        guess = sparse_dir.resolve().parent.parent / "images"
        image_dir = guess if guess.is_dir() else None
    scene = Scene(
        names=names, c2w=np.array(c2ws), cameras=table.cameras, camera_idx=np.array(idx),
        image_dir=str(image_dir) if image_dir is not None else None,
        points=np.array(pts, dtype=np.float64).reshape(-1, 3) if pts else None,
    )
    return validate_scene(scene, str(sparse_dir), check_images=check_images)


def write_colmap(scene: Scene, sparse_dir, *, text: bool = False) -> None:
    """Write a COLMAP model (binary, or text with `text=True`) via pycolmap.

    Camera k becomes camera_id k + 1 with a trivial rig (pycolmap 4.x needs
    rigs and frames), image i becomes image_id i + 1, and scene.points become
    points3D without tracks. Files are replaced one by one, atomically.
    """
    import pycolmap

    rec = pycolmap.Reconstruction()
    for k, cam in enumerate(scene.cameras):
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(camera_id=k + 1, model=cam.model, width=int(cam.width), height=int(cam.height),
                            params=[float(p) for p in cam.params])
        )
    for i, (name, c2w) in enumerate(zip(scene.names, scene.c2w)):
        image = pycolmap.Image(name=name, camera_id=int(scene.camera_idx[i]) + 1, image_id=i + 1)
        w2c = _c2w_to_pose(c2w, "opencv", "w2c", homogeneous=False)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c))
    if scene.points is not None:
        for p in np.asarray(scene.points, dtype=np.float64).reshape(-1, 3):
            rec.add_point3D(p, pycolmap.Track())
    _write_colmap_files(rec, Path(sparse_dir), text)


# --------------------------------------------------------------------------
# Blender / instant-ngp / nerfstudio transforms.json

_BLENDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".exr")
_BLENDER_SPLIT_ORDER = ("train", "val", "test")


def _blender_files(path: Path, splits) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such transforms file or folder")
    files = {p.stem.removeprefix("transforms_").removeprefix("transforms"): p for p in path.glob("transforms*.json")}
    if splits is not None:
        missing = [s for s in splits if s not in files]
        if missing:
            raise ValueError(f"{path}: no transforms_{missing[0]}.json here (found {_listing(sorted(files))})")
        keys = list(splits)
    else:
        keys = sorted(files, key=lambda k: (_BLENDER_SPLIT_ORDER.index(k) if k in _BLENDER_SPLIT_ORDER else 3, k))
    if not keys:
        raise ValueError(f"{path}: no transforms*.json files here")
    return [files[k] for k in keys]


def _blender_camera(d: dict, image_path: Path | None, source: str, where: str) -> Camera:
    w, h = d.get("w"), d.get("h")
    if w is None or h is None:
        if image_path is None or not image_path.is_file():
            raise ValueError(
                f"{source}: {where}: no 'w'/'h' given and the image {image_path} is missing, so the image size "
                "is unknown; add w and h or put the images next to the file"
            )
        w, h = _image_size(image_path)
    w, h = float(w), float(h)
    if "fl_x" in d:
        fx = float(d["fl_x"])
    elif "camera_angle_x" in d:
        fx = 0.5 * w / math.tan(0.5 * float(d["camera_angle_x"]))
    else:
        raise ValueError(f"{source}: {where}: no focal length: give fl_x (pixels) or camera_angle_x (radians)")
    if "fl_y" in d:
        fy = float(d["fl_y"])
    elif "camera_angle_y" in d and "fl_x" not in d and "camera_angle_x" not in d:
        fy = 0.5 * h / math.tan(0.5 * float(d["camera_angle_y"]))
    else:
        fy = fx  # NeRF's convention: square pixels from camera_angle_x
    values = {"fx": fx, "fy": fy, "cx": float(d.get("cx", w / 2)), "cy": float(d.get("cy", h / 2))}
    dist = {n: float(d[n]) for n in _DISTORTION_NAMES if n in d}
    model = d.get("camera_model")
    if model is None:
        if d.get("is_fisheye", False):
            model = "OPENCV_FISHEYE"
        elif any(dist.get(n, 0.0) for n in ("k4", "k5", "k6")):
            raise ValueError(
                f"{source}: {where}: k4..k6 without 'camera_model' are ambiguous (instant-ngp and OpenCV "
                "disagree); add \"camera_model\": \"FULL_OPENCV\" (OpenCV's rational model) if that is meant"
            )
        elif dist.get("k3", 0.0):
            model = "FULL_OPENCV"
        elif any(dist.values()):
            model = "OPENCV"
        else:
            model = "PINHOLE"
    return _make_camera(model, w, h, {**values, **dist}, source, where)


def _resolve_blender_path(base: Path, file_path: str) -> Path:
    p = Path(os.path.normpath(base / file_path))
    if p.is_file() or p.suffix in _BLENDER_EXTENSIONS:
        return p
    for ext in _BLENDER_EXTENSIONS:  # NeRF synthetic omits the extension
        if p.with_name(p.name + ext).is_file():
            return p.with_name(p.name + ext)
    return p


def read_blender(path, *, splits=None, check_images: bool = True) -> Scene:
    """transforms*.json (one file, a list of files, or a folder of transforms_*.json) -> Scene.

    A folder reads every split (train, val, test, then others; or `splits`).
    Image paths are taken relative to each json file; the deepest folder common
    to all images becomes `scene.image_dir`, so names keep their split folder
    when several splits are read (e.g. 'train/r_0.png', 'test/r_0.png').
    OpenGL axes are converted to OpenCV. near/far are left unset (NeRF's
    synthetic scenes use 2 and 6). Images with an alpha channel (the synthetic
    sets) mark the scene `object_on_background`; real captures in this format
    (instant-ngp, nerfstudio) have none.
    """
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else _blender_files(Path(path), splits)
    table = _CameraTable()
    full, c2ws, idx = [], [], []
    for jp in paths:
        d = _read_json(jp)
        source = str(jp)
        frames = d.get("frames")
        if not isinstance(frames, list) or not frames:
            raise ValueError(f"{source}: no 'frames' list; is this a transforms.json?")
        shared = {k: v for k, v in d.items() if k != "frames"}
        shared_camera = None
        for j, f in enumerate(frames):
            where = f"frame {j} ({f.get('file_path', '?')})"
            if "file_path" not in f or "transform_matrix" not in f:
                raise ValueError(f"{source}: {where}: every frame needs 'file_path' and 'transform_matrix'")
            img = _resolve_blender_path(jp.parent, f["file_path"])
            per_frame = any(k in f for k in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x",
                                             *_DISTORTION_NAMES))
            if per_frame:
                cam = _blender_camera({**shared, **f}, img, source, where)
            else:
                if shared_camera is None:
                    shared_camera = _blender_camera(shared, img, source, where)
                cam = shared_camera
            full.append(img)
            c2ws.append(_pose_to_c2w(f["transform_matrix"], "opengl", "c2w", source, where))
            idx.append(table.add(cam))
    root = Path(os.path.commonpath([p.parent for p in full]))
    names = [p.relative_to(root).as_posix() for p in full]
    scene = Scene(names=names, c2w=np.array(c2ws), cameras=table.cameras, camera_idx=np.array(idx), image_dir=str(root),
                  object_on_background=_has_alpha(full[0]))
    return validate_scene(scene, _listing(str(p) for p in paths), check_images=check_images)


def _has_alpha(image: Path) -> bool:
    """True if `image` exists and has an alpha channel (reads the header only)."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    except (OSError, ValueError):
        return False


def _blender_intrinsics(camera: Camera) -> dict:
    d = {"camera_model": camera.model, "w": int(camera.width), "h": int(camera.height),
         "fl_x": camera.param("fx"), "fl_y": camera.param("fy"), "cx": camera.param("cx"), "cy": camera.param("cy")}
    d.update({n: camera.param(n) for n in _DISTORTION_NAMES if n in CAMERA_MODELS[camera.model]})
    d["camera_angle_x"] = 2.0 * math.atan(0.5 * camera.width / camera.param("fx"))
    d["camera_angle_y"] = 2.0 * math.atan(0.5 * camera.height / camera.param("fy"))
    if camera.model == "OPENCV_FISHEYE":
        d["is_fisheye"] = True
    return d


def write_blender(scene: Scene, path) -> None:
    """One transforms.json (OpenGL c2w 4x4; file paths relative to the json, with extension).

    One camera: intrinsics at the top level (instant-ngp/nerfstudio keys plus
    camera_angle_x/y); several: per frame.
    """
    path = Path(path)
    base = Path(scene.image_dir) if scene.image_dir is not None else path.parent
    rel = os.path.relpath(base.resolve(), path.parent.resolve())
    d: dict = _blender_intrinsics(scene.cameras[0]) if len(scene.cameras) == 1 else {}
    frames = []
    for i, (name, c2w) in enumerate(zip(scene.names, scene.c2w)):
        f = {"file_path": Path(rel, name).as_posix() if rel != "." else name}
        if len(scene.cameras) > 1:
            f.update(_blender_intrinsics(scene.camera_of(i)))
        f["transform_matrix"] = _c2w_to_pose(c2w, "opengl", "c2w", homogeneous=True).tolist()
        frames.append(f)
    d["frames"] = frames
    fileio.write_json(path, d)


# --------------------------------------------------------------------------
# LLFF poses_bounds.npy


def read_llff(poses_bounds_npy, image_dir=None, *, check_images: bool = True) -> Scene:
    """poses_bounds.npy -> Scene (forward_facing=True, near/far = min/max of the bounds).

    Rows pair with the sorted image files of `image_dir` (default: `images`
    next to the file), as LLFF does. The stored hwf is for the images SfM saw;
    the focal length is scaled per axis to the actual size of the images in
    image_dir (e.g. images_8/), with the principal point at the image centre.
    """
    from nerflib.images import list_images

    path = Path(poses_bounds_npy)
    source = str(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as poses_bounds.npy: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise ValueError(f"{source}: expected an [N, 17] array (3x5 pose-hwf + near, far per image), got {arr.shape}")
    if not np.isfinite(arr).all():
        bad = sorted(set(np.nonzero(~np.isfinite(arr))[0].tolist()))
        raise ValueError(
            f"{source}: rows {_listing(bad)} (0-based) have non-finite values (nan/inf); fix or remove those rows "
            "and their images (rows pair with the sorted image files)"
        )
    poses = arr[:, :15].reshape(-1, 3, 5)
    bounds = arr[:, 15:]
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    try:
        names = list_images(image_dir)
    except ValueError as e:
        raise ValueError(f"{source}: {e}; pass image_dir= (LLFF pairs poses with the sorted images)") from e
    if len(names) != len(arr):
        raise ValueError(
            f"{source}: {len(arr)} poses but {len(names)} images in {image_dir}; LLFF pairs rows with the sorted "
            "image files, so both counts must match: remove extra images or point image_dir at the right folder"
        )
    width, height = _image_size(image_dir / names[0])
    table = _CameraTable()
    idx, c2ws = [], []
    for i, p in enumerate(poses):
        h, w, f = p[:, 4]
        sx, sy = width / w, height / h
        if abs(sx / sy - 1.0) > 0.01:
            raise ValueError(
                f"{source}: row {i}: hwf says {w:g}x{h:g} but the images in {image_dir} are {width}x{height}, "
                "a different aspect ratio; point image_dir at the matching images"
            )
        cam = _make_camera("PINHOLE", width, height, {"fx": f * sx, "fy": f * sy, "cx": width / 2, "cy": height / 2},
                           source, f"row {i}")
        idx.append(table.add(cam))
        # (down, right, backwards) columns -> OpenCV (right, down, forward).
        c2w = np.stack([p[:, 1], p[:, 0], -p[:, 2], p[:, 3]], axis=1)
        _check_rotation(c2w[:, :3], source, f"row {i} ({names[i]})")
        c2ws.append(c2w)
    scene = Scene(names=names, c2w=np.array(c2ws), cameras=table.cameras, camera_idx=np.array(idx),
                  image_dir=str(image_dir), near=float(bounds.min()), far=float(bounds.max()), forward_facing=True)
    return validate_scene(scene, source, check_images=check_images)


def write_llff(scene: Scene, path) -> None:
    """poses_bounds.npy, rows in sorted-name order (how `read_llff` pairs them).

    Only centred pinhole cameras with fx == fy fit LLFF's hwf. Bounds: the
    scene's near/far for every row if set, else LLFF's per-image 0.1 / 99.9
    percentile depths of scene.points.
    """
    path = Path(path)
    for k, cam in enumerate(scene.cameras):
        fx, fy, cx, cy = (cam.param(n) for n in ("fx", "fy", "cx", "cy"))
        if (cam.model not in ("SIMPLE_PINHOLE", "PINHOLE") or abs(fx - fy) > 1e-9 * fx
                or abs(cx - cam.width / 2) > 1e-6 or abs(cy - cam.height / 2) > 1e-6):
            raise ValueError(
                f"{path}: camera {k} ({cam}) does not fit poses_bounds.npy, which holds one focal length, "
                "no distortion and a centred principal point; write COLMAP or JSON poses instead"
            )
    if any("/" in n or "\\" in n for n in scene.names):
        raise ValueError(f"{path}: LLFF pairs poses with files of one folder; names with folders cannot be stored")
    if scene.near is not None and scene.far is not None:
        bounds = np.tile([scene.near, scene.far], (len(scene), 1))
    elif scene.points is not None and len(scene.points):
        bounds = []
        for c2w in scene.c2w:
            depth = (scene.points - c2w[:, 3]) @ c2w[:, 2]
            depth = depth[depth > 0]
            if not len(depth):
                raise ValueError(f"{path}: a camera sees none of the scene's points; set scene.near/far")
            bounds.append(np.percentile(depth, [0.1, 99.9]))
        bounds = np.array(bounds)
    else:
        raise ValueError(f"{path}: LLFF needs near/far bounds: set scene.near and scene.far, or give points")
    rows = []
    for i in sorted(range(len(scene)), key=lambda i: scene.names[i]):
        c2w, cam = scene.c2w[i], scene.camera_of(i)
        pose = np.stack([c2w[:, 1], c2w[:, 0], -c2w[:, 2], c2w[:, 3]], axis=1)
        hwf = [cam.height, cam.width, cam.param("fx")]
        rows.append(np.concatenate([np.concatenate([pose, np.array(hwf)[:, None]], axis=1).ravel(), bounds[i]]))
    with fileio.atomic_path(path) as tmp:
        np.save(tmp, np.array(rows, dtype=np.float64))


# --------------------------------------------------------------------------
# Plain JSON / CSV poses


def _scene_from_records(records, *, source: str, image_dir, check_images: bool) -> Scene:
    table = _CameraTable()
    names, c2ws, idx = [], [], []
    for j, r in enumerate(records):
        name = r.get("name")
        if not name:
            raise ValueError(f"{source}: record {j} has no 'name'")
        where = r.get("_where") or f"image {name!r}"  # csv records name their row
        for key in ("convention", "pose_type", "matrix", *_INTRINSIC_NAMES):
            if r.get(key) is None:
                raise ValueError(
                    f"{source}: {where}: '{key}' is missing (see nerflib.scene_io's docstring for the format)"
                )
        c2ws.append(_pose_to_c2w(r["matrix"], str(r["convention"]).lower(), str(r["pose_type"]).lower(), source, where))
        values = {n: r.get(n) for n in ("fx", "fy", "cx", "cy", *_DISTORTION_NAMES)}
        cam = _make_camera(r.get("model") or "PINHOLE", r["width"], r["height"], values, source, where)
        names.append(str(name))
        idx.append(table.add(cam))
    if not names:
        raise ValueError(f"{source}: no images listed")
    scene = Scene(names=names, c2w=np.array(c2ws), cameras=table.cameras, camera_idx=np.array(idx),
                  image_dir=str(image_dir) if image_dir is not None else None)
    return validate_scene(scene, source, check_images=check_images)


def read_poses_json(path, *, image_dir=None, check_images: bool = True) -> Scene:
    """The plain JSON poses format (module docstring) -> Scene."""
    path = Path(path)
    d = _read_json(path)
    frames = d.get("frames")
    if not isinstance(frames, list):
        raise ValueError(f"{path}: expected a 'frames' list (see nerflib.scene_io's docstring for the format)")
    defaults = {k: v for k, v in d.items() if k not in ("frames", "image_dir")}
    if image_dir is None:
        image_dir = path.parent / d["image_dir"] if d.get("image_dir") else path.parent
    records = [{**defaults, **f} if isinstance(f, dict) else {} for f in frames]
    return _scene_from_records(records, source=str(path), image_dir=image_dir, check_images=check_images)


def _csv_matrix(row: dict, source: str, where: str):
    keys3 = [f"m{i}{j}" for i in range(3) for j in range(4)]
    keys4 = [f"m3{j}" for j in range(4)]
    missing = [k for k in keys3 if row.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{source}: {where}: matrix columns {_listing(missing)} are missing or empty; "
                         "give m00..m23 (3x4, row-major), optionally m30..m33")
    extra = [row.get(k) not in (None, "") for k in keys4]
    if any(extra) and not all(extra):
        raise ValueError(f"{source}: {where}: give all of m30..m33 or none (the matrix must be 3x4 or 4x4)")
    keys = keys3 + (keys4 if all(extra) else [])
    try:
        vals = [float(row[k]) for k in keys]
    except ValueError as e:
        raise ValueError(
            f"{source}: {where}: a matrix entry is not a number ({e}); write each m.. cell as a plain decimal number"
        ) from e
    return np.array(vals).reshape(-1, 4)


def read_poses_csv(path, *, image_dir=None, check_images: bool = True) -> Scene:
    """The plain CSV poses format (module docstring) -> Scene; image_dir defaults to the file's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read poses file {path}: {e}") from e
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    records = []
    for j, row in enumerate(reader):
        where = f"row {j + 1} ({row.get('name')!r})"
        if None in row:
            raise ValueError(f"{path}: {where}: more cells than header columns")
        r = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        r = {k: v for k, v in r.items() if v not in ("", None)}
        r["matrix"] = _csv_matrix(r, str(path), where)
        r["_where"] = where
        records.append(r)
    return _scene_from_records(records, source=str(path), image_dir=image_dir if image_dir is not None else path.parent,
                               check_images=check_images)


def write_poses_json(scene: Scene, path, *, convention: str = "opencv", pose_type: str = "c2w",
                     homogeneous: bool = False) -> None:
    """The plain JSON poses format; convention/pose_type at the top level, intrinsics per frame."""
    path = Path(path)
    frames = []
    for i, name in enumerate(scene.names):
        m = _c2w_to_pose(scene.c2w[i], convention, pose_type, homogeneous)
        frames.append({"name": name, "matrix": m.tolist(), **_camera_values(scene.camera_of(i))})
    d: dict = {"convention": convention, "pose_type": pose_type}
    if scene.image_dir is not None:
        d["image_dir"] = os.path.relpath(Path(scene.image_dir).resolve(), path.parent.resolve())
    d["frames"] = frames
    fileio.write_json(path, d)


def write_poses_csv(scene: Scene, path, *, convention: str = "opencv", pose_type: str = "c2w") -> None:
    """The plain CSV poses format (3x4 matrices; floats written exactly with repr)."""
    models = {c.model for c in scene.cameras}
    dist = [n for n in _DISTORTION_NAMES if any(n in CAMERA_MODELS[m] for m in models)]
    header = ["name", "convention", "pose_type", *(f"m{i}{j}" for i in range(3) for j in range(4)),
              *_INTRINSIC_NAMES, "model", *dist]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for i, name in enumerate(scene.names):
        m = _c2w_to_pose(scene.c2w[i], convention, pose_type, homogeneous=False)
        v = _camera_values(scene.camera_of(i))
        w.writerow([name, convention, pose_type, *(repr(float(x)) for x in m.ravel()),
                    *(repr(float(v[n])) if n not in ("width", "height") else v[n] for n in _INTRINSIC_NAMES),
                    v["model"], *(repr(float(v[n])) if n in v else "" for n in dist)])
    fileio.write_text(path, buf.getvalue())


# --------------------------------------------------------------------------
# Dispatcher


def detect_format(path) -> str:
    """The `fmt` that `load_poses(path, 'auto')` would use."""
    path = Path(path)
    if path.is_dir():
        if any((path / f"cameras{e}").is_file() for e in (".bin", ".txt")):
            return "colmap"
        if (path / "sparse" / "0").is_dir():
            return "colmap"
        if any(path.glob("transforms*.json")):
            return "blender"
        if (path / "poses_bounds.npy").is_file():
            return "llff"
        raise ValueError(f"{path}: cannot tell the poses format of this folder; pass fmt= one of {', '.join(FORMATS)}")
    if path.name.startswith(("cameras.", "images.", "points3D.")) and path.suffix in (".bin", ".txt"):
        return "colmap"
    if path.suffix == ".npy":
        return "llff"
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() == ".json":
        if path.name.startswith("transforms"):
            return "blender"
        d = _read_json(path)
        if d.get("convention") == "opencv_c2w" and "cameras" in d:
            return "scene"
        frames = d.get("frames")
        if isinstance(frames, list) and frames and isinstance(frames[0], dict) and "transform_matrix" in frames[0]:
            return "blender"
        return "json"
    raise ValueError(f"{path}: cannot tell the poses format from the name; pass fmt= one of {', '.join(FORMATS)}")


def load_poses(path, fmt: str = "auto", *, image_dir=None, check_images: bool = True) -> Scene:
    """Read poses in any supported format (`fmt` in FORMATS; 'auto' guesses from the path).

    image_dir overrides where the images are looked for (colmap, llff, json,
    csv, scene); blender image paths are always relative to the json.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown poses format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ValueError(
            f"poses file or folder {path} does not exist; check the path (relative paths start from the "
            "working directory), or leave the sheet's `poses` cell empty to run SfM instead"
        )
    if fmt == "auto":
        fmt = detect_format(path)
    kw = {"check_images": check_images}
    if fmt == "colmap":
        if path.is_file():
            path = path.parent
        elif not any((path / f"cameras{e}").is_file() for e in (".bin", ".txt")) and (path / "sparse" / "0").is_dir():
            path = path / "sparse" / "0"
        return read_colmap(path, image_dir=image_dir, **kw)
    if fmt == "blender":
        return read_blender(path, **kw)
    if fmt == "llff":
        return read_llff(path / "poses_bounds.npy" if path.is_dir() else path, image_dir, **kw)
    if fmt == "json":
        return read_poses_json(path, image_dir=image_dir, **kw)
    if fmt == "csv":
        return read_poses_csv(path, image_dir=image_dir, **kw)
    scene = read_scene_json(path)
    if image_dir is not None:
        scene.image_dir = str(image_dir)
    return validate_scene(scene, str(path), **kw)


# --------------------------------------------------------------------------
# Normalization


def normalize_scene(scene: Scene, *, mode: str = "360") -> tuple[Scene, dict]:
    """Move, rotate and scale the world for training: x_new = s R (x - center).

    Camera axes stay OpenCV's; only the world frame changes.
    mode='360' (object-centric captures):
      center = `rigid.focus_point` (nearest to all optical axes);
      R      = the smallest rotation taking the mean camera up vector (the mean
               of -y camera axes) to world +z, so world +z is "up" (as in the
               Blender synthetic scenes);
      s      = 1 / max camera distance from the center: cameras lie in the unit
               ball (multinerf's transform_poses_pca scales max |t| to 1).
    mode='forward' (LLFF-style captures, rendered in NDC):
      center = mean camera centre; R = the transpose of the average camera
               rotation (mean forward axis, then the mean down axis made
               orthogonal), so the average camera sits at the origin looking
               along +z with y down (LLFF's recenter_poses, in OpenCV axes);
      s      = 1 / (0.75 near) as LLFF/multinerf do, so the near bound becomes
               1.33 (near from scene.near, else the 0.1 percentile of point depths).
    near/far and points are transformed with the scene. Returns (scene, transform)
    with transform = {'mode', 'scale', 'center' [3], 'rotation' [3, 3],
    'T' [4, 4] (x_new = T x), 'T_inv' [4, 4]}; `transform_poses(c2w, T_inv)`
    maps normalized poses back.
    """
    c2w = scene.c2w
    centres = c2w[:, :, 3]
    if mode == "360":
        center = rigid.focus_point(c2w)
        up = -c2w[:, :, 1].mean(0)
        if np.linalg.norm(up) < 1e-6:
            raise ValueError("the cameras' up vectors cancel out on average; cannot pick a world up direction")
        R = rigid.rotation_between(up / np.linalg.norm(up), np.array([0.0, 0.0, 1.0]))
        radius = np.linalg.norm(centres - center, axis=-1).max()
        if not radius > 0:
            raise ValueError("all cameras sit at the focus point; cannot scale the scene")
        s = 1.0 / radius
    elif mode == "forward":
        center = centres.mean(0)
        z = c2w[:, :, 2].mean(0)
        z /= np.linalg.norm(z)
        x = np.cross(c2w[:, :, 1].mean(0), z)
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z], axis=1).T  # rows: the average camera's axes
        near = scene.near
        if near is None and scene.points is not None and len(scene.points):
            depth = np.einsum("npi,ni->np", scene.points[None] - centres[:, None], c2w[:, :, 2])
            near = float(np.percentile(depth[depth > 0], 0.1)) if (depth > 0).any() else None
        if near is None or not near > 0:
            raise ValueError(
                "mode='forward' scales by the near bound: set scene.near (LLFF files carry it) or give points"
            )
        s = 1.0 / (0.75 * near)
    else:
        raise ValueError(f"mode must be '360' or 'forward', got {mode!r}")
    t = -s * R @ center
    T = rigid.similarity_matrix(s, R, t)
    out = Scene(
        names=list(scene.names),
        c2w=rigid.apply_similarity_to_poses(c2w, s, R, t),
        cameras=list(scene.cameras),
        camera_idx=scene.camera_idx.copy(),
        image_dir=scene.image_dir,
        points=None if scene.points is None else scene.points @ (s * R).T + t,
        near=None if scene.near is None else scene.near * s,
        far=None if scene.far is None else scene.far * s,
        forward_facing=mode == "forward",
        object_on_background=scene.object_on_background,
    )
    return out, {"mode": mode, "scale": float(s), "center": center, "rotation": R, "T": T, "T_inv": np.linalg.inv(T)}


def transform_poses(c2w, T) -> np.ndarray:
    """Poses [..., 3, 4] after the similarity T [4, 4] (e.g. a normalization's 'T' or 'T_inv')."""
    T = np.asarray(T, dtype=np.float64)
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    return rigid.apply_similarity_to_poses(np.asarray(c2w, dtype=np.float64), s, T[:3, :3] / s, T[:3, 3])
