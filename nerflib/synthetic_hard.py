"""Adversarial synthetic captures with ground truth: symmetry, repetition, low texture.

The test bed of the pose diagnostics (`nerflib.pose_checks`, docs/pose_diagnostics.md):
a video-like ordered path circles a near-symmetric object that stands on a
floor of identical tiles in a plain square room, so views 360/`symmetry`
degrees apart look alike and SfM can place them on the wrong side of the
object while every photo registers with a small reprojection error.

The scene (world frame: z up, floor z == 0, metres):
  * a square room, walls at |x| == |y| == ROOM_HALF, ceiling at ROOM_HEIGHT:
    plain, nearly uniform paint (`wall_texture` adds faint noise);
  * a floor of square tiles of side `tile` with dark grout; every tile carries
    the same pattern, and `floor_variation` in [0, 1] tints each tile
    differently (0: identical tiles);
  * the object: a capped cylinder (a vase) whose side pattern repeats
    `symmetry` times around it, with a ball on top; `asymmetry` in [0, 1]
    blends in one mark on one side only (0: exactly `symmetry`-fold), and
    `object_contrast` sets how textured it is (low by default).
Lighting: one light almost straight above, Lambertian, no shadows, so the
shading keeps the symmetry. Colours do not depend on the view direction.

The path (`ordered_path_c2w`): `n_frames` frames on a circle of radius
PATH_RADIUS around the object, in capture order (names 000.jpg, 001.jpg ...),
with the smooth height bob, roll and aim wander of a hand-held video.

Short names as in nerflib.synthetic (c2w [3, 4] OpenCV axes; pixel centres
at +0.5). Entry points: `generate`, `render_view`, `ordered_path_c2w`;
`python -m nerflib.synthetic_hard OUT_DIR --frames 32`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from nerflib import fileio, scene_io
from nerflib.synthetic import colmap_text, look_at, pinhole, write_jpeg
from nerflib.types import Camera, Scene

ROOM_HALF = 6.0
ROOM_HEIGHT = 4.0
VASE_RADIUS = 0.45
VASE_HEIGHT = 1.0
BALL_RADIUS = 0.3  # on top of the vase
PATH_RADIUS = 2.6
PATH_HEIGHT = 1.5
TARGET = (0.0, 0.0, 0.6)
FOV_X_DEG = 60.0
LIGHT_DIR = tuple(np.array([0.05, 0.03, 1.0]) / np.linalg.norm([0.05, 0.03, 1.0]))
AMBIENT = 0.55
WALL_RGB = (0.80, 0.78, 0.74)
CEILING_RGB = (0.86, 0.86, 0.84)
BALL_RGB = (0.70, 0.62, 0.45)
GROUT_RGB = (0.25, 0.24, 0.22)
_PATTERN = 32  # lattice cells of the periodic pattern images
_EPS = 1e-6

_FLOOR, _WALL, _CEILING, _VASE_SIDE, _VASE_TOP, _BALL = range(6)


@dataclasses.dataclass(frozen=True)
class HardScene:
    """How adversarial the scene is (see the module docstring)."""

    symmetry: int = 4
    asymmetry: float = 0.0
    object_contrast: float = 0.35
    tile: float = 0.6
    floor_variation: float = 0.0
    wall_texture: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.symmetry, int) or self.symmetry < 1:
            raise ValueError(f"symmetry must be an integer >= 1, got {self.symmetry!r}")
        for key in ("asymmetry", "object_contrast", "floor_variation", "wall_texture"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value!r}")
        if not 0.05 <= self.tile <= ROOM_HALF:
            raise ValueError(f"tile must be in [0.05, {ROOM_HALF}] metres, got {self.tile!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def _periodic_pattern(rng, cells: int, *, contrast: float) -> np.ndarray:
    """A periodic colour pattern [cells, cells, 3] in [0, 1] (smoothed random lattice)."""
    base = rng.uniform(-1, 1, (cells, cells, 3))
    smooth = base.copy()  # a periodic [1 2 1]^2 blur: features a few cells wide, not pixel noise
    for axis in (0, 1):
        smooth = 0.25 * np.roll(smooth, 1, axis) + 0.5 * smooth + 0.25 * np.roll(smooth, -1, axis)
    smooth /= np.abs(smooth).max() + 1e-12  # eps: an all-zero lattice stays finite
    lum = smooth.mean(axis=2, keepdims=True)
    return np.clip(0.55 + contrast * (0.35 * lum + 0.12 * smooth), 0, 1)


def _lookup(pattern: np.ndarray, u, v) -> np.ndarray:
    """Periodic bilinear lookup [M, 3]; u, v in pattern periods."""
    n = pattern.shape[0]
    x = np.asarray(u) * n - 0.5
    y = np.asarray(v) * n - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64) % n, y0.astype(np.int64) % n
    x1, y1 = (x0 + 1) % n, (y0 + 1) % n
    top = pattern[y0, x0] * (1 - fx) + pattern[y0, x1] * fx
    bot = pattern[y1, x0] * (1 - fx) + pattern[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _tile_hash(i, j, seed: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per tile index and channel [M, 3]."""
    k = np.stack([i * 73856093 + j * 19349663 + c * 83492791 + seed * 2654435761 for c in range(3)], -1)
    return (np.sin(k.astype(np.float64) * 1e-3) * 43758.5453) % 1.0


