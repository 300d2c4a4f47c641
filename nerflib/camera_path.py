"""Camera path files: our own JSON, and nerfstudio's camera_path.json, read and written.

Poses in both are in the scene's original frame: that of poses/scene.json, of the COLMAP
model (results/{scene}/sparse/0) and of the exported transforms.json (nerflib.export);
`nerf render --path FILE` and the sheet's `render_path` map them into the model's frame.

Our format (`write_path`; `read_path` also takes the same keys with defaults):

    {
      "format": "nerflib-camera-path", "version": 1,
      "convention": "opencv",          camera axes of c2w: opencv (x right, y down, z forward;
                                       default) or opengl (x right, y up, z backward)
      "fps": 30,                       frames per second of the video
      "width": 640, "height": 480,     optional: the frame size (default: the training camera
                                       at the render factor)
      "keyframes": [                   two or more, times strictly increasing
        {"c2w": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz]] (3x4 or 4x4,
                 camera-to-world),
         "fov": 50.0,                  optional: vertical field of view in degrees (default: the
                                       training camera's focal length)
         "time": 0.0},                 seconds from the start
        ...]
    }

Frames are taken at t = time_0 + n / fps up to the last keyframe's time, on the spline of
`paths.keyframe_path` (Catmull-Rom centres, squad rotations, fov linear in time): the path
passes through every keyframe pose, at its time.

nerfstudio's camera_path.json (what `ns-render camera-path` reads; `read_nerfstudio_path`,
`write_nerfstudio_path`): "camera_path" lists every frame, "camera_to_world" a row-major 4x4
(or 3x4) in OpenGL camera axes, "fov" the vertical field of view in degrees, with
"render_width", "render_height", "fps", "seconds"; the viewer's "keyframes" ("matrix": a JSON
string of the column-major 4x4) are written too, so nerfstudio's viewer can load the path.
A path saved by nerfstudio's viewer for a nerfstudio model is in that model's frame (after its
dataparser's orientation, centring and scale): pass its dataparser_transforms.json to map it
back (`dataparser_transforms=`); a path made for our exported transforms.json loaded with
orientation and centring off and no auto-scale (`--orientation-method none
--center-method none --auto-scale-poses False`) needs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from nerflib import fileio, paths
from nerflib.types import Camera

FORMAT = "nerflib-camera-path"
VERSION = 1
_OPENGL_FLIP = np.diag([1.0, -1.0, -1.0])  # OpenCV <-> OpenGL camera axes (its own inverse)


@dataclasses.dataclass
class CameraPath:
    """Every frame of a path: c2w [n, 3, 4] (OpenCV axes, the scene's original frame), fov [n]
    (vertical, degrees) or None (the training camera's), fps, width/height or None (the training
    camera's), and the keyframes it came from (c2w [K, 3, 4], fov [K] or None, times [K]) if known."""

    c2w: np.ndarray
    fov: np.ndarray | None
    fps: float
    width: int | None = None
    height: int | None = None
    key_c2w: np.ndarray | None = None
    key_fov: np.ndarray | None = None
    key_times: np.ndarray | None = None


def is_path_file(value) -> bool:
    """True for a path file name (a .json): what `render_path` treats as a file, not a path kind."""
    return isinstance(value, (str, os.PathLike)) and str(value).lower().endswith(".json")


def _pose(m, convention: str, where: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.size in (12, 16) and m.ndim == 1:
        m = m.reshape(-1, 4)
    if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
        raise ValueError(f"{where}: a pose must be a finite 3x4 or 4x4 matrix, got shape {m.shape}")
    c2w = m[:3].copy()
    r = c2w[:, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise ValueError(f"{where}: the rotation part of the pose is not a rotation (det {np.linalg.det(r):.4g})")
    if convention == "opengl":
        c2w[:, :3] = c2w[:, :3] @ _OPENGL_FLIP
    elif convention != "opencv":
        raise ValueError(f"{where}: convention must be 'opencv' or 'opengl', got {convention!r}")
    return c2w


def fov_of(focal: float, size: int) -> float:
    """Field of view in degrees of a focal length (pixels) over `size` pixels."""
    return math.degrees(2.0 * math.atan(0.5 * size / focal))


def focal_of(fov_deg: float, size: int) -> float:
    """Focal length in pixels that sees `fov_deg` degrees over `size` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


# --------------------------------------------------------------------------- ours


def read_path(path, *, dataparser_transforms=None) -> CameraPath:
    """A path file, ours or nerfstudio's (told apart by its keys) -> CameraPath (every frame)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the camera path file: {e}") from e
    if isinstance(d, dict) and "camera_path" in d:
        return read_nerfstudio_path(path, dataparser_transforms=dataparser_transforms)
    if not isinstance(d, dict) or not isinstance(d.get("keyframes"), list):
        raise ValueError(f"{path}: not a camera path: expected our format ('keyframes': [{{'c2w', 'fov', 'time'}}]) "
                         "or nerfstudio's camera_path.json ('camera_path': [...])")
    if d.get("format", FORMAT) != FORMAT or int(d.get("version", VERSION)) > VERSION:
        raise ValueError(f"{path}: format {d.get('format')!r} version {d.get('version')!r}; this nerflib reads "
                         f"{FORMAT!r} up to version {VERSION}")
    convention = d.get("convention", "opencv")
    keys = d["keyframes"]
    if len(keys) < 2:
        raise ValueError(f"{path}: a path needs at least 2 keyframes, got {len(keys)}")
    c2w, times, fovs = [], [], []
    for i, k in enumerate(keys):
        where = f"{path}: keyframe {i}"
        if not isinstance(k, dict) or "c2w" not in k or "time" not in k:
            raise ValueError(f"{where}: every keyframe needs 'c2w' and 'time' (and optionally 'fov')")
        c2w.append(_pose(k["c2w"], convention, where))
        times.append(float(k["time"]))
        fovs.append(k.get("fov"))
    if any(f is None for f in fovs) and not all(f is None for f in fovs):
        raise ValueError(f"{path}: give 'fov' for every keyframe or for none")
    key_fov = None if fovs[0] is None else np.asarray(fovs, dtype=np.float64)
    fps = float(d.get("fps", 30))
    try:
        frames, fov, _ = paths.keyframe_path(np.stack(c2w), times, fps=fps, fov=key_fov)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    width, height = d.get("width"), d.get("height")
    if (width is None) != (height is None) or (width is not None and not (int(width) > 0 and int(height) > 0)):
        raise ValueError(f"{path}: give both 'width' and 'height' (positive) or neither, got {width!r}, {height!r}")
    return CameraPath(c2w=frames, fov=fov, fps=fps, width=None if width is None else int(width),
                      height=None if height is None else int(height), key_c2w=np.stack(c2w), key_fov=key_fov,
                      key_times=np.asarray(times))


def write_path(path, c2w, times, *, fps: float, fov=None, width: int | None = None, height: int | None = None) -> None:
    """Our path file from keyframes c2w [K, 3, 4] (OpenCV, the scene's frame) at times [K] (s), fov [K] or None."""
    c2w = np.asarray(c2w, dtype=np.float64)
    paths.keyframe_path(c2w, times, fps=fps, fov=fov)  # the same checks as reading it back
    keys = []
    for i, pose in enumerate(c2w):
        k = {"c2w": pose[:3].tolist(), "time": float(times[i])}
        if fov is not None:
            k["fov"] = float(np.asarray(fov)[i])
        keys.append(k)
    d = {"format": FORMAT, "version": VERSION, "convention": "opencv", "fps": float(fps)}
    if width is not None:
        d.update(width=int(width), height=int(height))
    d["keyframes"] = keys
    fileio.write_json(path, d)


def render_frames(path_file, normalization: dict | None, base: Camera):
    """A path file -> (c2w [n, 3, 4] in a model's training frame, one PINHOLE camera per frame, fps).

    normalization: the training normalization (scene_io.normalize_scene's, None: none). Frame size:
    the file's, else `base`'s (the training camera at the render factor); focal length: from each
    frame's vertical field of view, else `base`'s vertical focal length scaled to the frame height.
    """
    from nerflib import scene_io

    cp = read_path(path_file)
    c2w = cp.c2w if normalization is None else scene_io.transform_poses(cp.c2w, normalization["T"])
    width, height = (cp.width, cp.height) if cp.width else (base.width, base.height)
    base_fy = base.param("fy") * height / base.height
    cameras = []
    for k in range(len(c2w)):
        fy = base_fy if cp.fov is None else focal_of(float(cp.fov[k]), height)
        cameras.append(Camera("PINHOLE", int(width), int(height), (fy, fy, width / 2, height / 2)))
    return np.asarray(c2w), cameras, cp.fps


# --------------------------------------------------------------------------- nerfstudio


def _dataparser_inverse(file):
    """nerfstudio's dataparser_transforms.json (x_ns = scale (R x + t)) -> a function mapping c2w [3, 4] back."""
    d = json.loads(Path(file).read_text())
    m = np.asarray(d["transform"], dtype=np.float64)[:3]
    s = float(d.get("scale", 1.0))
    rot, t = m[:, :3], m[:, 3]

    def back(c2w):
        return np.concatenate([rot.T @ c2w[:, :3], (rot.T @ (c2w[:, 3] / s - t))[:, None]], axis=1)

    return back


def read_nerfstudio_path(path, *, dataparser_transforms=None) -> CameraPath:
    """nerfstudio's camera_path.json -> CameraPath (its `camera_path` frames, as ns-render renders them)."""
    path = Path(path)
    d = json.loads(path.read_text())
    frames = d.get("camera_path")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: no 'camera_path' frames; is this nerfstudio's camera_path.json?")
    if d.get("camera_type", "perspective") != "perspective":
        raise ValueError(f"{path}: camera_type {d['camera_type']!r}: only perspective paths can be rendered")
    back = _dataparser_inverse(dataparser_transforms) if dataparser_transforms else None
    c2w, fov = [], []
    for i, f in enumerate(frames):
        pose = _pose(f["camera_to_world"], "opengl", f"{path}: camera_path[{i}]")
        c2w.append(back(pose) if back else pose)
        fov.append(float(f.get("fov", 50.0)))
    fps = float(d.get("fps", 24))
    w, h = d.get("render_width"), d.get("render_height")
    return CameraPath(c2w=np.stack(c2w), fov=np.asarray(fov), fps=fps, width=None if w is None else int(w),
                      height=None if h is None else int(h))


def write_nerfstudio_path(path, camera_path: CameraPath, *, width: int, height: int) -> None:
    """nerfstudio's camera_path.json of every frame (and the keyframes, when known), OpenGL axes."""
    def gl(c2w):
        m = np.eye(4)
        m[:3, :3] = c2w[:, :3] @ _OPENGL_FLIP
        m[:3, 3] = c2w[:, 3]
        return m

    if camera_path.fov is None:
        raise ValueError("nerfstudio's camera_path.json needs a field of view per frame")
    aspect = width / height
    d = {
        "camera_type": "perspective", "render_width": int(width), "render_height": int(height),
        "fps": float(camera_path.fps), "seconds": (len(camera_path.c2w) - 1) / float(camera_path.fps),
        "smoothness_value": 0.5, "is_cycle": False, "crop": None,
        "camera_path": [{"camera_to_world": gl(c).reshape(-1).tolist(), "fov": float(f), "aspect": aspect}
                        for c, f in zip(camera_path.c2w, camera_path.fov)],
    }
    if camera_path.key_c2w is not None:
        key_fov = camera_path.key_fov if camera_path.key_fov is not None else np.interp(
            camera_path.key_times, camera_path.key_times[0] + np.arange(len(camera_path.fov)) / camera_path.fps,
            camera_path.fov)
        d["keyframes"] = [
            {"matrix": json.dumps(gl(c).T.reshape(-1).tolist()), "fov": float(f), "aspect": aspect,
             "properties": json.dumps([["FOV", float(f)], ["NAME", f"Camera {i}"], ["TIME", float(t)]])}
            for i, (c, f, t) in enumerate(zip(camera_path.key_c2w, key_fov, camera_path.key_times))]
    fileio.write_json(path, d)
