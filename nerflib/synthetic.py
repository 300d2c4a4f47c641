"""Procedural 360-degree demo scene: numpy ray casting, deterministic per seed.

The scene (world frame: z up, ground plane z == 0, units are metres):
  * five textured objects near the origin (three spheres, a box turned about z,
    a capped vertical cylinder), Lambertian under one directional light, with
    cast shadows;
  * a textured ground plane that reaches the far dome;
  * a textured far dome (a sphere of radius `DOME_RADIUS`, ten times the
    camera orbit), so every pixel sees texture and the scene stays bounded.

Textures are high-frequency, contrast-stretched multi-octave value noise (from
2-4 cycles up to a 4-texel period: 256 cycles across an object tile, 512 across
the ground tile) in colour, times warped stripes/checkers: that is what lets
SIFT register every view (measured: tests/test_sfm.py registers all of them). They are
precomputed periodic images sampled through mip-maps (trilinear, the level
chosen from each sample's footprint), and every pixel averages
`supersample`**2 rays, so images are band-limited and a NeRF can fit them.
Colours do not depend on the viewing direction.

Measured on the default set (60 orbit views, 320x240, pycolmap 4.2.1 PINHOLE,
exhaustive matching, 2 busy cores): 60/60 views registered, ~10k points, mean
reprojection error 0.19 px; after a similarity alignment the median rotation
error is 0.05-0.07 deg and the median camera-position error 0.04-0.06 % of the
orbit radius.

Short names (types.py's conventions):
  c2w          [3, 4] camera-to-world, OpenCV axes (x right, y down, z forward).
  origins, dirs [M, 3] ray origins and unit directions; `t` is the distance
               along a unit direction, `depth` the distance along the optical axis.
  pixel coordinates follow COLMAP: the top-left pixel covers [0, 1] x [0, 1], so
               its centre is (0.5, 0.5) and a centred principal point is (W/2, H/2).

Entry points: `generate` (the whole demo data set), `render_view`, `project`,
`look_at`; `python -m nerflib.synthetic OUT_DIR --views 60`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from nerflib import fileio, scene_io
from nerflib.types import Camera, Scene

ORBIT_RADIUS = 4.0
ORBIT_HEIGHT = 1.6  # mean camera height above the ground
SCENE_CENTER = (0.0, 0.0, 0.5)  # every orbit camera looks at this point
DOME_RADIUS = 10.0 * ORBIT_RADIUS  # centred at the origin
LIGHT_DIR = tuple(np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84]))
AMBIENT = 0.4
FOV_X_DEG = 56.0

GROUND_TILE = 12.0  # metres covered by one period of the fine ground texture
GROUND_COARSE_TILE = 96.0  # a smooth, longer-period layer breaks the repetition
OBJECT_TILE = 2.5  # metres covered by one period of the object texture
_TEX_SIZE = 2048
_CHUNK = 1 << 17  # rays shaded at once; bounds the memory of large images
_EPS = 1e-6  # minimum ray distance, so a ray does not hit the surface it starts on


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One primitive. `size` is (radius,) for spheres, (hx, hy, hz) half-extents
    for boxes, (radius, height) for cylinders; `yaw` turns a box about z (radians)."""

    name: str
    kind: str  # "sphere" | "box" | "cylinder"
    center: tuple[float, float, float]
    size: tuple[float, ...]
    yaw: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "center": list(self.center), "size": list(self.size),
                "yaw": self.yaw}


OBJECTS: tuple[SceneObject, ...] = (
    SceneObject("big_sphere", "sphere", (0.0, 0.0, 0.7), (0.7,)),
    SceneObject("sphere_east", "sphere", (1.3, 0.6, 0.4), (0.4,)),
    SceneObject("sphere_south", "sphere", (-0.8, -1.2, 0.35), (0.35,)),
    SceneObject("box", "box", (-1.1, 0.9, 0.45), (0.45, 0.35, 0.45), math.radians(25.0)),
    SceneObject("cylinder", "cylinder", (0.9, -1.1, 0.6), (0.3, 1.2)),
)