def _intersect(o: np.ndarray, d: np.ndarray):
    """Nearest surface of unit rays d [M, 3] from o [3] inside the room: (t [M], surface id [M], normal [M, 3])."""
    m = len(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Room box from inside: the exit distance along each axis.
        tx = np.where(d[:, 0] > 0, (ROOM_HALF - o[0]) / d[:, 0], (-ROOM_HALF - o[0]) / d[:, 0])
        ty = np.where(d[:, 1] > 0, (ROOM_HALF - o[1]) / d[:, 1], (-ROOM_HALF - o[1]) / d[:, 1])
        tz = np.where(d[:, 2] > 0, (ROOM_HEIGHT - o[2]) / d[:, 2], -o[2] / d[:, 2])
    tx, ty, tz = (np.where(np.isfinite(a) & (a > 0), a, np.inf) for a in (tx, ty, tz))
    stack = np.stack([tx, ty, tz], 1)
    axis = stack.argmin(1)
    t = stack[np.arange(m), axis]
    ids = np.where(axis < 2, _WALL, np.where(d[:, 2] > 0, _CEILING, _FLOOR))
    normals = np.zeros((m, 3))
    normals[np.arange(m), axis] = -np.sign(d[np.arange(m), axis])

    # Vase side (vertical cylinder about z, radius VASE_RADIUS, 0 <= z <= VASE_HEIGHT).
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[0] * d[:, 0] + o[1] * d[:, 1]
    disc = b * b - a * (o[0] ** 2 + o[1] ** 2 - VASE_RADIUS**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
    z = o[2] + ts * d[:, 2]
    ts = np.where((disc >= 0) & (a > 0) & (ts > _EPS) & (z >= 0) & (z <= VASE_HEIGHT), ts, np.inf)
    closer = ts < t
    t = np.where(closer, ts, t)
    ids[closer] = _VASE_SIDE
    p = o + ts[closer, None] * d[closer]
    normals[closer] = np.stack([p[:, 0], p[:, 1], np.zeros(len(p))], 1) / VASE_RADIUS
    # Vase top (a disc; the camera is above it).
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = (VASE_HEIGHT - o[2]) / d[:, 2]
    px, py = o[0] + tc * d[:, 0], o[1] + tc * d[:, 1]
    tc = np.where(np.isfinite(tc) & (tc > _EPS) & (px * px + py * py <= VASE_RADIUS**2), tc, np.inf)
    closer = tc < t
    t = np.where(closer, tc, t)
    ids[closer] = _VASE_TOP
    normals[closer] = (0.0, 0.0, 1.0)
    # Ball on top.
    centre = np.array([0.0, 0.0, VASE_HEIGHT + BALL_RADIUS * 0.8])
    oc = o - centre
    bb = d @ oc
    disc = bb * bb - (oc @ oc - BALL_RADIUS**2)
    tb = -bb - np.sqrt(np.maximum(disc, 0))
    tb = np.where((disc >= 0) & (tb > _EPS), tb, np.inf)
    closer = tb < t
    t = np.where(closer, tb, t)
    ids[closer] = _BALL
    normals[closer] = (o + tb[closer, None] * d[closer] - centre) / BALL_RADIUS
    return t, ids, normals


@dataclasses.dataclass(frozen=True)
class _Patterns:
    tile: np.ndarray
    vase: np.ndarray
    mark: np.ndarray
    wall: np.ndarray


def _patterns(scene: HardScene) -> _Patterns:
    rng = np.random.default_rng([scene.seed, 0xAD5])
    tile = _periodic_pattern(rng, _PATTERN, contrast=0.9)
    vase = _periodic_pattern(rng, _PATTERN, contrast=scene.object_contrast)
    mark = _periodic_pattern(rng, _PATTERN // 4, contrast=1.0) * np.array([1.0, 0.55, 0.35])
    wall = _periodic_pattern(rng, _PATTERN, contrast=1.0)
    return _Patterns(tile, vase, mark, wall)


def _shade(o, d, scene: HardScene, pat: _Patterns) -> np.ndarray:
    """Colour [M, 3] of unit rays from o."""
    t, ids, n = _intersect(o, d)
    p = o + t[:, None] * d
    rgb = np.zeros((len(d), 3))

    f = ids == _FLOOR
    if f.any():
        x, y = p[f, 0] / scene.tile, p[f, 1] / scene.tile
        i, j = np.floor(x), np.floor(y)
        fx, fy = x - i, y - j
        col = _lookup(pat.tile, fx, fy)
        if scene.floor_variation:
            col = col * (1 + scene.floor_variation * 0.8 * (_tile_hash(i.astype(np.int64), j.astype(np.int64),
                                                                      scene.seed) - 0.5))
        grout = (np.minimum(np.minimum(fx, 1 - fx), np.minimum(fy, 1 - fy)) < 0.03)[:, None]
        rgb[f] = np.where(grout, GROUT_RGB, col)

    w = ids == _WALL
    if w.any():
        along = np.where(np.abs(n[w, 0]) > 0.5, p[w, 1], p[w, 0])  # the horizontal coordinate on the wall
        col = np.broadcast_to(np.asarray(WALL_RGB), (int(w.sum()), 3)).copy()
        if scene.wall_texture:
            col *= 1 + scene.wall_texture * 0.6 * (_lookup(pat.wall, along / 3.0, p[w, 2] / 3.0) - 0.55)
        rgb[w] = col
    rgb[ids == _CEILING] = CEILING_RGB
    rgb[ids == _BALL] = BALL_RGB
    top = ids == _VASE_TOP
    if top.any():
        rgb[top] = _lookup(pat.vase, p[top, 0] / (2 * VASE_RADIUS), p[top, 1] / (2 * VASE_RADIUS))

    s = ids == _VASE_SIDE
    if s.any():
        phi = np.arctan2(p[s, 1], p[s, 0]) % (2 * np.pi)
        u = phi * scene.symmetry / (2 * np.pi)  # one pattern period per symmetric sector
        v = p[s, 2] / VASE_HEIGHT
        col = _lookup(pat.vase, u, v) * np.array([0.75, 0.85, 1.0]) + 0.1
        if scene.asymmetry:
            # The one mark: an emblem over a quarter of one sector, mid-height.
            mu = phi * scene.symmetry / (2 * np.pi) / 0.5  # mark coordinates: half a sector wide
            inside = ((mu > 0.25) & (mu < 0.75) & (v > 0.3) & (v < 0.8))[:, None]
            mark = _lookup(pat.mark, mu * 2, v * 2)
            col = np.where(inside, (1 - scene.asymmetry) * col + scene.asymmetry * mark, col)
        rgb[s] = col

    light = np.maximum(n @ np.asarray(LIGHT_DIR), 0.0)
    return np.clip(rgb * (AMBIENT + (1 - AMBIENT) * light)[:, None], 0, 1)


def render_view(camera: Camera, c2w, scene: HardScene = HardScene(), *, supersample: int = 2) -> np.ndarray:
    """rgb uint8 [H, W, 3] of one view; every pixel averages supersample**2 rays."""
    if camera.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(f"synthetic rendering supports PINHOLE and SIMPLE_PINHOLE cameras, got {camera.model}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    c2w = np.asarray(c2w, np.float64)[:3]
    o = c2w[:, 3]
    if not (abs(o[0]) < ROOM_HALF and abs(o[1]) < ROOM_HALF and 0 < o[2] < ROOM_HEIGHT):
        raise ValueError(f"the camera must be inside the room (|x|, |y| < {ROOM_HALF}, 0 < z < {ROOM_HEIGHT}), "
                         f"got centre {o.tolist()}")
    w, h, ss = camera.width, camera.height, int(supersample)
    fx, fy, cx, cy = (camera.param(k) for k in ("fx", "fy", "cx", "cy"))
    xs = (np.arange(w * ss) + 0.5) / ss
    ys = (np.arange(h * ss) + 0.5) / ss
    xx, yy = np.meshgrid((xs - cx) / fx, (ys - cy) / fy)
    dc = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], 1)
    d = (dc / np.linalg.norm(dc, axis=1, keepdims=True)) @ c2w[:, :3].T
    fine = _shade(o, d, scene, _patterns(scene)).reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    return np.clip(np.rint(fine * 255), 0, 255).astype(np.uint8)


def ordered_path_c2w(n_frames: int, *, arc_deg: float = 360.0, seed: int = 0) -> np.ndarray:
    """c2w [n, 3, 4] of a hand-held video circling the object, in capture order.

    The azimuth advances evenly by arc_deg / n_frames per frame (counter-clockwise);
    height, roll and aim wander smoothly (a few low-frequency sines of random
    phase), so neighbours differ by a small, steady step.
    """
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    if not 0 < arc_deg <= 360:
        raise ValueError(f"arc_deg must be in (0, 360], got {arc_deg}")
    rng = np.random.default_rng([seed, 0xF11])
    ph = rng.uniform(0, 2 * np.pi, 5)
    s = np.arange(n_frames) / n_frames
    az = np.radians(arc_deg) * s
    height = PATH_HEIGHT + 0.12 * np.sin(2 * np.pi * 2 * s + ph[0])
    radius = PATH_RADIUS * (1 + 0.04 * np.sin(2 * np.pi * 3 * s + ph[1]))
    roll = np.radians(3.0) * np.sin(2 * np.pi * 3 * s + ph[2])
    eyes = np.stack([radius * np.cos(az), radius * np.sin(az), height], 1)
    aim = np.asarray(TARGET) + 0.1 * np.stack([np.sin(2 * np.pi * 2 * s + ph[3]), np.cos(2 * np.pi * 3 * s + ph[4]),
                                               0.5 * np.sin(2 * np.pi * 4 * s + ph[3])], 1)
    return np.stack([look_at(e, a, roll=r) for e, a, r in zip(eyes, aim, roll)])


def generate(out_dir, scene: HardScene = HardScene(), *, n_frames: int = 32, width: int = 240, height: int = 180,
             arc_deg: float = 360.0, supersample: int = 2, jpeg_quality: int = 95) -> dict:
    """Write images/NNN.jpg (the path, in capture order), gt/scene.json, gt/colmap/*.txt, gt/meta.json.

    Stale *.jpg files in images/ (from a longer run) are removed. Returns a summary.
    """
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    camera = pinhole(width, height, fov_x_deg=FOV_X_DEG)
    c2ws = ordered_path_c2w(n_frames, arc_deg=arc_deg, seed=scene.seed)
    folder = out_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:03d}.jpg" for i in range(n_frames)]
    for name, c2w in zip(names, c2ws):
        write_jpeg(folder / name, render_view(camera, c2w, scene, supersample=supersample),
                   quality=jpeg_quality)
    for stale in sorted({p.name for p in folder.glob("*.jpg")} - set(names)):
        (folder / stale).unlink()
    gt_scene = Scene(names=names, c2w=c2ws, cameras=[camera], camera_idx=np.zeros(n_frames, np.int32),
                     image_dir=str(folder), near=0.3, far=2 * math.hypot(ROOM_HALF, ROOM_HALF))
    gt = out_dir / "gt"
    scene_io.write_scene_json(gt_scene, gt / "scene.json")
    for name, text in colmap_text(gt_scene).items():
        fileio.write_text(gt / "colmap" / name, text)
    meta = {"kind": "hard", **dataclasses.asdict(scene), "n_frames": n_frames, "arc_deg": arc_deg,
            "center": list(TARGET), "radius": PATH_RADIUS, "up": [0.0, 0.0, 1.0],
            "camera": {"model": camera.model, "width": width, "height": height, "params": list(camera.params)},
            "supersample": supersample, "jpeg_quality": jpeg_quality}
    fileio.write_json(gt / "meta.json", meta)
    return {"out_dir": str(out_dir), "scene_json": str(gt / "scene.json"), "frames": n_frames,
            "radius": PATH_RADIUS, "seconds": round(time.perf_counter() - start, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerflib.synthetic_hard", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--arc-deg", type=float, default=360.0)
    ap.add_argument("--supersample", type=int, default=2)
    defaults = HardScene()
    for f in dataclasses.fields(HardScene):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                        default=getattr(defaults, f.name))
    a = ap.parse_args(argv)
    scene = HardScene(**{f.name: getattr(a, f.name) for f in dataclasses.fields(HardScene)})
    summary = generate(a.out_dir, scene, n_frames=a.frames, width=a.width, height=a.height, arc_deg=a.arc_deg,
                       supersample=a.supersample)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
