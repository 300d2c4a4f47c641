"""Procedural city blocks: a large synthetic scene with ground-truth poses (issue #26's capacity tests).

The scene (world frame: z up, ground z == 0, metres, centred on the origin):
  * `blocks` x `blocks` city blocks of side `block` metres, `street` metres of street between
    and around them; each block holds one to four box buildings (lots of a 2x2 split, random
    insets and heights up to `max_height`);
  * facades with a per-building colour, a grid of windows (each a little brighter or darker)
    and fine brick noise; roofs with coarse tiles; streets of asphalt noise with dashed centre
    lines, sidewalks of light tiles along the blocks, grass inside the blocks;
  * Lambertian shading under one directional light (no shadows), a white sky (no geometry
    beyond the ground square, which reaches `street` past the outer blocks plus a margin).
Colours do not depend on the viewing direction. Every pixel averages `supersample`**2 rays.

Views: `n_street` at eye height along the streets (looking along them and at the facades, a
few degrees up or down) and `n_aerial` from above (heights of 0.5-0.8 of the city's width,
looking at points in the city); held-out views are drawn the same way with another seed.

Written in the format of nerflib.synthetic.generate (images/NNN.jpg, heldout/hNNN.jpg,
queries/qNNN.jpg, gt/{scene,heldout,queries}.json, gt/colmap/*.txt, gt/meta.json), so the
loaders read it. `python -m nerflib.synthetic_city OUT_DIR --blocks 3 --street-views 80`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from nerflib import fileio, scene_io, synthetic
from nerflib.types import Scene

LIGHT_DIR = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])
AMBIENT = 0.45
SKY = np.ones(3, np.float32)
_CHUNK = 1 << 15  # rays cast at once ([chunk, buildings, 3] slab tests)


@dataclasses.dataclass(frozen=True)
class City:
    """The geometry: buildings lo, hi [N, 3], colours [N, 3]; the grid of blocks."""

    blocks: int
    block: float
    street: float
    lo: np.ndarray
    hi: np.ndarray
    colour: np.ndarray
    roof: np.ndarray

    @property
    def half(self) -> float:
        """Half the side of the square covered by blocks and streets."""
        return 0.5 * (self.blocks * self.block + (self.blocks + 1) * self.street)

    def block_origins(self) -> np.ndarray:
        """Lower corner (x or y) of each block along one axis [blocks]."""
        return -self.half + self.street + np.arange(self.blocks) * (self.block + self.street)

    def street_centres(self) -> np.ndarray:
        """Centre line (x or y) of each street along one axis [blocks + 1]."""
        return -self.half + 0.5 * self.street + np.arange(self.blocks + 1) * (self.block + self.street)


def make_city(*, blocks: int = 3, block: float = 10.0, street: float = 5.0, max_height: float = 18.0,
              seed: int = 0) -> City:
    if blocks < 1 or block <= 2 or street <= 1 or max_height <= 2:
        raise ValueError(f"need blocks >= 1, block > 2, street > 1, max_height > 2; got "
                         f"{blocks}, {block}, {street}, {max_height}")
    rng = np.random.default_rng([seed, 0xC17])
    city = City(blocks, block, street, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)))
    lo, hi = [], []
    for bx in city.block_origins():
        for by in city.block_origins():
            lots = [(0, 0, 1, 1)] if rng.uniform() < 0.3 else [(i, j, 0.5, 0.5) for i in (0, 0.5) for j in (0, 0.5)]
            for fx, fy, sx, sy in lots:
                inset = rng.uniform(0.3, 1.2, size=4)
                x0, x1 = bx + fx * block + inset[0], bx + (fx + sx) * block - inset[1]
                y0, y1 = by + fy * block + inset[2], by + (fy + sy) * block - inset[3]
                h = rng.uniform(3.0, max_height)
                lo.append([x0, y0, 0.0])
                hi.append([x1, y1, h])
    n = len(lo)
    colour = np.clip(rng.uniform(0.35, 0.9, (n, 3)) * rng.uniform(0.8, 1.1, (n, 1)), 0, 1)
    roof = np.clip(rng.uniform(0.25, 0.6, (n, 3)), 0, 1)
    return dataclasses.replace(city, lo=np.asarray(lo), hi=np.asarray(hi), colour=colour, roof=roof)


# --------------------------------------------------------------------------- textures


def _hash01(*ints, seed: int = 0) -> np.ndarray:
    """A uniform [0, 1) value per integer cell (wrapping uint64 mixing)."""
    with np.errstate(over="ignore"):
        h = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        for i, x in enumerate(ints):
            h = h ^ (np.asarray(x).astype(np.int64).astype(np.uint64) * np.uint64([0x9E3779B1, 0x85EBCA77,
                                                                                  0xC2B2AE3D][i]))
            h = (h ^ (h >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(32))
    return (h & np.uint64(0xFFFFFF)).astype(np.float64) / float(1 << 24)


def _facade(u, v, base, bid):
    """Wall colour [M, 3] at wall coordinates u (along the wall), v (height)."""
    brick = 0.85 + 0.15 * _hash01(np.floor(u * 6), np.floor(v * 12), bid, seed=1)[:, None]
    col = base * brick
    fu, fv = u / 1.6 - np.floor(u / 1.6), v / 2.8 - np.floor(v / 2.8)
    window = (fu > 0.25) & (fu < 0.75) & (fv > 0.3) & (fv < 0.8) & (v > 2.0)
    glass = np.array([0.18, 0.24, 0.32]) * (0.6 + 0.9 * _hash01(np.floor(u / 1.6), np.floor(v / 2.8), bid,
                                                                seed=2))[:, None]
    return np.where(window[:, None], glass, col)


def _roof(x, y, base, bid):
    tile = 0.8 + 0.2 * _hash01(np.floor(x * 2), np.floor(y * 2), bid, seed=3)[:, None]
    return base * tile


def _ground(city: City, x, y):
    """Ground colour [M, 3]: streets (asphalt, dashed centre lines), sidewalks, grass."""
    fine = _hash01(np.floor(x * 5), np.floor(y * 5), seed=4)[:, None]
    asphalt = np.array([0.33, 0.33, 0.35]) * (0.85 + 0.3 * fine)
    grass = np.array([0.25, 0.5, 0.2]) * (0.7 + 0.6 * fine)
    paving = np.array([0.72, 0.7, 0.66]) * (0.9 + 0.1 * _hash01(np.floor(x * 2), np.floor(y * 2), seed=5))[:, None]
    b0 = city.block_origins()

    def inside(c, margin):  # in some block along this axis (shrunk by margin)
        return np.any((c[:, None] >= b0 + margin) & (c[:, None] < b0 + city.block - margin), axis=1)

    in_block = inside(x, 0.0) & inside(y, 0.0)
    in_grass = inside(x, 1.5) & inside(y, 1.5)
    col = np.where(in_block[:, None], np.where(in_grass[:, None], grass, paving), asphalt)
    sc = city.street_centres()
    dash = lambda c, along: (np.min(np.abs(c[:, None] - sc), axis=1) < 0.12) & (along / 3.0 % 1.0 < 0.5)
    line = (dash(y, x) | dash(x, y)) & ~in_block
    return np.where(line[:, None], np.array([0.95, 0.92, 0.8]), col)


# --------------------------------------------------------------------------- ray casting


def _shade(city: City, o, d) -> tuple[np.ndarray, np.ndarray]:
    """Colour [M, 3] and hit distance t [M] (inf: sky) of rays o [3], unit d [M, 3]."""
    inv = 1.0 / np.where(d == 0, 1e-30, d)
    t0 = (city.lo[None] - o) * inv[:, None]  # [M, N, 3]
    t1 = (city.hi[None] - o) * inv[:, None]
    t_near = np.minimum(t0, t1).max(-1)
    t_far = np.maximum(t0, t1).min(-1)
    hit = (t_near <= t_far) & (t_far > 1e-6)
    t_box = np.where(hit, np.maximum(t_near, 0.0), np.inf)
    which = np.argmin(t_box, axis=1)
    tb = t_box[np.arange(len(d)), which]
    axis = np.argmax(np.minimum(t0, t1)[np.arange(len(d)), which], axis=-1)  # the slab entered last
    with np.errstate(divide="ignore"):
        tg = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
    pg = o + np.where(np.isfinite(tg), tg, 0.0)[:, None] * d
    ground_edge = city.half + city.street + 30.0
    tg = np.where(np.all(np.abs(pg[:, :2]) <= ground_edge, axis=1), tg, np.inf)
    t = np.minimum(tb, tg)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    rgb = np.tile(SKY, (len(d), 1)).astype(np.float64)
    normal = np.zeros_like(d)
    on_ground = np.isfinite(tg) & (tg <= tb)
    on_box = np.isfinite(tb) & (tb < tg)
    if on_ground.any():
        rgb[on_ground] = _ground(city, p[on_ground, 0], p[on_ground, 1])
        normal[on_ground] = [0.0, 0.0, 1.0]
    if on_box.any():
        b, ax, q, dd = which[on_box], axis[on_box], p[on_box], d[on_box]
        n = np.zeros_like(q)
        n[np.arange(len(q)), ax] = -np.sign(dd[np.arange(len(q)), ax])
        normal[on_box] = n
        roof = ax == 2
        u = np.where(ax == 0, q[:, 1], q[:, 0])
        col = _facade(u, q[:, 2], city.colour[b], b)
        col[roof] = _roof(q[roof, 0], q[roof, 1], city.roof[b[roof]], b[roof])
        rgb[on_box] = col
    hit_any = on_ground | on_box
    light = AMBIENT + (1.0 - AMBIENT) * np.maximum(0.0, normal @ LIGHT_DIR)
    rgb[hit_any] *= light[hit_any, None]
    return rgb.astype(np.float32), t


def render_view(city: City, camera, c2w, *, supersample: int = 2) -> np.ndarray:
    """uint8 [H, W, 3] of one pinhole view (synthetic.pinhole), supersample**2 rays per pixel."""
    c2w = np.asarray(c2w, np.float64)[:3]
    w, h, ss = camera.width, camera.height, int(supersample)
    fx, fy, cx, cy = (camera.param(k) for k in ("fx", "fy", "cx", "cy"))
    xs, ys = (np.arange(w * ss) + 0.5) / ss, (np.arange(h * ss) + 0.5) / ss
    xx, yy = np.meshgrid((xs - cx) / fx, (ys - cy) / fy)
    dc = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], axis=1)
    d = dc / np.linalg.norm(dc, axis=1, keepdims=True) @ c2w[:, :3].T
    rgb = np.concatenate([_shade(city, c2w[:, 3], d[i:i + _CHUNK])[0] for i in range(0, len(d), _CHUNK)])
    fine = rgb.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    return np.clip(np.rint(fine * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- cameras


def street_views(city: City, n: int, rng) -> np.ndarray:
    """c2w [n, 3, 4] at eye height on the streets, looking along them or at the facades."""
    sc = city.street_centres()
    out = []
    for i in range(n):
        along_x = i % 2 == 0
        lane = sc[rng.integers(len(sc))] + rng.uniform(-0.3, 0.3) * city.street
        pos = rng.uniform(-city.half, city.half)
        eye = np.array([pos, lane, rng.uniform(1.5, 3.0)]) if along_x else np.array([lane, pos, rng.uniform(1.5, 3.0)])
        yaw = (0.0 if along_x else np.pi / 2) + rng.choice([0.0, np.pi]) + rng.choice([0.0, 0.5, -0.5, 1.2, -1.2])
        yaw += rng.uniform(-0.15, 0.15)
        pitch = rng.uniform(-0.05, 0.25)
        look = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        out.append(synthetic.look_at(eye, eye + look))
    return np.asarray(out).reshape(-1, 3, 4)


def aerial_views(city: City, n: int, rng) -> np.ndarray:
    """c2w [n, 3, 4] above the city, looking at points in it."""
    out = []
    for _ in range(n):
        az = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.3, 1.0) * city.half
        eye = np.array([r * np.cos(az), r * np.sin(az), rng.uniform(1.0, 1.6) * city.half])
        target = np.array([*rng.uniform(-0.6, 0.6, 2) * city.half, rng.uniform(0.0, 4.0)])
        out.append(synthetic.look_at(eye, target, up=(np.cos(az + 0.3), np.sin(az + 0.3), 0.0)))
    return np.asarray(out).reshape(-1, 3, 4)


def _views(city: City, n_street: int, n_aerial: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([street_views(city, n_street, rng), aerial_views(city, n_aerial, rng)])


# --------------------------------------------------------------------------- output


def _write_view(args) -> None:
    path, city, camera, c2w, supersample, jpeg_quality = args
    synthetic.write_jpeg(path, render_view(city, camera, c2w, supersample=supersample), quality=jpeg_quality)


def _write_set(out_dir: Path, sub: str, prefix: str, city: City, c2ws, camera, *, supersample, jpeg_quality,
               far: float, workers: int) -> Scene:
    folder = out_dir / sub
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i:03d}.jpg" for i in range(len(c2ws))]
    jobs = [(folder / name, city, camera, c2w, supersample, jpeg_quality) for name, c2w in zip(names, c2ws)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            pool.map(_write_view, jobs)
    else:
        for job in jobs:
            _write_view(job)
    for stale in sorted({p.name for p in folder.glob("*.jpg")} - set(names)):
        (folder / stale).unlink()
    return Scene(names=names, c2w=np.asarray(c2ws).reshape(-1, 3, 4), cameras=[camera],
                 camera_idx=np.zeros(len(names), np.int32), image_dir=str(folder), near=0.2, far=far)


def generate(out_dir, *, blocks: int = 3, block: float = 10.0, street: float = 5.0, max_height: float = 18.0,
             n_street: int = 80, n_aerial: int = 40, n_heldout: int = 12, n_queries: int = 0, width: int = 320,
             height: int = 240, fov_x_deg: float = 70.0, seed: int = 0, supersample: int = 2,
             jpeg_quality: int = 95, workers: int = 1) -> dict:
    """Write the city data set under `out_dir` (synthetic.generate's layout) and return a summary.

    Held-out and query views are street and aerial views in the training views' proportion,
    drawn with other seeds. workers > 1 renders views in that many processes.
    """
    if n_street < 0 or n_aerial < 0 or n_street + n_aerial < 1 or n_heldout < 0 or n_queries < 0:
        raise ValueError(f"view counts: need street + aerial >= 1 and none negative; got {n_street}, {n_aerial}, "
                         f"{n_heldout}, {n_queries}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    city = make_city(blocks=blocks, block=block, street=street, max_height=max_height, seed=seed)
    camera = synthetic.pinhole(width, height, fov_x_deg=fov_x_deg)
    far = float(6.0 * city.half + 60.0)
    frac = n_street / max(1, n_street + n_aerial)

    def split(n):
        return round(n * frac), n - round(n * frac)

    opts = {"supersample": supersample, "jpeg_quality": jpeg_quality, "far": far, "workers": int(workers)}
    sets = {
        "scene": _write_set(out_dir, "images", "", city, _views(city, n_street, n_aerial, [seed, 1]), camera, **opts),
        "heldout": _write_set(out_dir, "heldout", "h", city, _views(city, *split(n_heldout), [seed, 2]), camera,
                              **opts),
        "queries": _write_set(out_dir, "queries", "q", city, _views(city, *split(n_queries), [seed, 3]), camera,
                              **opts),
    }
    gt = out_dir / "gt"
    for key, scene in sets.items():
        scene_io.write_scene_json(scene, gt / f"{key}.json")
    for name, text in synthetic.colmap_text(sets["scene"]).items():
        fileio.write_text(gt / "colmap" / name, text)
    meta = {
        "kind": "city", "seed": int(seed), "up": [0.0, 0.0, 1.0], "ground_z": 0.0, "half_extent": city.half,
        "blocks": blocks, "block": block, "street": street, "max_height": max_height, "buildings": len(city.lo),
        "light_dir": LIGHT_DIR.tolist(),
        "camera": {"model": camera.model, "width": width, "height": height, "params": list(camera.params)},
        "counts": {"street": n_street, "aerial": n_aerial, "heldout": n_heldout, "queries": n_queries},
        "supersample": supersample, "jpeg_quality": jpeg_quality,
    }
    fileio.write_json(gt / "meta.json", meta)
    return {"out_dir": str(out_dir), "scene_json": str(gt / "scene.json"), "half_extent": city.half,
            "buildings": len(city.lo), "views": n_street + n_aerial, "heldout": n_heldout, "queries": n_queries,
            "width": width, "height": height, "seconds": round(time.perf_counter() - start, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerflib.synthetic_city", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--blocks", type=int, default=3, help="blocks along each side")
    ap.add_argument("--block", type=float, default=10.0, help="block side (m)")
    ap.add_argument("--street", type=float, default=5.0, help="street width (m)")
    ap.add_argument("--max-height", type=float, default=18.0)
    ap.add_argument("--street-views", type=int, default=80)
    ap.add_argument("--aerial-views", type=int, default=40)
    ap.add_argument("--heldout", type=int, default=12)
    ap.add_argument("--queries", type=int, default=0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="processes rendering views")
    a = ap.parse_args(argv)
    summary = generate(a.out_dir, blocks=a.blocks, block=a.block, street=a.street, max_height=a.max_height,
                       n_street=a.street_views, n_aerial=a.aerial_views, n_heldout=a.heldout, n_queries=a.queries,
                       width=a.width, height=a.height, seed=a.seed, supersample=a.supersample,
                       workers=a.workers)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