# Surface ids in the id buffer: objects are 0..len(OBJECTS)-1, then these.
_GROUND = len(OBJECTS)
_DOME = _GROUND + 1
_MARKER0 = _DOME + 1


# --------------------------------------------------------------------------- textures


def _upsample(grid: np.ndarray, h: int, w: int, *, centers: bool) -> np.ndarray:
    """Periodic Catmull-Rom interpolation of a lattice [fy, fx] onto h x w points.

    Lattice node (i, j) sits at (i, j) in lattice units and the output spans the
    same period; `centers` puts output points at cell centres (a texture's texels)
    rather than on a finer lattice's nodes.
    """

    def taps(n, f):
        x = (np.arange(n) + (0.5 if centers else 0.0)) * (f / n)
        i = np.floor(x).astype(np.int64)
        s = x - i
        s2, s3 = s * s, s * s * s
        weights = ((-s3 + 2 * s2 - s) / 2, (3 * s3 - 5 * s2 + 2) / 2, (-3 * s3 + 4 * s2 + s) / 2, (s3 - s2) / 2)
        return [(i + k - 1) % f for k in range(4)], [wk.astype(np.float32) for wk in weights]

    fy, fx = grid.shape
    iy, wy = taps(h, fy)
    ix, wx = taps(w, fx)
    cols = sum(grid[:, ix[k]] * wx[k] for k in range(4))  # [fy, w]: the small axis first
    out = np.take(cols, iy[0], axis=0) * wy[0][:, None]
    for k in range(1, 4):
        out += np.take(cols, iy[k], axis=0) * wy[k][:, None]
    return out


def _fbm(rng, h, w, *, base: int, octaves: int, gain: float) -> np.ndarray:
    """Periodic multi-octave value noise [h, w], contrast-stretched into (0, 1).

    Octave k has base * 2**k lattice cells along h (and w / h times as many
    along w) and amplitude gain**k. The octaves are summed on the finest
    lattice (each coarser sum upsampled one octave at a time), so only the
    last upsampling touches every texel.
    """
    aspect = w // h
    acc = np.zeros((base, base * aspect), np.float32)
    for k in range(octaves):
        f = base << k
        if k:
            acc = _upsample(acc, f, f * aspect, centers=False)
        acc += np.float32(gain**k) * rng.standard_normal((f, f * aspect), dtype=np.float32)
    total = _upsample(acc, h, w, centers=True)
    z = (total - total.mean()) / (total.std() + 1e-12)  # eps: a constant field stays finite
    return 0.5 + 0.5 * np.tanh(1.3 * z)


