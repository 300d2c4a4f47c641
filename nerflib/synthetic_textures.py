"""Procedural periodic colour textures and trilinear mip-mapped lookups (the demo scene's paint).

Textures are high-frequency, contrast-stretched multi-octave value noise (from
2-4 cycles up to a 4-texel period: 256 cycles across an object tile, 512 across
the ground tile) in colour, times warped stripes/checkers: that is what lets
SIFT register every view (measured: tests/test_sfm.py registers all of them). They are
precomputed periodic images sampled through mip-maps (trilinear, the level
chosen from each sample's footprint).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


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


def fbm(rng, h, w, *, base: int, octaves: int, gain: float) -> np.ndarray:
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


def texture(rng, h: int, w: int, *, pattern: str) -> np.ndarray:
    """A periodic colour texture [h, w, 3] float32 in [0, 1].

    Colour: a cosine palette of one noise field (hue), times a second noise
    field (luminance), times warped stripes or checkers. Its finest noise
    octave has a 4-texel period (h / 4 cycles across the tile).
    """
    top = int(math.log2(h // 4))  # octave k has 2**k cycles along h
    hue = fbm(rng, h, w, base=2, octaves=top, gain=0.8)
    lum = fbm(rng, h, w, base=4, octaves=top - 1, gain=1.0)
    warp = fbm(rng, h, w, base=4, octaves=3, gain=0.6)
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
class Mip:
    """A mip-mapped periodic texture: every level in one flat [texels, 3] buffer."""

    flat: np.ndarray  # float32 [sum over levels of h * w, 3]
    shape: np.ndarray  # int64 [levels, 2]: (h, w) of each level, powers of two
    start: np.ndarray  # int64 [levels]: index of each level's first texel in `flat`


def mipmap(tex: np.ndarray) -> Mip:
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
    return Mip(flat, np.array(shapes, np.int64), start)


def bilinear(mip: Mip, level, u, v) -> np.ndarray:
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


def sample(mip: Mip, u, v, footprint) -> np.ndarray:
    """Trilinear mip-mapped lookup [M, 3]; footprint [M]: sample size in level-0 texels."""
    top = len(mip.start) - 1
    level = np.clip(np.log2(np.maximum(footprint, 1.0)), 0, top)
    l0 = np.minimum(level.astype(np.int64), top - 1)  # level >= 0, so astype floors
    frac = (level - l0).astype(np.float32)[:, None]
    a = bilinear(mip, l0, u, v)
    return a + (bilinear(mip, l0 + 1, u, v) - a) * frac


@dataclasses.dataclass(frozen=True)
class SceneTextures:
    ground: Mip
    ground_coarse: Mip
    objects: Mip
    sky: Mip
    tints: np.ndarray  # [len(OBJECTS), 3]
    offsets: np.ndarray  # [len(OBJECTS), 2] uv offsets into the shared object texture

