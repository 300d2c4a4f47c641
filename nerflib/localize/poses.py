"""Pose updates and frames: the twist applied to a starting pose (iNeRF's exp map), perturbed
poses, and the normalized <-> original frame of a scene (scene_io.normalize_scene).
"""

from __future__ import annotations

import math

import numpy as np

from nerflib import rigid


def apply_twist(c2w0, twist, *, pivot: str = "world"):
    """Pose c2w0 [..., 3, 4] updated by twist [..., 6] -> [..., 3, 4] (jnp or numpy).

    pivot='camera': C exp(twist) C^-1 c2w0 with C the translation to c2w0's centre;
    pivot='world': exp(twist) c2w0 (iNeRF). Both give c2w0 at twist == 0.
    """
    if pivot not in ("camera", "world"):
        raise ValueError(f"pivot must be 'camera' or 'world', got {pivot!r}")
    xp = rigid._xp(c2w0, twist)
    c2w0 = xp.asarray(c2w0)
    T = rigid.exp_se3(twist)  # [..., 4, 4]
    R = T[..., :3, :3] @ c2w0[..., :3, :3]
    if pivot == "camera":
        centre = c2w0[..., :3, 3] + T[..., :3, 3]
    else:
        centre = xp.einsum("...ij,...j->...i", T[..., :3, :3], c2w0[..., :3, 3]) + T[..., :3, 3]
    return xp.concatenate([R, centre[..., None]], axis=-1)


def perturb_pose(c2w, rng: np.random.Generator, *, rot_deg: float, trans: float,
                 pivot: str = "camera") -> np.ndarray:
    """c2w [3, 4] turned by exactly rot_deg about a random axis, then moved by `trans`.

    pivot='camera' turns the camera about its own centre (the view swings away
    from what it saw) and moves the centre by exactly `trans`; pivot='world'
    turns the whole pose about the world origin, as iNeRF's benchmark does
    (rotation @ pose: an object at the origin stays where it was in the image),
    which moves the centre along its orbit, then adds a step of length `trans`.
    """
    if pivot not in ("camera", "world"):
        raise ValueError(f"pivot must be 'camera' or 'world', got {pivot!r}")
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    step = rng.normal(size=3)
    step /= np.linalg.norm(step)
    c2w = np.asarray(c2w, np.float64)
    if pivot == "world":
        moved = apply_twist(c2w, np.concatenate([axis * math.radians(rot_deg), np.zeros(3)]), pivot="world")
        moved[:3, 3] += step * trans
        return moved
    twist = np.concatenate([axis * math.radians(rot_deg), step * trans])
    # pivot='camera' with V(omega) v: rescale v so that the centre moves by exactly `trans`.
    T = rigid.exp_se3(twist)
    twist[3:] *= trans / max(np.linalg.norm(T[:3, 3]), 1e-12) if trans > 0 else 0.0
    return apply_twist(c2w, twist, pivot="camera")


def to_normalized(c2w, normalization: dict | None) -> np.ndarray:
    """Poses [..., 3, 4] of the scene's original frame -> the field's normalized frame."""
    if normalization is None:
        return np.asarray(c2w, np.float64)
    from nerflib import scene_io

    return scene_io.transform_poses(c2w, normalization["T"])


def to_original(c2w, normalization: dict | None) -> np.ndarray:
    """Poses [..., 3, 4] of the normalized frame -> the scene's original frame."""
    if normalization is None:
        return np.asarray(c2w, np.float64)
    from nerflib import scene_io

    return scene_io.transform_poses(c2w, normalization["T_inv"])