def _texture(rng, h: int, w: int, *, pattern: str) -> np.ndarray:
    """A periodic colour texture [h, w, 3] float32 in [0, 1].

    Colour: a cosine palette of one noise field (hue), times a second noise
    field (luminance), times warped stripes or checkers. Its finest noise
    octave has a 4-texel period (h / 4 cycles across the tile).
    """
    top = int(math.log2(h // 4))  # octave k has 2**k cycles along h
    hue = _fbm(rng, h, w, base=2, octaves=top, gain=0.8)
    lum = _fbm(rng, h, w, base=4, octaves=top - 1, gain=1.0)
    warp = _fbm(rng, h, w, base=4, octaves=3, gain=0.6)
    aspect = w // h
    two_pi = np.float32(2 * np.pi)
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w * aspect)[None, :]
    cyc = np.float32(24.0)  # pattern periods across the tile
    if pattern == "stripes":
        pat = np.sin(two_pi * (cyc * (xx + yy) + np.float32(2.5) * warp))
    else:  # checker
        w15 = np.float32(1.5) * warp
        pat = np.sin(two_pi * (cyc * xx + w15)) * np.sin(two_pi * (cyc * yy + w15))
    shade = (0.3 + 0.7 * lum) * (0.72 + 0.14 * (1 + np.tanh(3.0 * pat)))
    rgb = np.empty((h, w, 3), np.float32)
    for c, phase in enumerate(rng.uniform(0, 1, 3)):  # cosine palette, channel by channel
        rgb[..., c] = (0.55 + 0.45 * np.cos(two_pi * (np.float32(1.3) * hue + np.float32(phase)))) * shade
    return np.clip(rgb, 0, 1, out=rgb)


@dataclasses.dataclass(frozen=True)
class _Mip:
    """A mip-mapped periodic texture: every level in one flat [texels, 3] buffer."""

    flat: np.ndarray  # float32 [sum over levels of h * w, 3]
    shape: np.ndarray  # int64 [levels, 2]: (h, w) of each level, powers of two
    start: np.ndarray  # int64 [levels]: index of each level's first texel in `flat`


def _mipmap(tex: np.ndarray) -> _Mip:
    h, w = tex.shape[:2]
    if h & (h - 1) or w & (w - 1) or min(h, w) < 2:
        raise ValueError(f"texture sides must be powers of two >= 2, got {h}x{w}")
    shapes = [(h, w)]
    while min(shapes[-1]) > 1:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    sizes = [a * b for a, b in shapes]
    start = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    flat = np.empty((sum(sizes), 3), np.float32)
    prev = flat[: sizes[0]].reshape(h, w, 3)
    prev[:] = tex
    for (lh, lw), s0, n in zip(shapes[1:], start[1:], sizes[1:]):
        level = flat[s0 : s0 + n].reshape(lh, lw, 3)
        np.add(prev[0::2, 0::2], prev[1::2, 0::2], out=level)
        level += prev[0::2, 1::2]
        level += prev[1::2, 1::2]
        level *= 0.25  # a 2x2 box filter per level
        prev = level
    return _Mip(flat, np.array(shapes, np.int64), start)


def _bilinear(mip: _Mip, level, u, v) -> np.ndarray:
    """Periodic bilinear lookup at integer `level` (scalar or [M]); u, v in tile units."""
    h, w = mip.shape[level, 0], mip.shape[level, 1]
    x = u * w - 0.5
    y = v * h - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    x0 = x0.astype(np.int64) & (w - 1)  # sides are powers of two: & is the periodic wrap
    y0 = y0.astype(np.int64)
    x1 = (x0 + 1) & (w - 1)
    r0 = mip.start[level] + (y0 & (h - 1)) * w
    r1 = mip.start[level] + ((y0 + 1) & (h - 1)) * w
    top = np.take(mip.flat, r0 + x0, axis=0)
    top += (np.take(mip.flat, r0 + x1, axis=0) - top) * fx
    bot = np.take(mip.flat, r1 + x0, axis=0)
    bot += (np.take(mip.flat, r1 + x1, axis=0) - bot) * fx
    return top + (bot - top) * fy


def _sample(mip: _Mip, u, v, footprint) -> np.ndarray:
    """Trilinear mip-mapped lookup [M, 3]; footprint [M]: sample size in level-0 texels."""
    top = len(mip.start) - 1
    level = np.clip(np.log2(np.maximum(footprint, 1.0)), 0, top)
    l0 = np.minimum(level.astype(np.int64), top - 1)  # level >= 0, so astype floors
    frac = (level - l0).astype(np.float32)[:, None]
    a = _bilinear(mip, l0, u, v)
    return a + (_bilinear(mip, l0 + 1, u, v) - a) * frac


@dataclasses.dataclass(frozen=True)
class _Textures:
    ground: _Mip
    ground_coarse: _Mip
    objects: _Mip
    sky: _Mip
    tints: np.ndarray  # [len(OBJECTS), 3]
    offsets: np.ndarray  # [len(OBJECTS), 2] uv offsets into the shared object texture


@functools.lru_cache(maxsize=2)
def _textures(seed: int) -> _Textures:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, 0x5EED])
    ground = _texture(rng, _TEX_SIZE, _TEX_SIZE, pattern="checker")
    coarse = 0.8 + 0.35 * _fbm(rng, 256, 256, base=4, octaves=3, gain=0.5)
    objects = _texture(rng, _TEX_SIZE // 2, _TEX_SIZE // 2, pattern="stripes")
    sky = _texture(rng, _TEX_SIZE // 2, _TEX_SIZE, pattern="stripes")
    tints = rng.uniform(0.75, 1.15, (len(OBJECTS), 3)).astype(np.float32)
    offsets = (np.arange(len(OBJECTS))[:, None] * np.array([0.37, 0.61]) + rng.uniform(0, 1, 2)) % 1.0
    return _Textures(
        _mipmap(ground), _mipmap(np.repeat(coarse[..., None], 3, -1)), _mipmap(objects), _mipmap(sky), tints, offsets
    )


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


def _mul(v, m):
    """v @ m for row vectors v [M, 3] or [3] (numpy's matmul is slow on thin [M, 3])."""
    if v.ndim == 1:
        return v @ m
    return (m.T @ v.T).T


def _rows(x, idx):
    """x[idx] for per-ray arrays; a shared [3] vector stays as it is."""
    return x if x.ndim == 1 else x[idx]


def _rot_z(yaw: float) -> np.ndarray:
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
    rot = _rot_z(obj.yaw)
    ol = _mul(o - np.asarray(obj.center), rot)  # world -> local is rot.T, applied to row vectors
    dl = _mul(d, rot)
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
    return np.where(hit, tmin, np.inf), _mul(nl, rot.T)


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


def _intersect(o, d, markers):
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


def _shade(o, d, pix_angle: float, tex: _Textures, markers):
    """Colour [M, 3] float32 and ray distance t [M] of unit rays."""
    t, ids, n = _intersect(o, d, markers)
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
        fine = _sample(tex.ground, x / GROUND_TILE, y / GROUND_TILE, width[g] * (tex.ground.shape[0, 0] / GROUND_TILE))
        # The coarse layer is smooth (a few cycles per tile): level 0 never aliases.
        rgb[g] = fine * _bilinear(tex.ground_coarse, 0, x / GROUND_COARSE_TILE, y / GROUND_COARSE_TILE)

    s = span[_DOME]
    if s.stop > s.start:
        q = p[s] / DOME_RADIUS
        u = np.arctan2(q[:, 1], q[:, 0]) / (2 * np.pi)
        v = 0.5 - np.arcsin(np.clip(q[:, 2], -1, 1)) / np.pi
        texel = 2 * np.pi * DOME_RADIUS / tex.sky.shape[0, 1]
        rgb[s] = _sample(tex.sky, u, v, ts[s] * pix_angle / texel)

    texels_per_m = tex.objects.shape[0, 0] / OBJECT_TILE
    for k, obj in enumerate(OBJECTS):
        m = span[k]
        if m.stop == m.start:
            continue
        # Cube mapping: each sample takes the texture plane facing its normal most.
        rot = _rot_z(obj.yaw)
        pl = _mul(p[m] - np.asarray(obj.center), rot) / OBJECT_TILE
        axis = np.abs(_mul(n[m], rot)).argmax(axis=1)
        rows = np.arange(len(axis))
        u = pl[rows, (axis + 1) % 3] + tex.offsets[k, 0] + 0.31 * axis
        v = pl[rows, (axis + 2) % 3] + tex.offsets[k, 1] + 0.17 * axis
        rgb[m] = _sample(tex.objects, u, v, width[m] * texels_per_m) * tex.tints[k]

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


# --------------------------------------------------------------------------- cameras


def pinhole(width: int, height: int, *, fov_x_deg: float = FOV_X_DEG) -> Camera:
    """A PINHOLE camera with square pixels and a centred principal point."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return Camera("PINHOLE", int(width), int(height), (f, f, width / 2, height / 2))


def look_at(eye, target, up=(0.0, 0.0, 1.0), *, roll: float = 0.0) -> np.ndarray:
    """c2w [3, 4] (OpenCV axes) of a camera at `eye` looking at `target`, `up` upwards.

    roll: turn about the optical axis, in radians (positive turns camera x towards camera y).
    """
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z], axis=1) @ _rot_z(roll)
    return np.concatenate([rot, eye[:, None]], axis=1)


def _look_at_all(eyes, targets, rolls=0.0) -> np.ndarray:
    """c2w [N, 3, 4] of cameras at eyes [N, 3] looking at targets [N, 3] or [3]."""
    eyes = np.asarray(eyes, np.float64).reshape(-1, 3)
    targets = np.broadcast_to(np.asarray(targets, np.float64), eyes.shape)
    rolls = np.broadcast_to(np.asarray(rolls, np.float64), eyes.shape[:1])
    if not len(eyes):
        return np.zeros((0, 3, 4))
    return np.stack([look_at(e, t, roll=r) for e, t, r in zip(eyes, targets, rolls)])


def _orbit_c2w(n: int) -> np.ndarray:
    """The orbit: constant radius, height and roll varying gently with azimuth.

    The camera centres' height variation and the small rolls about the optical
    axis keep SfM's self-calibration well conditioned: a flat orbit of
    level cameras all looking at one point leaves the vertical focal length
    (PINHOLE's fy) and the cameras' tilt poorly separated.
    """
    az = 2 * np.pi * np.arange(n) / n
    height = ORBIT_HEIGHT + 0.45 * np.sin(2 * az + 0.4)
    roll = np.radians(4.0) * np.sin(3 * az + 1.0)
    eyes = np.stack([ORBIT_RADIUS * np.cos(az), ORBIT_RADIUS * np.sin(az), height], axis=1)
    return _look_at_all(eyes, SCENE_CENTER, roll)


def _heldout_c2w(n: int, n_orbit: int) -> np.ndarray:
    """Azimuths between the orbit's, alternately above and below its height band."""
    k = np.arange(n)
    az = 2 * np.pi * (k + 0.31) / max(n, 1) + np.pi / max(n_orbit, 1)
    height = np.where(k % 2 == 0, ORBIT_HEIGHT + 0.65, ORBIT_HEIGHT - 0.5)
    radius = ORBIT_RADIUS * np.where(k % 2 == 0, 1.08, 0.93)
    eyes = np.stack([radius * np.cos(az), radius * np.sin(az), height], axis=1)
    return _look_at_all(eyes, SCENE_CENTER)


def _query_c2w(n: int, seed: int) -> np.ndarray:
    """Random poses near the orbit band, looking near (not at) the centre."""
    rng = np.random.default_rng([seed, 0x9E7])
    az = rng.uniform(0, 2 * np.pi, n)
    r = ORBIT_RADIUS * rng.uniform(0.88, 1.12, n)
    eyes = np.stack([r * np.cos(az), r * np.sin(az), ORBIT_HEIGHT + rng.uniform(-0.35, 0.45, n)], axis=1)
    targets = np.asarray(SCENE_CENTER) + rng.uniform(-0.3, 0.3, (n, 3)) * (1, 1, 0.5)
    return _look_at_all(eyes, targets, np.radians(rng.uniform(-5.0, 5.0, n)))


def _check_pinhole(camera: Camera) -> None:
    if camera.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(f"synthetic rendering supports PINHOLE and SIMPLE_PINHOLE cameras, got {camera.model}")


def project(camera: Camera, c2w, points_world) -> np.ndarray:
    """Pixel coordinates [..., 2] (COLMAP convention) of world points [..., 3].

    Points at or behind the camera plane come back as NaN.
    """
    _check_pinhole(camera)
    c2w = np.asarray(c2w, np.float64)
    pts = np.asarray(points_world, np.float64)
    cam = (pts - c2w[:, 3]) @ c2w[:, :3]  # R^T (X - C), row vectors (any leading shape)
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = camera.param("fx") * cam[..., 0] / z + camera.param("cx")
        y = camera.param("fy") * cam[..., 1] / z + camera.param("cy")
    xy = np.stack([x, y], axis=-1)
    return np.where((z > 0)[..., None], xy, np.nan)


def render_view(
    camera: Camera, c2w, *, seed: int = 0, supersample: int = 2, markers=()
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: rgb uint8 [H, W, 3] and depth float32 [H, W].

    rgb averages supersample**2 rays per pixel; depth is the distance along the
    optical axis of the ray through the pixel centre (so back-projecting pixel
    centre (x, y) at that depth lands on a surface).
    markers: (xyz, radius, rgb in [0, 1]) spheres drawn in flat colour on top of
    the scene (they occlude but cast no shadow), e.g. to check projections.
    """
    return _render(camera, c2w, seed=seed, supersample=supersample, markers=markers, want_depth=True)


def _render(camera: Camera, c2w, *, seed: int, supersample: int, markers=(), want_depth: bool):
    _check_pinhole(camera)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    markers = [(tuple(map(float, xyz)), float(r), tuple(map(float, c))) for xyz, r, c in markers]
    c2w = np.asarray(c2w, np.float64)
    if c2w.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"c2w must be a 3x4 (or 4x4) camera-to-world matrix, got shape {c2w.shape}")
    c2w = c2w[:3]
    tex = _textures(int(seed))
    w, h, ss = camera.width, camera.height, int(supersample)
    fx, fy, cx, cy = (camera.param(k) for k in ("fx", "fy", "cx", "cy"))
    pix_angle = 1.0 / (math.sqrt(fx * fy) * ss)

    def cast(xs, ys, want_colour):
        xx, yy = np.meshgrid((xs - cx) / fx, (ys - cy) / fy)
        dc = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], axis=1)
        norm = np.sqrt(dc[:, 0] ** 2 + dc[:, 1] ** 2 + 1.0)
        d = _mul(dc / norm[:, None], c2w[:, :3].T)
        o = c2w[:, 3]  # shared by all rays
        rgb = np.empty((len(d), 3), np.float32)
        depth = np.empty(len(d))
        for i in range(0, len(d), _CHUNK):
            sl = slice(i, i + _CHUNK)
            if want_colour:
                rgb[sl], t = _shade(o, d[sl], pix_angle, tex, markers)
            else:
                t, _, _ = _intersect(o, d[sl], markers)
            depth[sl] = t / norm[sl]
        return rgb, depth

    fine, _ = cast((np.arange(w * ss) + 0.5) / ss, (np.arange(h * ss) + 0.5) / ss, True)
    fine = fine.reshape(h, ss, w, ss, 3)
    fine = sum(fine[:, i, :, j] for i in range(ss) for j in range(ss)) / np.float32(ss * ss)
    rgb = np.clip(np.rint(fine * 255), 0, 255).astype(np.uint8)
    if not want_depth:
        return rgb, None
    _, depth = cast(np.arange(w) + 0.5, np.arange(h) + 0.5, False)
    return rgb, depth.reshape(h, w).astype(np.float32)


# --------------------------------------------------------------------------- output


def _rotmat_to_quat(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, of a rotation matrix (Shepperd's method)."""
    tr = np.trace(r)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 0.0))
        q = [0.0] * 4
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def colmap_text(scene: Scene) -> dict[str, str]:
    """COLMAP text model (cameras.txt, images.txt, points3D.txt) of a posed scene."""
    cams = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
            f"# Number of cameras: {len(scene.cameras)}"]
    for i, c in enumerate(scene.cameras):
        cams.append(" ".join([str(i + 1), c.model, str(c.width), str(c.height), *(repr(float(p)) for p in c.params)]))
    imgs = ["# Image list with two lines of data per image:",
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)",
            f"# Number of images: {len(scene)}, mean observations per image: 0"]
    for i, (name, c2w) in enumerate(zip(scene.names, scene.c2w)):
        r_w2c = c2w[:, :3].T
        t_w2c = -r_w2c @ c2w[:, 3]
        vals = [*_rotmat_to_quat(r_w2c), *t_w2c]
        imgs.append(" ".join([str(i + 1), *(repr(float(v)) for v in vals), str(int(scene.camera_idx[i]) + 1), name]))
        imgs.append("")
    pts = ["# 3D point list with one line of data per point:",
           "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
           "# Number of points: 0, mean track length: 0"]
    return {name: "\n".join(lines) + "\n" for name, lines in
            (("cameras.txt", cams), ("images.txt", imgs), ("points3D.txt", pts))}


