"""Readers and writers of posed image sets; everything becomes a `types.Scene`.

Inside nerflib there is one convention (types.py): OpenCV camera axes (x right,
y down, z forward), camera-to-world `c2w` [N, 3, 4]. Every reader converts to
it and validates (`validate_scene`); every writer converts back. Errors are
ValueErrors that name the file and say how to fix it.

Formats (the `fmt` of `load_poses`):
  colmap   a sparse model folder (cameras/images/points3D, .bin or .txt), via pycolmap.
  (blender and llff live in scene_formats.py; load_poses reads every format)
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
SHEET_FORMATS = ("auto", "colmap", "blender", "llff", "json", "csv")  # the sheet's poses_format, nerf poses --poses-format
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
    if fmt in ("blender", "llff"):
        from nerflib import scene_formats  # imports this module's shared helpers

        if fmt == "blender":
            return scene_formats.read_blender(path, **kw)
        return scene_formats.read_llff(path / "poses_bounds.npy" if path.is_dir() else path, image_dir, **kw)
    if fmt == "json":
        return read_poses_json(path, image_dir=image_dir, **kw)
    if fmt == "csv":
        return read_poses_csv(path, image_dir=image_dir, **kw)
    scene = read_scene_json(path)
    if image_dir is not None:
        scene.image_dir = str(image_dir)
    return validate_scene(scene, str(path), **kw)


def load_poses_for_photos(path, fmt: str, images) -> Scene:
    """`load_poses` for the photos in folder `images`: every image the file names must be a photo
    of that folder (no `../` or absolute names reaching outside it; none missing)."""
    images = Path(images)
    scene = load_poses(path, fmt, image_dir=images)
    root = images.resolve()
    outside = [n for n in scene.names if not (images / n).resolve().is_relative_to(root)]
    if outside:
        raise ValueError(
            f"{path}: {len(outside)} image(s) named in the poses file lie outside the photo folder {images} "
            f"(e.g. {', '.join(outside[:3])}); name the photos relative to that folder, or point the row's "
            "`source` at the folder that holds them"
        )
    return scene  # load_poses has checked that every image it names is there


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
