"""scene.json, our own exchange format (the docstring of nerflib.scene_io shows its layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nerflib import fileio
from nerflib.scene_io.common import read_json
from nerflib.types import Camera, Scene

SCENE_JSON_VERSION = 1


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
    d = read_json(path).get("normalization")
    if d is None:
        return None
    return {k: v if isinstance(v, str) else (np.asarray(v, dtype=np.float64) if isinstance(v, list) else float(v))
            for k, v in d.items()}
