"""transforms*.json of NeRF synthetic, instant-ngp and nerfstudio (read_blender, write_blender):
c2w 4x4 with OpenGL axes; `camera_angle_x` or fl_x/fl_y/cx/cy/w/h and distortion /
`camera_model` / `is_fisheye`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from nerflib import fileio
from nerflib.scene_io.common import (
    DISTORTION_NAMES,
    CameraTable,
    c2w_to_pose,
    image_size,
    listing,
    make_camera,
    pose_to_c2w,
    read_json,
    validate_scene,
)
from nerflib.types import CAMERA_MODELS, Camera, Scene

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
            raise ValueError(f"{path}: no transforms_{missing[0]}.json here (found {listing(sorted(files))})")
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
        w, h = image_size(image_path)
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
    dist = {n: float(d[n]) for n in DISTORTION_NAMES if n in d}
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
    return make_camera(model, w, h, {**values, **dist}, source, where)


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
    table = CameraTable()
    full, c2ws, idx = [], [], []
    for jp in paths:
        d = read_json(jp)
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
                                             *DISTORTION_NAMES))
            if per_frame:
                cam = _blender_camera({**shared, **f}, img, source, where)
            else:
                if shared_camera is None:
                    shared_camera = _blender_camera(shared, img, source, where)
                cam = shared_camera
            full.append(img)
            c2ws.append(pose_to_c2w(f["transform_matrix"], "opengl", "c2w", source, where))
            idx.append(table.add(cam))
    root = Path(os.path.commonpath([p.parent for p in full]))
    names = [p.relative_to(root).as_posix() for p in full]
    scene = Scene(names=names, c2w=np.array(c2ws), cameras=table.cameras, camera_idx=np.array(idx), image_dir=str(root),
                  object_on_background=_has_alpha(full[0]))
    return validate_scene(scene, listing(str(p) for p in paths), check_images=check_images)


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
    d.update({n: camera.param(n) for n in DISTORTION_NAMES if n in CAMERA_MODELS[camera.model]})
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
        f["transform_matrix"] = c2w_to_pose(c2w, "opengl", "c2w", homogeneous=True).tolist()
        frames.append(f)
    d["frames"] = frames
    fileio.write_json(path, d)