def write_jpeg(path: Path, rgb: np.ndarray, *, quality: int) -> None:
    """Atomic JPEG without chroma subsampling.

    These textures carry colour detail down to the pixel: the default 4:2:0
    subsampling costs ~8 grey levels of mean error (26 dB PSNR at quality 95),
    4:4:4 ~2 levels (38 dB), and a NeRF cannot fit what the files lost.
    """
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise OSError(f"could not encode {path}")
    with fileio.atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _write_set(out_dir: Path, sub: str, prefix: str, c2ws, camera, *, seed, supersample, jpeg_quality) -> Scene:
    folder = out_dir / sub
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i:03d}.jpg" for i in range(len(c2ws))]
    for name, c2w in zip(names, c2ws):
        rgb, _ = _render(camera, c2w, seed=seed, supersample=supersample, want_depth=False)
        write_jpeg(folder / name, rgb, quality=jpeg_quality)
    for stale in sorted({p.name for p in folder.glob("*.jpg")} - set(names)):  # left by a bigger run
        (folder / stale).unlink()
    # near/far bound the ray distance of every surface from every camera here.
    return Scene(names=names, c2w=np.asarray(c2ws).reshape(-1, 3, 4), cameras=[camera],
                 camera_idx=np.zeros(len(names), np.int32), image_dir=str(folder),
                 near=0.5, far=DOME_RADIUS + 2 * ORBIT_RADIUS)


