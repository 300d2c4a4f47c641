"""Normalization of a scene into the frame training uses (360: cameras in the unit ball around
their focus point; forward-facing: LLFF's), and poses moved by such a transform.
"""

from __future__ import annotations

import numpy as np

from nerflib import rigid
from nerflib.types import Scene


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
