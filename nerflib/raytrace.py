"""Ray casting into the demo scene (synthetic_scene.py): ray-object intersection, shadows, shading.

Numpy only; rays are unit vectors, `t` the distance along them. `shade` gives
each ray its colour (textures from synthetic_textures.py, Lambertian under
`LIGHT_DIR` with cast shadows); `intersect` its nearest surface.
"""

from __future__ import annotations

import math

import numpy as np

from nerflib.synthetic_scene import (
    AMBIENT,
    DOME_RADIUS,
    GROUND_COARSE_TILE,
    GROUND_TILE,
    LIGHT_DIR,
    OBJECT_TILE,
    OBJECTS,
    SceneObject,
)
from nerflib.synthetic_textures import SceneTextures, bilinear, sample

_EPS = 1e-6  # minimum ray distance, so a ray does not hit the surface it starts on

# Surface ids in the id buffer: objects are 0..len(OBJECTS)-1, then these.
_GROUND = len(OBJECTS)
_DOME = _GROUND + 1
_MARKER0 = _DOME + 1


# --------------------------------------------------------------------------- geometry


# Ray arguments `o`, `d` are [M, 3], or [3] when all rays share it (the camera
# centre of primary rays, the light direction of shadow rays): numpy is much
# faster on a shared vector than on a broadcast [M, 3] view of it.


def _dot(a, b):
    """Row-wise dot product [M] of [M, 3] / [3] arguments."""
    if b.ndim == 1:
        return a @ b
    if a.ndim == 1:
        return b @ a
    return np.einsum("ij,ij->i", a, b)


def matmul_rows(v, m):
    """v @ m for row vectors v [M, 3] or [3] (numpy's matmul is slow on thin [M, 3])."""
    if v.ndim == 1:
        return v @ m
    return (m.T @ v.T).T


def _rows(x, idx):
    """x[idx] for per-ray arrays; a shared [3] vector stays as it is."""
    return x if x.ndim == 1 else x[idx]


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _sphere_terms(o, d, center, radius):
    oc = o - np.asarray(center)
    b = _dot(oc, d) if oc.ndim + d.ndim > 2 else np.full(1, oc @ d)
    c = oc @ oc - radius * radius if oc.ndim == 1 else _dot(oc, oc) - radius * radius
    disc = b * b - c
    return b, disc, np.sqrt(np.maximum(disc, 0.0))


def _hit_sphere(o, d, center, radius, *, far_root=False):
    """Ray distance [M] to a sphere (inf on a miss); unit `d`."""
    b, disc, sq = _sphere_terms(o, d, center, radius)
    t = sq - b if far_root else -b - sq
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _touches(o, d, center, radius):
    """True [M] where the ray meets the sphere ahead of its origin (origin inside too)."""
    b, disc, sq = _sphere_terms(o, d, center, radius)
    return (disc >= 0) & (sq - b > _EPS)


def _bound(obj: SceneObject) -> float:
    """Radius of a sphere about `obj.center` that holds the object."""
    if obj.kind == "sphere":
        return obj.size[0]
    if obj.kind == "box":
        return float(np.linalg.norm(obj.size))
    return math.hypot(obj.size[0], obj.size[1] / 2)


_GROUP_CENTER = np.mean([o.center for o in OBJECTS], axis=0)
_GROUP_RADIUS = max(np.linalg.norm(np.subtract(o.center, _GROUP_CENTER)) + _bound(o) for o in OBJECTS)


def _hit_box(o, d, obj: SceneObject):
    """Ray distance [M] and outward world normal [M, 3] of a box turned by `obj.yaw` about z."""
    rot = rot_z(obj.yaw)
    ol = matmul_rows(o - np.asarray(obj.center), rot)  # world -> local is rot.T, applied to row vectors
    dl = matmul_rows(d, rot)
    half = np.asarray(obj.size)
    with np.errstate(divide="ignore", invalid="ignore"):  # axis-parallel rays: +-inf slabs are right
        inv = 1.0 / dl
        t1 = (-half - ol) * inv
        t2 = (half - ol) * inv
    t1, t2 = np.broadcast_arrays(t1, t2)
    tn = np.fmin(t1, t2)
    tmin = tn.max(axis=1)
    tmax = np.fmax(t1, t2).min(axis=1)
    hit = (tmax >= tmin) & (tmin > _EPS)
    axis = tn.argmax(axis=1)
    rows = np.arange(len(tn))
    nl = np.zeros_like(tn)
    nl[rows, axis] = -np.sign(np.broadcast_to(dl, tn.shape)[rows, axis])
    return np.where(hit, tmin, np.inf), matmul_rows(nl, rot.T)


