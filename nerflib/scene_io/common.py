"""Shared by every format: validation of a scene (`validate_scene`: names, orthonormal rotations,
cameras, images), the camera table (`CameraTable`: one Camera per distinct intrinsics),
`make_camera` from named intrinsics, and poses in any convention (`pose_to_c2w`,
`c2w_to_pose`). Conventions: the docstring of nerflib.scene_io.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nerflib.types import CAMERA_MODELS, Camera, Scene

# Rotations read from files must be orthonormal to this tolerance (float32
# files such as NeRF's transforms.json are good to ~1e-7).
ROTATION_TOL = 1e-4


DISTORTION_NAMES = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")


INTRINSIC_NAMES = ("fx", "fy", "cx", "cy", "width", "height")


_OPENGL_FLIP = np.diag([1.0, -1.0, -1.0])  # OpenCV <-> OpenGL camera axes (its own inverse)


_MAX_LISTED = 5


def read_json(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ValueError(f"poses file {path} does not exist") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(d).__name__}")
    return d


def listing(items) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def check_rotation(R: np.ndarray, source: str, where: str) -> None:
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
        check_rotation(scene.c2w[i, :, :3], source, f"image {name!r}")
    for k, cam in enumerate(scene.cameras):
        if not np.isfinite(cam.params).all():
            raise ValueError(f"{source}: camera {k} has non-finite parameters {cam.params}")
        if cam.param("fx") <= 0 or cam.param("fy") <= 0 or cam.width <= 0 or cam.height <= 0:
            raise ValueError(f"{source}: camera {k} needs positive focal lengths and image size, got {cam}")
    if len(set(scene.names)) != len(scene.names):
        dup = sorted({n for n in scene.names if scene.names.count(n) > 1})
        raise ValueError(
            f"{source}: image names appear more than once: {listing(dup)}; give one pose per image "
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
                f"{listing(missing)}; pass image_dir= pointing at the folder holding them, or fix the names"
            )
    return scene


class CameraTable:
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


def make_camera(model: str, width, height, values: dict, source: str, where: str) -> Camera:
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
    extra = [n for n in DISTORTION_NAMES if values.get(n, 0.0) != 0.0 and n not in names]
    if extra:
        raise ValueError(
            f"{source}: {where}: model {model} has no coefficient {', '.join(extra)}; pick a model that does"
        )
    return Camera(model, int(w), int(h), tuple(values.get(n, 0.0) for n in names))


def camera_values(camera: Camera) -> dict:
    """fx fy cx cy width height model + the model's distortion coefficients, by name."""
    d = {n: camera.param(n) for n in ("fx", "fy", "cx", "cy")}
    d.update(width=int(camera.width), height=int(camera.height), model=camera.model)
    d.update({n: camera.param(n) for n in DISTORTION_NAMES if n in CAMERA_MODELS[camera.model]})
    return d


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except OSError as e:
        raise ValueError(f"cannot read the size of image {path}: {e}") from e


def pose_to_c2w(m, convention: str, pose_type: str, source: str, where: str) -> np.ndarray:
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
    check_rotation(R, source, where)
    if pose_type == "w2c":
        R, t = R.T, -R.T @ t
    if convention == "opengl":
        R = R @ _OPENGL_FLIP
    return np.concatenate([R, t[:, None]], axis=1)


def c2w_to_pose(c2w: np.ndarray, convention: str, pose_type: str, homogeneous: bool) -> np.ndarray:
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
