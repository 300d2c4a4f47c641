"""Spatial tiles of one scene (NeRF-XL): composite per-tile ray segments into the whole ray.

Space is split into K disjoint convex tiles (axis-aligned boxes here); each tile
has its own field and renders only its own segment of every ray, with a
transmittance that starts at 1 where the ray enters the tile. A few numbers
per ray and tile (a `Segment`) then suffice to composite the whole ray exactly,
because volume rendering factorises over consecutive segments:

  T       = prod_k T_k                          transmittance through all tiles
  P_k     = prod_{j before k} T_j               transmittance up to tile k
  rgb     = sum_k P_k rgb_k + T bg              rgb_k = sum_i w_ki c_ki (local weights)
  acc     = sum_k P_k acc_k = 1 - T
  depth   = sum_k P_k wt_k / acc                wt_k = sum_i w_ki t_mid_ki

and the distortion loss sum_ij w_i w_j |m_i - m_j| + (1/3) sum_i w_i^2 d_i of
the whole ray splits into each tile's own loss (local weights), scaled by
P_k^2, plus the pairs of intervals in different tiles: every midpoint of an
earlier tile lies before every midpoint of a later one, so those pairs add
2 sum_{a before b} (W_a M_b - M_a W_b) with W_k = P_k acc_k, M_k = P_k wt_k.

The order of the tiles differs from ray to ray (it is the order in which the
ray enters them): `composite` sorts each ray's segments by their entry
distance. A ray that misses a tile has an empty segment (T_k = 1, the rest 0)
and any entry distance. Shapes: R rays, K tiles; a Segment's fields are
[..., K] (rgb [..., K, 3]).

`composite_sharded` is the same over a mesh axis of tiles: each device holds
its tiles' segments and one all-gather brings every ray's K segments together
(the only exchange NeRF-XL needs per rendering).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nerflib import render, stepfun

_EPS = float(np.finfo(np.float32).eps)


@flax.struct.dataclass
class Segment:
    """One tile's part of each ray: what compositing needs, with the tile's local weights.

    t_enter [...]: where the ray enters the tile (sorting key); trans [...]: T_k;
    rgb [..., 3]: sum w c; acc [...]: sum w (= 1 - T_k up to round-off);
    wt [...]: sum w t_mid; distortion [...]: the tile's own distortion loss.
    """

    t_enter: jnp.ndarray
    trans: jnp.ndarray
    rgb: jnp.ndarray
    acc: jnp.ndarray
    wt: jnp.ndarray
    distortion: jnp.ndarray


def segment(tdist, density, rgbs, dirs, t_enter) -> Segment:
    """A tile's Segment from its own samples: tdist [..., n+1] (inside the tile), density [..., n],
    rgbs [..., n, 3], dirs [..., 3]; t_enter [...]. Empty intervals (zero density) are fine."""
    weights, _, trans = render.compute_alpha_weights(density, tdist, dirs)
    delta = (tdist[..., 1:] - tdist[..., :-1]) * jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    t_mid = 0.5 * (tdist[..., 1:] + tdist[..., :-1])
    return Segment(
        t_enter=t_enter,
        trans=trans[..., -1] * jnp.exp(-density[..., -1] * delta[..., -1]),
        rgb=jnp.sum(weights[..., None] * rgbs, axis=-2),
        acc=jnp.sum(weights, axis=-1),
        wt=jnp.sum(weights * t_mid, axis=-1),
        distortion=stepfun.lossfun_distortion(tdist, weights),
    )


def stack(segments: list[Segment]) -> Segment:
    """K segments [...] -> one Segment [..., K] (rgb [..., K, 3])."""
    field = lambda name, axis: jnp.stack([getattr(s, name) for s in segments], axis=axis)
    return Segment(t_enter=field("t_enter", -1), trans=field("trans", -1), rgb=field("rgb", -2),
                   acc=field("acc", -1), wt=field("wt", -1), distortion=field("distortion", -1))


def _sorted(seg: Segment) -> Segment:
    """Each ray's segments in the order the ray enters the tiles ([..., K] along the last tile axis)."""
    order = jnp.argsort(seg.t_enter, axis=-1)
    take = lambda x: jnp.take_along_axis(x, order, axis=-1)
    return Segment(t_enter=take(seg.t_enter), trans=take(seg.trans),
                   rgb=jnp.take_along_axis(seg.rgb, order[..., None], axis=-2), acc=take(seg.acc),
                   wt=take(seg.wt), distortion=take(seg.distortion))