def _hit_cylinder(o, d, obj: SceneObject):
    """Ray distance [M] and outward normal [M, 3] of a capped vertical cylinder."""
    cx, cy, cz = obj.center
    r, height = obj.size
    z0, z1 = cz - height / 2, cz + height / 2
    ox, oy, oz = o[..., 0] - cx, o[..., 1] - cy, o[..., 2]
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    disc = b * b - a * (ox * ox + oy * oy - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):  # vertical rays (a == 0) miss the side
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
        z = oz + t_side * dz
        t_side = np.where((disc >= 0) & (a > 0) & (t_side > _EPS) & (z >= z0) & (z <= z1), t_side, np.inf)
        # A convex body seen from outside: the cap that faces the ray is the only one it can enter.
        t_cap = (np.where(dz < 0, z1, z0) - oz) / dz
    px, py = ox + t_cap * dx, oy + t_cap * dy
    t_cap = np.where(np.isfinite(t_cap) & (t_cap > _EPS) & (px * px + py * py <= r * r), t_cap, np.inf)
    t_side, t_cap = np.broadcast_arrays(t_side, t_cap)
    side = t_side <= t_cap
    ts = np.where(side, t_side, 0.0)
    zeros = np.zeros(len(ts))
    n_side = np.stack([(ox + ts * dx) / r, (oy + ts * dy) / r, zeros], axis=1)
    n_cap = np.stack([zeros, zeros, np.broadcast_to(np.where(dz < 0, 1.0, -1.0), ts.shape)], axis=1)
    return np.minimum(t_side, t_cap), np.where(side[:, None], n_side, n_cap)


def _hit_object(o, d, obj: SceneObject):
    """Ray distance [M] and world normal [M, 3] (garbage where the ray misses)."""
    if obj.kind == "sphere":
        t = _hit_sphere(o, d, obj.center, obj.size[0])
        tt = np.where(np.isfinite(t), t, 0.0)
        return t, (o + tt[:, None] * d - np.asarray(obj.center)) / obj.size[0]
    if obj.kind == "box":
        return _hit_box(o, d, obj)
    return _hit_cylinder(o, d, obj)


