"""COLMAP sparse models (cameras/images/points3D, binary or text) through pycolmap.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from nerflib import fileio
from nerflib.scene_io.common import CameraTable, c2w_to_pose, validate_scene
from nerflib.types import CAMERA_MODELS, Camera, Scene

_COLMAP_FILES = ("cameras", "images", "points3D", "rigs", "frames")


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
    table = CameraTable()
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
        w2c = c2w_to_pose(c2w, "opencv", "w2c", homogeneous=False)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c))
    if scene.points is not None:
        for p in np.asarray(scene.points, dtype=np.float64).reshape(-1, 3):
            rec.add_point3D(p, pycolmap.Track())
    _write_colmap_files(rec, Path(sparse_dir), text)
