"""Initial guesses of the query poses: absolute pose registration against the scene's
COLMAP model (`register_with_colmap`) and the training view most like the photo
(`nearest_view`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nerflib.sift import SIFT_UPSAMPLE_MAX_SIZE
from nerflib.types import Camera


def _thumbnail(image: np.ndarray, size=(32, 24)) -> np.ndarray:
    """Zero-mean, unit-norm grey thumbnail [size[1] * size[0]] (float64) for retrieval."""
    import cv2

    gray = np.asarray(image, np.float32).mean(-1)
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    small -= small.mean()
    return small / max(np.linalg.norm(small), 1e-12)


def nearest_view(image: np.ndarray, references: Sequence[np.ndarray]) -> tuple[int, float]:
    """(index, correlation) of the reference image [h, w, 3] most like `image` (grey thumbnail correlation)."""
    if not len(references):
        raise ValueError("nearest_view needs at least one reference image")
    t = _thumbnail(image)
    scores = np.array([float(t @ _thumbnail(r)) for r in references])
    best = int(np.argmax(scores))
    return best, float(scores[best])


def _pycolmap_camera(camera: Camera):
    import pycolmap

    return pycolmap.Camera(model=camera.model, width=int(camera.width), height=int(camera.height),
                           params=list(camera.params))


def _sift(image: np.ndarray, max_num_features: int = 8192):
    """(keypoints [M, 2] xy (COLMAP pixel convention), descriptors [M, 128] float32 unit rows) by pycolmap SIFT.

    Grey = Rec. 709 luma of the 8-bit RGB photo: with it the keypoints and
    descriptors equal those COLMAP's own extraction stored in its database
    (checked on the demo scene: 200 of 200 keypoints, cosine 1.0).
    """
    import warnings

    import pycolmap

    gray = np.asarray(image, np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    gray = np.ascontiguousarray(np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8))
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_num_features)
    opts.sift.first_octave = -1 if max(gray.shape) <= SIFT_UPSAMPLE_MAX_SIZE else 0  # as nerflib.sift chooses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycolmap.Sift: the array API that is documented
        sift = pycolmap.Sift(opts, device=pycolmap.Device.cpu)
    kp, desc = sift.extract(gray)
    desc = np.asarray(desc, np.float32)
    return np.asarray(kp)[:, :2], desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def _reference_bank(rec, database, image_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors [M, 128] unit rows, points3D [M, 3], point ids [M]): one row per observation of a 3D point.

    Descriptors come from the SfM database (its keypoint order is the
    reconstruction's points2D order); without one, SIFT is run again on the
    images in image_dir and each observation takes the descriptor of the
    keypoint within 1.5 px.
    """
    import contextlib

    import pycolmap

    descs, xyz, ids = [], [], []
    db = pycolmap.Database.open(str(database)) if database is not None else None
    with contextlib.ExitStack() as stack:
        if db is not None:
            stack.callback(db.close)
        for image in rec.images.values():
            pts = [(i, p) for i, p in enumerate(image.points2D) if p.has_point3D()]
            if not pts:
                continue
            idx = np.array([i for i, _ in pts])
            pid = np.array([p.point3D_id for _, p in pts])
            p3d = np.array([rec.points3D[k].xyz for k in pid])
            if db is not None:
                try:
                    d = np.asarray(db.read_descriptors(db.read_image_with_name(image.name).image_id).data, np.float32)
                except Exception:
                    continue
                d = d[idx]
            else:
                if image_dir is None or not (Path(image_dir) / image.name).is_file():
                    continue
                from nerflib.images import load_image

                kp, dd = _sift(load_image(Path(image_dir) / image.name))
                xy = np.array([p.xy for _, p in pts])
                dist = np.linalg.norm(xy[:, None, :] - kp[None, :, :], axis=-1)
                near = dist.argmin(1)
                ok = dist[np.arange(len(xy)), near] < 1.5
                d, p3d, pid = dd[near[ok]], p3d[ok], pid[ok]
            descs.append(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12))
            xyz.append(p3d)
            ids.append(pid)
    if not descs:
        return np.zeros((0, 128), np.float32), np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(descs).astype(np.float32), np.concatenate(xyz), np.concatenate(ids)


def register_with_colmap(query_images: dict[str, np.ndarray], sparse_dir, *, cameras: dict[str, Camera],
                         database=None, image_dir=None, ratio: float = 0.8, min_inliers: int = 20,
                         log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Absolute poses of query photos against a COLMAP model (original frame).

    query_images : name -> float [H, W, 3]; cameras: name -> Camera of that photo.
    sparse_dir   : the COLMAP model (with 3D points); database: its database.db
                   (descriptors), else image_dir to re-extract them.
    Matches query SIFT to the model's 3D-point observations (ratio test), then
    pycolmap.estimate_and_refine_absolute_pose (LO-RANSAC + refinement).
    Returns name -> {'c2w' [3, 4], 'num_inliers', 'num_matches'} for the photos
    registered with at least `min_inliers` inliers (others are left out).
    """
    import cv2
    import pycolmap

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rec = pycolmap.Reconstruction(str(sparse_dir))
    bank, xyz, ids = _reference_bank(rec, database, image_dir)
    if len(bank) < min_inliers:
        log(f"register_with_colmap: {sparse_dir} has {len(bank)} usable 3D-point descriptors: nothing to match")
        return {}
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    out = {}
    for name, image in query_images.items():
        kp, desc = _sift(image)
        if len(kp) < min_inliers:
            continue
        # Ratio test against the nearest descriptor of *another* 3D point: the bank holds
        # every observation, so the runner-up is often the same point seen from elsewhere.
        good = []
        for cand in matcher.knnMatch(desc, bank, k=8):
            rival = next((m for m in cand[1:] if ids[m.trainIdx] != ids[cand[0].trainIdx]), None) if cand else None
            if cand and (rival is None or cand[0].distance < ratio * rival.distance):
                good.append(cand[0])
        if len(good) < min_inliers:
            log(f"register_with_colmap: {name}: {len(good)} matches after the ratio test")
            continue
        pts2d = np.array([kp[m.queryIdx] for m in good], np.float64)
        pts3d = np.array([xyz[m.trainIdx] for m in good], np.float64)
        est = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, _pycolmap_camera(cameras[name]))
        n_in = int(est["num_inliers"]) if est else 0
        log(f"register_with_colmap: {name}: {len(good)} matches, {n_in} inliers")
        if est is None or n_in < min_inliers:
            continue
        w2c = np.asarray(est["cam_from_world"].matrix(), np.float64)
        R, t = w2c[:, :3], w2c[:, 3]
        out[name] = {"c2w": np.concatenate([R.T, (-R.T @ t)[:, None]], axis=1), "num_inliers": n_in,
                     "num_matches": len(good)}
    return out
