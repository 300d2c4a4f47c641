"""Camera refinement: learned per-image pose corrections (nerfstudio's SO3xR3 optimiser, CamP's preconditioning).

Short names and shapes:
  delta      [..., 6]     a pose correction: axis-angle of a rotation R_d (3), a translation t_d (3);
                          the camera c2w = [R | t] becomes [R_d R | t + t_d] (rotation about its centre).
  theta      [..., 6]     the learned parameters; delta = P theta * cfg.pose_refine_scale.
  precond P  [..., 6, 6]  per camera, from `pose_preconditioner` (set once, never trained).

`nerflib.models.NerfModel` applies the corrections to training rays (`apply_pose_delta`);
`nerflib.train` sets the preconditioners, adds `pose_regularizer` to the loss and writes the
refined poses (`write_refined_poses`, model/refined_poses.json).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nerflib import fileio, rigid
from nerflib.model_config import ModelConfig

REFINED_POSES = "refined_poses.json"  # beside the checkpoints, with cfg.model.refine_poses


def apply_pose_delta(delta, origins, directions, viewdirs):
    """Rays of the cameras c2w -> [R_d R | t + t_d], delta [..., 6] = (axis-angle of R_d, t_d).

    Rotating about the camera centre turns a ray (o, d) into (o + t_d, R_d d).
    """
    R = rigid.exp_so3(delta[..., :3])
    turn = lambda v: jnp.einsum("...ij,...j->...i", R, v)  # noqa: E731
    return origins + delta[..., 3:], turn(directions), turn(viewdirs)


def refine_rays(theta, precond, cam_idx, origins, directions, viewdirs, cfg: ModelConfig):
    """Rays of the refined cameras: theta [N, 6], precond [N, 6, 6], cam_idx [..., 1] -> (o, d, viewdirs)."""
    idx = jnp.asarray(cam_idx, jnp.int32)[..., 0]
    return apply_pose_delta(pose_delta_of(theta[idx], precond[idx], cfg), origins, directions, viewdirs)


def pose_delta_of(theta, precond, cfg: ModelConfig):
    """Pose deltas [..., 6] from the parameters theta [..., 6] and preconditioners [..., 6, 6]."""
    return jnp.einsum("...ij,...j->...i", precond, theta) * cfg.pose_refine_scale


def pose_deltas(params, cfg: ModelConfig):
    """The learned per-image pose deltas [num_images, 6] (axis-angle, translation), or None."""
    if not cfg.refine_poses or "pose_delta" not in params:
        return None
    return pose_delta_of(params["pose_delta"], params["pose_precondition"], cfg)


def pose_preconditioner(c2w, *, num_points: int = 256, seed: int = 0, damping: float = 1e-4):
    """Per-camera preconditioners P [N, 6, 6] of the pose deltas (CamP, Park et al. 2023).

    A rotation about an axis across the view and a sideways translation move the image of
    a scene at a distance almost alike: in the raw deltas the loss is a long narrow valley
    that Adam crawls along. With delta = P theta, P = (J^T J + damping tr/6)^(-1/2), where J
    [num_points * 2, 6] is the Jacobian of the normalized image coordinates (x/z, y/z) of
    points in front of the camera with respect to the delta, a unit step of theta in any
    direction moves the points' images by about one unit RMS: the valley becomes round.
    The points lie along random directions within 45 degrees of the optical axis, at
    depths 0.5-1.5 times the camera's distance to the origin (the scene's centre after
    normalization). c2w: [N, 3, 4] float (camera frame: x right, y down, z forward).
    """
    c2w = np.asarray(c2w, np.float64)
    rng = np.random.default_rng(seed)
    n = len(c2w)
    xy = rng.uniform(-1.0, 1.0, size=(n, num_points, 2))
    depth = np.linalg.norm(c2w[:, :, 3], axis=-1)[:, None] * rng.uniform(0.5, 1.5, size=(n, num_points))
    depth = np.maximum(depth, 1e-3)
    cam_pts = np.concatenate([xy, np.ones((n, num_points, 1))], -1) * depth[..., None]
    world = np.einsum("nij,nkj->nki", c2w[:, :, :3], cam_pts) + c2w[:, None, :, 3]

    def project(delta, R, t, X):  # the points' normalized coordinates in the camera c2w + delta
        Rn = rigid.exp_so3(delta[:3]) @ R
        p = (X - t - delta[3:]) @ Rn  # rows: R_n^T (X - t')
        return (p[:, :2] / p[:, 2:]).reshape(-1)

    jac = jax.vmap(jax.jacfwd(project), in_axes=(None, 0, 0, 0))(
        jnp.zeros(6, jnp.float32), jnp.asarray(c2w[:, :, :3], jnp.float32), jnp.asarray(c2w[:, :, 3], jnp.float32),
        jnp.asarray(world, jnp.float32))
    jac = np.asarray(jac, np.float64) / np.sqrt(num_points)  # [N, 2K, 6]; J^T J = mean over points
    m = np.einsum("nki,nkj->nij", jac, jac)
    m += damping * np.trace(m, axis1=1, axis2=2)[:, None, None] / 6 * np.eye(6)
    w, v = np.linalg.eigh(m)
    return np.einsum("nij,nj,nkj->nik", v, 1.0 / np.sqrt(np.maximum(w, 1e-30)), v).astype(np.float32)


def refined_c2w(c2w, delta):
    """c2w [N, 3, 4] corrected by delta [N, 6] as in apply_pose_delta (numpy float64)."""
    c2w = np.asarray(c2w, np.float64)
    R_d = rigid.exp_so3(np.asarray(delta, np.float64)[:, :3])
    out = c2w.copy()
    out[:, :, :3] = R_d @ c2w[:, :, :3]
    out[:, :, 3] = c2w[:, :, 3] + np.asarray(delta, np.float64)[:, 3:]
    return out


def pose_regularizer(params, cfg: ModelConfig):
    """pose_reg_rot * mean |rotation| + pose_reg_trans * mean |translation| of the deltas (0 when off)."""
    delta = pose_deltas(params, cfg)
    if delta is None:
        return jnp.float32(0.0)
    # sqrt(x + eps): a finite gradient at the all-zero start.
    norm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=-1) + 1e-12)  # noqa: E731
    return cfg.pose_reg_rot * jnp.mean(norm(delta[:, :3])) + cfg.pose_reg_trans * jnp.mean(norm(delta[:, 3:]))


def write_refined_poses(path: Path, dataset, delta: np.ndarray, *, main: bool = True) -> dict:
    """The training images' poses after camera refinement, as JSON at `path` (process 0 writes).

    dataset: the training split (nerflib.datasets.Dataset) the deltas [N, 6] belong to.

    Per image: its name, the learned rotation (degrees) and translation (world units of the
    scene as given, i.e. before normalization), and the refined camera-to-world matrix in the
    scene's own frame; 'summary' holds the median and largest corrections.
    """
    from nerflib import scene_io

    c2w = refined_c2w(dataset.c2w, delta)
    norm = dataset.normalization
    scale = 1.0
    if norm is not None:  # back to the frame of the input poses
        c2w = scene_io.transform_poses(c2w, norm["T_inv"])
        scale = 1.0 / float(norm["scale"])
    rot_deg = np.degrees(np.linalg.norm(delta[:, :3], axis=-1))
    trans = np.linalg.norm(delta[:, 3:], axis=-1) * scale
    out = {
        "frame": "input" if norm is not None else "training",
        "summary": {
            "images": len(dataset.names),
            "median_rotation_deg": float(np.median(rot_deg)),
            "max_rotation_deg": float(np.max(rot_deg)),
            "median_translation": float(np.median(trans)),
            "max_translation": float(np.max(trans)),
        },
        "images": [
            {"name": name, "rotation_deg": float(r), "translation": float(t), "c2w": np.round(m, 9).tolist()}
            for name, r, t, m in zip(dataset.names, rot_deg, trans, c2w)
        ],
    }
    if main:
        fileio.write_json(path, out)
    return out
