"""The demo scene's surfaces in closed form (nerflib/synthetic.py's objects, ground and dome), for tests
that check reconstructed geometry: `surface_distance`."""

from __future__ import annotations

import math

import numpy as np


def surface_distance(x: np.ndarray) -> np.ndarray:
    """Unsigned distance [N] of points x [N, 3] (the generator's world frame) to the nearest surface of the demo."""
    from nerflib import synthetic

    x = np.asarray(x, dtype=np.float64)
    dists = [np.abs(x[:, 2]), np.abs(np.linalg.norm(x, axis=1) - synthetic.DOME_RADIUS)]
    for obj in synthetic.OBJECTS:
        dists.append(object_distance(x, obj))
    return np.min(dists, axis=0)


def object_distance(x: np.ndarray, obj) -> np.ndarray:
    """Unsigned distance [N] of points x [N, 3] to the surface of one synthetic.SceneObject."""
    p = np.asarray(x, dtype=np.float64) - np.asarray(obj.center)
    if obj.kind == "sphere":
        return np.abs(np.linalg.norm(p, axis=1) - obj.size[0])
    if obj.kind == "box":
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        local = np.stack([c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1], p[:, 2]], axis=1)
        q = np.abs(local) - np.asarray(obj.size)
        return np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0))
    r, h = obj.size
    q = np.stack([np.hypot(p[:, 0], p[:, 1]) - r, np.abs(p[:, 2]) - h / 2], axis=1)
    return np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0))
