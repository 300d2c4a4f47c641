"""The plain poses format (nerflib.scene_io docstring), as JSON or as a CSV table.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from nerflib import fileio
from nerflib.scene_io.common import (
    DISTORTION_NAMES,
    INTRINSIC_NAMES,
    CameraTable,
    c2w_to_pose,
    camera_values,
    listing,
    make_camera,
    pose_to_c2w,
    read_json,
    validate_scene,
)
from nerflib.types import CAMERA_MODELS, Scene


def _scene_from_records(records, *, source: str, image_dir, check_images: bool) -> Scene:
    table = CameraTable()
    names, c2ws, idx = [], [], []
    for j, r in enumerate(records):
        name = r.get("name")
        if not name:
            raise ValueError(f"{source}: record {j} has no 'name'")
        where = r.get("_where") or f"image {name!r}"  # csv records name their row
        for key in ("convention", "pose_type", "matrix", *INTRINSIC_NAMES):
            if r.get(key) is None:
                raise ValueError(
                    f"{source}: {where}: '{key}' is missing (see nerflib.scene_io's docstring for the format)"
                )
        c2ws.append(pose_to_c2w(r["matrix"], str(r["convention"]).lower(), str(r["pose_type"]).lower(), source, where))
        values = {n: r.get(n) for n in ("fx", "fy", "cx", "cy", *DISTORTION_NAMES)}
        cam = make_camera(r.get("model") or "PINHOLE", r["width"], r["height"], values, source, where)
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
    d = read_json(path)
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
        raise ValueError(f"{source}: {where}: matrix columns {listing(missing)} are missing or empty; "
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
        m = c2w_to_pose(scene.c2w[i], convention, pose_type, homogeneous)
        frames.append({"name": name, "matrix": m.tolist(), **camera_values(scene.camera_of(i))})
    d: dict = {"convention": convention, "pose_type": pose_type}
    if scene.image_dir is not None:
        d["image_dir"] = os.path.relpath(Path(scene.image_dir).resolve(), path.parent.resolve())
    d["frames"] = frames
    fileio.write_json(path, d)


def write_poses_csv(scene: Scene, path, *, convention: str = "opencv", pose_type: str = "c2w") -> None:
    """The plain CSV poses format (3x4 matrices; floats written exactly with repr)."""
    models = {c.model for c in scene.cameras}
    dist = [n for n in DISTORTION_NAMES if any(n in CAMERA_MODELS[m] for m in models)]
    header = ["name", "convention", "pose_type", *(f"m{i}{j}" for i in range(3) for j in range(4)),
              *INTRINSIC_NAMES, "model", *dist]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for i, name in enumerate(scene.names):
        m = c2w_to_pose(scene.c2w[i], convention, pose_type, homogeneous=False)
        v = camera_values(scene.camera_of(i))
        w.writerow([name, convention, pose_type, *(repr(float(x)) for x in m.ravel()),
                    *(repr(float(v[n])) if n not in ("width", "height") else v[n] for n in INTRINSIC_NAMES),
                    v["model"], *(repr(float(v[n])) if n in v else "" for n in dist)])
    fileio.write_text(path, buf.getvalue())
