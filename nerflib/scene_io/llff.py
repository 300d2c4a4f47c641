"""poses_bounds.npy (read_llff, write_llff): per image a 3x5 [R | t | (h, w, f)] with rotation
columns (down, right, backwards), plus near/far bounds; rows pair with the sorted image files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nerflib import fileio
from nerflib.scene_io.common import (
    CameraTable,
    check_rotation,
    image_size,
    listing,
    make_camera,
    validate_scene,
)
from nerflib.types import Scene


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
            f"{source}: rows {listing(bad)} (0-based) have non-finite values (nan/inf); fix or remove those rows "
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
    width, height = image_size(image_dir / names[0])
    table = CameraTable()
    idx, c2ws = [], []
    for i, p in enumerate(poses):
        h, w, f = p[:, 4]
        sx, sy = width / w, height / h
        if abs(sx / sy - 1.0) > 0.01:
            raise ValueError(
                f"{source}: row {i}: hwf says {w:g}x{h:g} but the images in {image_dir} are {width}x{height}, "
                "a different aspect ratio; point image_dir at the matching images"
            )
        cam = make_camera("PINHOLE", width, height, {"fx": f * sx, "fy": f * sy, "cx": width / 2, "cy": height / 2},
                           source, f"row {i}")
        idx.append(table.add(cam))
        # (down, right, backwards) columns -> OpenCV (right, down, forward).
        c2w = np.stack([p[:, 1], p[:, 0], -p[:, 2], p[:, 3]], axis=1)
        check_rotation(c2w[:, :3], source, f"row {i} ({names[i]})")
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