def intersect(o, d, markers):
    """Nearest surface: (t [M], surface id [M], normal [M, 3]) of unit rays."""
    t_best = _hit_sphere(o, d, (0.0, 0.0, 0.0), DOME_RADIUS, far_root=True)
    m = len(t_best)
    ids = np.full(m, _DOME, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal rays never hit the ground
        t = np.where((d[..., 2] < 0) & (o[..., 2] > 0), -o[..., 2] / d[..., 2], np.inf)
    closer = t < t_best
    t_best = np.where(closer, t, t_best)
    ids[closer] = _GROUND
    normals = np.zeros((m, 3))
    normals[:, 2] = 1.0  # ground; dome normals stay (0, 0, 1) too, they are not used
    # Only rays that meet the objects' bounding spheres are tested against them.
    cand = np.flatnonzero(_touches(o, d, _GROUP_CENTER, _GROUP_RADIUS))
    oc, dc = _rows(o, cand), _rows(d, cand)
    for k, obj in enumerate(OBJECTS):
        local = np.flatnonzero(_touches(oc, dc, obj.center, _bound(obj)))
        sub = cand[local]
        t, n = _hit_object(_rows(oc, local), _rows(dc, local), obj)
        closer = t < t_best[sub]
        sub = sub[closer]
        t_best[sub] = t[closer]
        ids[sub] = k
        normals[sub] = n[closer]
    for k, (xyz, radius, _) in enumerate(markers):
        t = _hit_sphere(o, d, xyz, radius)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        ids[closer] = _MARKER0 + k
    return t_best, ids, normals


def _in_shadow(p, n) -> np.ndarray:
    """True [M] where the light is blocked by an object (markers cast no shadow)."""
    o = p + 1e-4 * n  # lift off the surface so the ray does not hit its own start
    light = np.asarray(LIGHT_DIR)
    blocked = np.zeros(len(p), bool)
    cand = np.flatnonzero(_touches(o, light, _GROUP_CENTER, _GROUP_RADIUS))
    oc = o[cand]
    for obj in OBJECTS:
        local = np.flatnonzero(_touches(oc, light, obj.center, _bound(obj)))
        t, _ = _hit_object(oc[local], light, obj)
        blocked[cand[local[np.isfinite(t)]]] = True
    return blocked


# --------------------------------------------------------------------------- shading


def shade(o, d, pix_angle: float, tex: SceneTextures, markers):
    """Colour [M, 3] float32 and ray distance t [M] of unit rays."""
    t, ids, n = intersect(o, d, markers)
    # Group the rays by surface (ids are small ints: a stable sort is a radix
    # sort), so each surface's rays are one contiguous slice below.
    order = np.argsort(ids.astype(np.uint8), kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(_MARKER0 + len(markers) + 1))
    span = {k: slice(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)}
    ts, ds, n = t[order], d[order], n[order]
    p = o + ts[:, None] * ds
    rgb = np.zeros((len(ts), 3), np.float32)
    # Sample footprint on the surface, in metres (grazing angles stretch it).
    width = ts * pix_angle / np.maximum(np.abs(_dot(ds, n)), 0.05)

    g = span[_GROUND]
    if g.stop > g.start:
        x, y = p[g, 0], p[g, 1]
        fine = sample(tex.ground, x / GROUND_TILE, y / GROUND_TILE, width[g] * (tex.ground.shape[0, 0] / GROUND_TILE))
        # The coarse layer is smooth (a few cycles per tile): level 0 never aliases.
        rgb[g] = fine * bilinear(tex.ground_coarse, 0, x / GROUND_COARSE_TILE, y / GROUND_COARSE_TILE)

    s = span[_DOME]
    if s.stop > s.start:
        q = p[s] / DOME_RADIUS
        u = np.arctan2(q[:, 1], q[:, 0]) / (2 * np.pi)
        v = 0.5 - np.arcsin(np.clip(q[:, 2], -1, 1)) / np.pi
        texel = 2 * np.pi * DOME_RADIUS / tex.sky.shape[0, 1]
        rgb[s] = sample(tex.sky, u, v, ts[s] * pix_angle / texel)

    texels_per_m = tex.objects.shape[0, 0] / OBJECT_TILE
    for k, obj in enumerate(OBJECTS):
        m = span[k]
        if m.stop == m.start:
            continue
        # Cube mapping: each sample takes the texture plane facing its normal most.
        rot = rot_z(obj.yaw)
        pl = matmul_rows(p[m] - np.asarray(obj.center), rot) / OBJECT_TILE
        axis = np.abs(matmul_rows(n[m], rot)).argmax(axis=1)
        rows = np.arange(len(axis))
        u = pl[rows, (axis + 1) % 3] + tex.offsets[k, 0] + 0.31 * axis
        v = pl[rows, (axis + 2) % 3] + tex.offsets[k, 1] + 0.17 * axis
        rgb[m] = sample(tex.objects, u, v, width[m] * texels_per_m) * tex.tints[k]

    surf = slice(0, bounds[_DOME])  # objects and ground come first in `order`
    lambert = np.maximum(n[surf] @ np.asarray(LIGHT_DIR), 0.0)
    lit = np.flatnonzero(lambert > 0)  # surfaces facing away need no shadow ray
    lambert[lit[_in_shadow(p[lit], n[lit])]] = 0.0
    rgb[surf] *= (AMBIENT + (1 - AMBIENT) * lambert).astype(np.float32)[:, None]

    for k, (_, _, colour) in enumerate(markers):  # markers are emissive: flat colour
        rgb[span[_MARKER0 + k]] = np.asarray(colour, np.float32)
    out = np.empty_like(rgb)
    out[order] = rgb
    return out, t