def composite(seg: Segment, bg_rgb=1.0) -> dict:
    """The whole ray from its K segments [..., K]: {'rgb', 'acc', 'depth', 'distortion', 'trans'}.

    Equals rendering all tiles' samples together (tests/test_tiles.py), gradients included.
    """
    seg = _sorted(seg)
    # P_k: exclusive cumulative product of the segments' transmittances.
    before = jnp.concatenate([jnp.ones_like(seg.trans[..., :1]), jnp.cumprod(seg.trans[..., :-1], axis=-1)], axis=-1)
    trans = before[..., -1] * seg.trans[..., -1]
    rgb = jnp.sum(before[..., None] * seg.rgb, axis=-2) + trans[..., None] * bg_rgb
    big_w = before * seg.acc
    big_m = before * seg.wt
    acc = jnp.sum(big_w, axis=-1)
    depth = jnp.sum(big_m, axis=-1) / jnp.maximum(_EPS, acc)
    # Pairs (a before b): 2 sum_b (W_{<b} M_b - M_{<b} W_b), with exclusive prefix sums.
    w_prefix = jnp.cumsum(big_w, axis=-1) - big_w
    m_prefix = jnp.cumsum(big_m, axis=-1) - big_m
    cross = 2.0 * jnp.sum(w_prefix * big_m - m_prefix * big_w, axis=-1)
    distortion = jnp.sum(before**2 * seg.distortion, axis=-1) + cross
    return {"rgb": rgb, "acc": acc, "depth": depth, "distortion": distortion, "trans": trans}


def composite_sharded(local: Segment, *, axis_name: str, bg_rgb=1.0) -> dict:
    """`composite` inside shard_map over `axis_name`, each device holding its tiles' segments
    [..., K_local]: one all-gather over the tile axis, then the same composite on every device."""
    return composite(gather_tiles(local, axis_name=axis_name), bg_rgb)


def gather_tiles(local: Segment, *, axis_name: str) -> Segment:
    """Every device's segments [..., K_local] -> [..., D * K_local], device-major (one all-gather)."""

    def merge(x, tile_axis):
        x = jax.lax.all_gather(x, axis_name, axis=0)  # [D, ..., K_local(, 3)]
        x = jnp.moveaxis(x, 0, tile_axis - 1)  # [..., D, K_local(, 3)]
        shape = x.shape[: x.ndim + tile_axis - 1] + (-1,) + x.shape[x.ndim + tile_axis + 1:]
        return x.reshape(shape)

    return Segment(t_enter=merge(local.t_enter, -1), trans=merge(local.trans, -1), rgb=merge(local.rgb, -2),
                   acc=merge(local.acc, -1), wt=merge(local.wt, -1), distortion=merge(local.distortion, -1))


def gather_last(x, *, axis_name: str):
    """x [..., K_local] on each device -> [..., D * K_local], device-major (one all-gather)."""
    return jax.lax.all_gather(x, axis_name, axis=x.ndim - 1, tiled=True)


_FACE = 1e30  # a box face "at infinity" in box_entry_exit


def box_entry_exit(origins, directions, lo, hi):
    """(t_enter, t_exit) of rays [..., 3] in the axis-aligned box [lo, hi] (slab method); t_enter >
    t_exit when the ray misses it. Directions with a zero component are handled by +-inf slabs;
    faces may be +-inf (a tiled layout's outer faces)."""
    inv = 1.0 / jnp.where(directions == 0, 1e-30, directions)
    # Infinite faces become +-1e30 (their slab never binds either way): (lo - o) = inf would make the
    # gradient w.r.t. the directions 0 * inf = NaN even where that slab is not selected (pose refinement
    # differentiates the render w.r.t. the directions).
    t0 = (jnp.clip(jnp.asarray(lo), -_FACE, _FACE) - origins) * inv
    t1 = (jnp.clip(jnp.asarray(hi), -_FACE, _FACE) - origins) * inv
    return jnp.max(jnp.minimum(t0, t1), axis=-1), jnp.min(jnp.maximum(t0, t1), axis=-1)


def median_split_boxes(points, k: int, lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
    """k boxes (k a power of two) covering [lo, hi], by recursive median splits of `points` [P, 3]
    along each box's longest side: tiles with about equal numbers of points (NeRF-XL's partition)."""
    if k < 1 or k & (k - 1):
        raise ValueError(f"the number of tiles must be a power of two, got {k}")
    boxes = [(np.asarray(lo, np.float64), np.asarray(hi, np.float64), np.asarray(points, np.float64))]
    while len(boxes) < k:
        split = []
        for b_lo, b_hi, pts in boxes:
            axis = int(np.argmax(b_hi - b_lo))
            cut = float(np.median(pts[:, axis])) if len(pts) else 0.5 * (b_lo[axis] + b_hi[axis])
            cut = min(max(cut, b_lo[axis]), b_hi[axis])
            left_hi, right_lo = b_hi.copy(), b_lo.copy()
            left_hi[axis] = right_lo[axis] = cut
            split += [(b_lo, left_hi, pts[pts[:, axis] < cut]), (right_lo, b_hi, pts[pts[:, axis] >= cut])]
        boxes = split
    return [(b_lo, b_hi) for b_lo, b_hi, _ in boxes]