def generate(out_dir, *, n_views: int = 60, n_heldout: int = 8, n_queries: int = 4, width: int = 320,
             height: int = 240, seed: int = 0, supersample: int = 2, jpeg_quality: int = 95) -> dict:
    """Write the demo data set under `out_dir` and return a summary.

    images/NNN.jpg (orbit views, for SfM and training), heldout/hNNN.jpg,
    queries/qNNN.jpg, gt/{scene,heldout,queries}.json (scene_io format),
    gt/colmap/{cameras,images,points3D}.txt (orbit poses), gt/meta.json.
    Every file is written atomically; stale *.jpg files in those three
    folders (from an earlier, larger run) are removed.
    """
    if n_views < 1 or n_heldout < 0 or n_queries < 0:
        raise ValueError(f"view counts must be n_views >= 1, others >= 0; got {n_views}, {n_heldout}, {n_queries}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    camera = pinhole(width, height)
    opts = dict(seed=seed, supersample=supersample, jpeg_quality=jpeg_quality)
    sets = {
        "scene": _write_set(out_dir, "images", "", _orbit_c2w(n_views), camera, **opts),
        "heldout": _write_set(out_dir, "heldout", "h", _heldout_c2w(n_heldout, n_views), camera, **opts),
        "queries": _write_set(out_dir, "queries", "q", _query_c2w(n_queries, seed), camera, **opts),
    }
    gt = out_dir / "gt"
    for key, scene in sets.items():
        scene_io.write_scene_json(scene, gt / f"{key}.json")
    for name, text in colmap_text(sets["scene"]).items():
        fileio.write_text(gt / "colmap" / name, text)
    meta = {
        "seed": int(seed),
        "center": list(SCENE_CENTER),
        "radius": ORBIT_RADIUS,
        "up": [0.0, 0.0, 1.0],
        "ground_z": 0.0,
        "dome_radius": DOME_RADIUS,
        "light_dir": list(LIGHT_DIR),
        "objects": [o.to_dict() for o in OBJECTS],
        "camera": {"model": camera.model, "width": width, "height": height, "params": list(camera.params)},
        "counts": {"views": n_views, "heldout": n_heldout, "queries": n_queries},
        "supersample": supersample,
        "jpeg_quality": jpeg_quality,
    }
    fileio.write_json(gt / "meta.json", meta)
    return {
        "out_dir": str(out_dir),
        "scene_json": str(gt / "scene.json"),
        "radius": ORBIT_RADIUS,
        "views": n_views,
        "heldout": n_heldout,
        "queries": n_queries,
        "width": width,
        "height": height,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerflib.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--views", type=int, default=60, help="orbit (training/SfM) views")
    ap.add_argument("--heldout", type=int, default=8, help="held-out novel views")
    ap.add_argument("--queries", type=int, default=4, help="views for camera localization")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--supersample", type=int, default=2, help="rays per pixel along each axis")
    ap.add_argument("--jpeg-quality", type=int, default=95)
    a = ap.parse_args(argv)
    summary = generate(a.out_dir, n_views=a.views, n_heldout=a.heldout, n_queries=a.queries, width=a.width,
                       height=a.height, seed=a.seed, supersample=a.supersample, jpeg_quality=a.jpeg_quality)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
