"""A field split in space over K tiles (NeRF-XL): per-tile fields, segments composited along each ray.

Each tile is an axis-aligned box in world space (recursive median splits of
points or camera positions; the outer faces at infinity, so the tiles cover
all of space and, with the mip-NeRF 360 contraction, the whole contracted ball).
A tile owns a proposal field and a NeRF field (models.Field, each with its own
hash grid over the tile's bounding box in contracted space, so its table and
resolution serve its own region). Parameters of the K tiles are stacked along a
leading tile axis, so they can be sharded over a mesh axis ('tile').

Per ray and tile, every round samples only the ray's part inside the tile,
[s_in, s_out] in normalised distance s: round 0 starts from that one interval,
later rounds resample the tile's own previous round (mip-NeRF 360's proposal
sampler restricted to the segment). A tile's samples therefore never overlap
another tile's, and:
  * the final render is tiles.composite of the per-tile Segments (exact);
  * the interlevel loss decomposes: an interval of tile k overlaps only
    envelope intervals of tile k, and the global weights of tile k's intervals
    are P_k w (P_k: the transmittance before tile k in that round), so each
    tile's loss uses its local weights scaled by its round's P_k; P_k needs
    every tile's T_k of the round: one all-gather of one number per ray and tile;
  * the distortion loss is tiles.composite's exact decomposition (s units).

Short names and shapes (K tiles, Kl of them on this device, R rays, n samples):
  boxes lo, hi   [K, 3] world boxes; c_lo, c_hi [K, 3] their contracted bounds.
  sdist, tdist   [Kl, R, n+1] per tile; w [Kl, R, n] the tile's local weights.
  trans          [..., K] T_k of each tile; before [..., K] P_k.

Entry points: `layout_from_points`, `TiledModel` (init, render, loss), `untiled_reference`
(the same fields rendered as one sequence per ray, for tests). Single-device rendering
and rendering inside `jax.shard_map` over a 'tile' mesh axis share `render_local`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nerflib import coord, models, render, stepfun, tiles
from nerflib import math as nmath
from nerflib.model_config import tiled_model_problems

_EPS = float(np.finfo(np.float32).eps)
_BIG = 1e8  # "infinity" for the outer faces when bounding the contracted image of a box


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class TileLayout:
    """K world boxes (lo, hi [K, 3], outer faces +-inf) and their encoding boxes (c_lo, c_hi [K, 3])."""

    lo: np.ndarray
    hi: np.ndarray
    c_lo: np.ndarray
    c_hi: np.ndarray

    @property
    def k(self) -> int:
        return len(self.lo)


def _contract_np(x):
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(r <= 1.0, x, (2.0 - 1.0 / np.maximum(r, 1.0)) * x / np.maximum(r, 1e-30))


def _encoding_box(lo, hi, contraction: str):
    """Bounds of a world box's image in the space the hash grids see (contracted, or world in [-2, 2])."""
    if contraction == "none":
        return np.clip(lo, -2.0, 2.0), np.clip(hi, -2.0, 2.0)
    a, b = np.clip(lo, -_BIG, _BIG), np.clip(hi, -_BIG, _BIG)
    # The contraction bends faces; a dense grid over the box (log-spaced towards an infinite face)
    # bounds its image, padded by 2 %. Points outside the bounds are clamped by the hash grid.
    axes = []
    for i in range(3):
        u = np.linspace(0.0, 1.0, 33)
        if np.isinf(lo[i]) or np.isinf(hi[i]):
            m = np.clip(0.0, a[i], b[i])
            span = np.concatenate([-np.geomspace(1e-3, _BIG, 40)[::-1], [0.0], np.geomspace(1e-3, _BIG, 40)]) + m
            axes.append(np.clip(span, a[i], b[i]))
        else:
            axes.append(a[i] + u * (b[i] - a[i]))
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    z = _contract_np(grid)
    z_lo, z_hi = z.min(axis=0), z.max(axis=0)
    pad = 0.02 * (z_hi - z_lo) + 1e-3
    return np.maximum(z_lo - pad, -2.0), np.minimum(z_hi + pad, 2.0)


def layout_from_points(points, k: int, *, contraction: str = "mipnerf360") -> TileLayout:
    """K tiles by recursive median splits of `points` [P, 3] (SfM points or camera centres).

    The splits are planes in world space (so that a tile is convex and a ray crosses it in one
    segment); the outermost faces go to infinity. k == 1 is the whole space.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("layout_from_points needs at least one point")
    p_lo, p_hi = points.min(axis=0), points.max(axis=0)
    boxes = tiles.median_split_boxes(points, k, p_lo - 1e-6, p_hi + 1e-6)
    lo = np.stack([np.where(np.isclose(b, p_lo - 1e-6), -np.inf, b) for b, _ in boxes])
    hi = np.stack([np.where(np.isclose(b, p_hi + 1e-6), np.inf, b) for _, b in boxes])
    enc = [_encoding_box(a, b, contraction) for a, b in zip(lo, hi)]
    return TileLayout(lo=lo, hi=hi, c_lo=np.stack([e[0] for e in enc]), c_hi=np.stack([e[1] for e in enc]))


def whole_space_layout(contraction: str = "mipnerf360") -> TileLayout:
    """One tile covering everything, encoding box [-2, 2]^3: the plain (untiled) model."""
    inf = np.full((1, 3), np.inf)
    return TileLayout(lo=-inf, hi=inf, c_lo=np.full((1, 3), -2.0), c_hi=np.full((1, 3), 2.0))


# --------------------------------------------------------------------------- the model


def _check(cfg: models.ModelConfig) -> None:
    wrong = tiled_model_problems(cfg)
    if wrong:
        raise ValueError(f"the tiled model does not support this ModelConfig: {'; '.join(wrong)}")


def before_of(trans, t_enter):
    """P_k [..., K]: the transmittance in front of each tile, from every tile's T_k and entry t [..., K]."""
    order = jnp.argsort(t_enter, axis=-1)
    ts = jnp.take_along_axis(trans, order, axis=-1)
    ps = jnp.concatenate([jnp.ones_like(ts[..., :1]), jnp.cumprod(ts[..., :-1], axis=-1)], axis=-1)
    return jnp.take_along_axis(ps, jnp.argsort(order, axis=-1), axis=-1)


class TiledModel:
    """K tiles of models.Field (proposal + NeRF), parameters stacked [K, ...].

    params = {'prop_field': [K, ...], 'nerf_field': [K, ...]}: with K == 1 and
    `whole_space_layout`, params[...][0] are a models.NerfModel's params of the same cfg.
    """

    def __init__(self, cfg: models.ModelConfig, layout: TileLayout):
        _check(cfg)
        self.cfg = cfg
        self.layout = layout
        self.k = layout.k
        # The tiles see coordinates already contracted and mapped to their own box (as [-2, 2]^3).
        tile_cfg = dataclasses.replace(cfg, contraction="none")
        self.nerf_field = models.Field(tile_cfg, cfg.nerf_net_depth, cfg.nerf_net_width, predict_rgb=True)
        self.prop_field = models.Field(tile_cfg, cfg.prop_net_depth, cfg.prop_net_width, predict_rgb=False)

    # ----------------------------------------------------------------- parameters

    def init(self, key):
        """Stacked parameters [K, ...] of the K tiles' fields (flax lazy_init: the initialisers only,
        no forward pass to compile)."""
        x = jax.ShapeDtypeStruct((1, 2, 3), jnp.float32)
        cov = jax.ShapeDtypeStruct((1, 2, 3, 3), jnp.float32)
        v = jax.ShapeDtypeStruct((1, 3), jnp.float32)
        kp, kn = jax.random.split(key)

        def one(kp, kn):
            return {"prop_field": self.prop_field.lazy_init(kp, x, cov)["params"],
                    "nerf_field": self.nerf_field.lazy_init(kn, x, cov, v)["params"]}

        return jax.vmap(one)(jax.random.split(kp, self.k), jax.random.split(kn, self.k))

    def boxes(self):
        """The layout as float32 arrays {'lo', 'hi', 'c_lo', 'c_hi'} [K, 3] (shard them with the params)."""
        return {name: jnp.asarray(getattr(self.layout, name), jnp.float32) for name in ("lo", "hi", "c_lo", "c_hi")}

    # ----------------------------------------------------------------- rendering

    def _bounds(self, rays, lo, hi):
        """Each ray's segment in each tile: (t_enter [Kt, R], s_in, s_out [Kt, R, 1]); s in [0, 1]."""
        near, far = rays.near, rays.far  # [R, 1]
        t_to_s, _ = coord.construct_ray_warps(self.cfg.raydist_fn, near, far)
        enter, leave = jax.vmap(lambda a, b: tiles.box_entry_exit(rays.origins, rays.directions, a, b))(lo, hi)
        t_in = jnp.clip(enter[..., None], near, far)
        t_out = jnp.clip(leave[..., None], near, far)
        # A tile the ray misses (or meets outside [near, far]) gets an empty segment at `far`, so the
        # segments stay in order along the ray.
        t_in = jnp.where(t_out <= t_in, far, t_in)
        t_out = jnp.maximum(t_out, t_in)
        # Exactly 0 and 1 at the bounds (K == 1 samples [0, 1] as the plain model does).
        s_in = jnp.where(t_in <= near, 0.0, jnp.clip(t_to_s(t_in), 0.0, 1.0))
        s_out = jnp.where(t_out >= far, 1.0, jnp.clip(t_to_s(t_out), 0.0, 1.0))
        return t_in[..., 0], s_in, jnp.maximum(s_out, s_in)

    def render_local(self, params, boxes, rays, *, jitter, train_frac, gather=None, tile_offset=0):
        """Render rays [R] with this device's tiles (params, boxes [Kl, ...]).

        jitter: per round, the sampling jitter [R, 1 or n] (`draw_jitter`; the same for every tile of
        a ray), or None (deterministic, centred samples). gather(x [..., Kl]) -> [..., K] brings every tile's values (an
        all-gather over the tile axis; None: all tiles are here). tile_offset: the global index
        of this device's first tile. Returns (render dict over all tiles, history): history
        per round {'sdist', 'tdist', 'weights' (global: P_k w) [R, Kl, n(+1)]}; the render has
        'rgb', 'acc', 'depth', 'distortion' (s units) [R], and 'interlevel' [R, Kl] per tile:
        the sum over proposal rounds and the tile's final intervals of lossfun_outer / n.
        """
        cfg = self.cfg
        gather = gather or (lambda x: x)
        kl = jax.tree.leaves(params)[0].shape[0]
        all_b = self.boxes()
        t_enter_all = self._bounds(rays, all_b["lo"], all_b["hi"])[0].T  # [R, K]: every tile, for the order
        t_enter, s_in, s_out = self._bounds(rays, boxes["lo"], boxes["hi"])  # [Kl, R(, 1)]
        _, s_to_t = coord.construct_ray_warps(cfg.raydist_fn, rays.near, rays.far)
        if cfg.anneal_slope > 0:  # models.NerfModel's annealing: Schlick's bias of the training fraction
            x, slope = jnp.clip(train_frac, 0.0, 1.0), cfg.anneal_slope
            anneal = slope * x / ((slope - 1.0) * x + 1.0)
        else:
            anneal = 1.0

        def encode(c_lo, c_hi, means):  # world -> contracted -> this tile's box as [-2, 2]^3
            x = coord.contract(means) if cfg.contraction == "mipnerf360" else means
            return (x - c_lo) * (4.0 / (c_hi - c_lo)) - 2.0

        def resample(xi, sdist, w, lo_s, hi_s, n, level):
            """The next round's intervals in [lo_s, hi_s] [Kl, R, 1] (models.NerfModel's rule, with
            stepfun.sample_intervals' quantiles: jitter xi [R, 1 or n], or centred without)."""
            if level > 0 and (cfg.dilation_bias > 0 or cfg.dilation_multiplier > 0):
                dilation = cfg.dilation_bias + cfg.dilation_multiplier / so_far[level]
                sdist, w = stepfun.max_dilate_weights(sdist, w, dilation, domain=(lo_s, hi_s),
                                                      on_grid=cfg.dilate_on_grid)
                w = stepfun.renormalize_weights(w)
            logits = jnp.where(sdist[..., 1:] > sdist[..., :-1],
                               anneal * nmath.safe_log(w + cfg.resample_padding), -jnp.inf)
            i = jnp.arange(n, dtype=sdist.dtype)
            u = (i + 0.5) / n if xi is None else jnp.minimum((i + xi) / n, 1.0 - _EPS)
            c = stepfun.invert_cdf(jnp.broadcast_to(u, sdist.shape[:-1] + (n,)), sdist, logits)
            mid = 0.5 * (c[..., 1:] + c[..., :-1])
            first = jnp.maximum(lo_s, 2.0 * c[..., :1] - mid[..., :1])
            last = jnp.minimum(hi_s, 2.0 * c[..., -1:] - mid[..., -1:])
            return jnp.concatenate([first, mid, last], axis=-1)

        counts = list(cfg.num_prop_samples) + [cfg.num_nerf_samples]
        so_far = [int(np.prod(counts[:i])) for i in range(len(counts))]  # samples before each round
        sdist = jnp.concatenate([s_in, s_out], axis=-1)  # [Kl, R, 2]
        w = jnp.ones_like(s_in)
        history = []
        num_levels = cfg.num_levels
        for level in range(num_levels):
            is_prop = level < num_levels - 1
            w = jax.lax.stop_gradient(w)
            sdist = resample(None if jitter is None else jitter[level], sdist, w, s_in, s_out, counts[level], level)
            if cfg.stop_level_grad:
                sdist = jax.lax.stop_gradient(sdist)
            tdist = s_to_t(sdist)
            means, _ = coord.cast_rays(tdist, rays.origins, rays.directions, rays.radii, diag=False)
            x = encode(boxes["c_lo"][:, None, None], boxes["c_hi"][:, None, None], means)
            zeros = jnp.zeros(x.shape + (3,), x.dtype)
            if is_prop:
                density = jax.vmap(lambda p, x, c: self.prop_field.apply({"params": p}, x, c)[0])(
                    params["prop_field"], x, zeros)
                rgb = None
            else:
                density, rgb = jax.vmap(lambda p, x, c: self.nerf_field.apply({"params": p}, x, c, rays.viewdirs))(
                    params["nerf_field"], x, zeros)
            w = render.compute_alpha_weights(density, tdist, rays.directions)[0]  # local weights
            history.append({"sdist": sdist, "tdist": tdist, "w": w, "density": density, "rgb": rgb})
            if is_prop:  # this round's P_k: one all-gather of T_k [R, Kl]
                delta = (tdist[..., 1:] - tdist[..., :-1]) * jnp.linalg.norm(rays.directions, axis=-1,
                                                                             keepdims=True)
                trans = jnp.exp(-jnp.sum(density * delta, axis=-1)).T  # [R, Kl]
                before = before_of(gather(trans), t_enter_all)  # [R, K]
                history[-1]["before"] = jax.lax.dynamic_slice_in_dim(before, tile_offset, kl, axis=-1).T

        # Final composite: one all-gather of every tile's Segment, in t (colour, depth) and s (distortion).
        final = history[-1]
        seg = jax.vmap(lambda t, d, c, e: tiles.segment(t, d, c, rays.directions, e))(
            final["tdist"], final["density"], final["rgb"], t_enter)
        s_mid = 0.5 * (final["sdist"][..., 1:] + final["sdist"][..., :-1])
        ws = jnp.sum(final["w"] * s_mid, axis=-1)
        dist_s = stepfun.lossfun_distortion(final["sdist"], final["w"])
        packed = jnp.concatenate([jnp.stack([seg.t_enter, seg.trans, seg.acc, seg.wt, ws, dist_s], axis=-1),
                                  seg.rgb], axis=-1)  # [Kl, R, 9]
        packed = gather(jnp.moveaxis(packed, 0, -1))  # [R, 9, K]: the exchange of the final round
        seg_t = tiles.Segment(t_enter=packed[:, 0], trans=packed[:, 1], acc=packed[:, 2], wt=packed[:, 3],
                              distortion=packed[:, 5], rgb=jnp.moveaxis(packed[:, 6:9], 1, 2))
        bg = 1.0 if cfg.background == "white" else 0.0
        out = tiles.composite(seg_t, bg)
        out_s = tiles.composite(seg_t.replace(wt=packed[:, 4]), bg)
        out = {"rgb": out["rgb"], "acc": out["acc"], "distortion": out_s["distortion"],
               "depth": jnp.clip(out["depth"], rays.near[..., 0], rays.far[..., 0])}
        before = before_of(seg_t.trans, seg_t.t_enter)
        final["before"] = jax.lax.dynamic_slice_in_dim(before, tile_offset, kl, axis=-1).T  # [Kl, R]

        # Interlevel loss per tile with global weights (the final ones are a fixed target).
        t_fin = jax.lax.stop_gradient(final["sdist"])
        w_fin = jax.lax.stop_gradient(final["before"][..., None] * final["w"])
        inter = sum(jnp.sum(stepfun.lossfun_outer(t_fin, w_fin, h["sdist"], h["before"][..., None] * h["w"]), -1)
                    for h in history[:-1]) if num_levels > 1 else jnp.zeros(t_fin.shape[:2])
        out["interlevel"] = (inter / cfg.num_nerf_samples).T  # [R, Kl]
        hist = [{"sdist": jnp.moveaxis(h["sdist"], 0, 1), "tdist": jnp.moveaxis(h["tdist"], 0, 1),
                 "weights": jnp.moveaxis(h["before"][..., None] * h["w"], 0, 1)} for h in history]
        return out, hist

    def draw_jitter(self, key, num_rays: int):
        """Sampling jitter of a training pass: per round [num_rays, 1] (single_jitter) or [num_rays, n];
        drawn for the whole batch, so that it does not depend on how the rays are sharded."""
        counts = list(self.cfg.num_prop_samples) + [self.cfg.num_nerf_samples]
        keys = jax.random.split(key, len(counts))
        return [jax.random.uniform(k, (num_rays, 1 if self.cfg.single_jitter else n)) for k, n in zip(keys, counts)]

    def render(self, params, rays, *, jitter=None, train_frac=1.0, mesh=None):
        """All tiles on one device (mesh None), or sharded: params on the mesh's 'tile' axis, rays on
        'data' (render_local inside jax.shard_map, one all-gather per round)."""
        if mesh is None:
            return self.render_local(params, self.boxes(), rays, jitter=jitter, train_frac=train_frac)
        from jax.sharding import PartitionSpec as P

        n_tile = mesh.shape["tile"]
        if self.k % n_tile:
            raise ValueError(f"{self.k} tiles do not split over {n_tile} devices of the mesh's 'tile' axis")
        kl = self.k // n_tile

        def local(params, boxes, rays, jitter, train_frac):
            gather = lambda x: tiles.gather_last(x, axis_name="tile")
            offset = jax.lax.axis_index("tile") * kl
            return self.render_local(params, boxes, rays, jitter=jitter, train_frac=train_frac, gather=gather,
                                     tile_offset=offset)

        tile_spec = jax.tree.map(lambda _: P("tile"), params)
        ray_spec = jax.tree.map(lambda _: P("data"), rays)
        out_spec = ({"rgb": P("data"), "acc": P("data"), "depth": P("data"), "distortion": P("data"),
                     "interlevel": P("data", "tile")},
                    [{"sdist": P("data", "tile"), "tdist": P("data", "tile"), "weights": P("data", "tile")}]
                    * self.cfg.num_levels)
        fn = jax.shard_map(local, mesh=mesh, check_vma=False,
                           in_specs=(tile_spec, jax.tree.map(lambda _: P("tile"), self.boxes()), ray_spec,
                                     None if jitter is None else [P("data")] * len(jitter), P()),
                           out_specs=out_spec)
        return fn(params, self.boxes(), rays, jitter, jnp.asarray(train_frac, jnp.float32))

    # ----------------------------------------------------------------- losses

    def loss(self, out, rgb_gt):
        """(total, stats) as losses.total_loss: data + interlevel (mean over rays and the K * n final
        intervals) + distortion (mean over rays)."""
        from nerflib import losses

        cfg = self.cfg
        data = losses.data_loss(out["rgb"], rgb_gt, kind=cfg.data_loss_type, charb_padding=cfg.charb_padding)
        inter = cfg.interlevel_loss_mult * jnp.mean(out["interlevel"])
        dist = cfg.distortion_loss_mult * jnp.mean(out["distortion"])
        mse = jnp.mean((jax.lax.stop_gradient(out["rgb"]) - rgb_gt) ** 2)
        return data + inter + dist, {"data": data, "interlevel": inter, "distortion": dist, "mse": mse,
                                     "psnr": nmath.psnr_from_mse(mse)}


# --------------------------------------------------------------------------- reference (tests)


def untiled_reference(model: TiledModel, params, rays, hist, rgb_gt=None):
    """The same tile fields rendered as ONE sequence per ray, for tests: the tiles' final (and
    proposal) intervals from `hist` (a render's history, [R, K, n+1]) in the order the ray enters
    the tiles, a zero-density gap interval between consecutive tiles; each tile's field evaluated
    on its own intervals; then render.compute_alpha_weights / volumetric_rendering,
    stepfun.lossfun_outer and lossfun_distortion on the whole sequence."""
    cfg = model.cfg
    b = model.boxes()
    t_enter = model._bounds(rays, b["lo"], b["hi"])[0].T  # [R, K]
    order = jnp.argsort(t_enter, axis=-1)
    dirs = rays.directions

    def field_values(h, level):
        tdist = jnp.moveaxis(h["tdist"], 1, 0)  # [K, R, n+1]
        means, _ = coord.cast_rays(tdist, rays.origins, dirs, rays.radii, diag=False)
        x = coord.contract(means) if cfg.contraction == "mipnerf360" else means
        x = (x - b["c_lo"][:, None, None]) * (4.0 / (b["c_hi"] - b["c_lo"])[:, None, None]) - 2.0
        zeros = jnp.zeros(x.shape + (3,), x.dtype)
        if level < cfg.num_levels - 1:
            d = jax.vmap(lambda p, x, c: model.prop_field.apply({"params": p}, x, c)[0])(params["prop_field"], x, zeros)
            return jnp.moveaxis(d, 0, 1), None
        d, c = jax.vmap(lambda p, x, c: model.nerf_field.apply({"params": p}, x, c, rays.viewdirs))(
            params["nerf_field"], x, zeros)
        return jnp.moveaxis(d, 0, 1), jnp.moveaxis(c, 0, 1)

    def sequence(x, pad):  # [R, K, m, ...] -> [R, K*(m+pad) - pad, ...] in entry order
        x = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
        r, k, m = x.shape[:3]
        if pad:
            x = jnp.concatenate([x, jnp.zeros((r, k, 1) + x.shape[3:], x.dtype)], axis=2)
            return x.reshape((r, k * (m + 1)) + x.shape[3:])[:, :-1]
        return x.reshape((r, k * m) + x.shape[3:])

    seqs = []
    for level, h in enumerate(hist):
        d, c = field_values(h, level)
        t, s = sequence(h["tdist"], 0), sequence(h["sdist"], 0)
        d = sequence(d, 1)
        w = render.compute_alpha_weights(d, t, dirs)[0]
        seqs.append({"t": t, "s": s, "w": w, "c": None if c is None else sequence(c, 1)})
    fin = seqs[-1]
    bg = 1.0 if cfg.background == "white" else 0.0
    px = render.volumetric_rendering(fin["c"], fin["w"], fin["t"], bg, t_far=rays.far)
    depth = jnp.sum(fin["w"] * 0.5 * (fin["t"][:, 1:] + fin["t"][:, :-1]), -1) / jnp.maximum(_EPS, px["acc"])
    out = {"rgb": px["rgb"], "acc": px["acc"], "depth": jnp.clip(depth, rays.near[:, 0], rays.far[:, 0]),
           "distortion": stepfun.lossfun_distortion(fin["s"], fin["w"])}
    # Weights per tile [R, K, n] (drop the gap intervals, undo the order), to compare with the history.
    inv = jnp.argsort(order, axis=-1)
    weights = []
    for level, seq in enumerate(seqs):
        r, k = order.shape
        n = hist[level]["sdist"].shape[-1] - 1
        w = jnp.concatenate([seq["w"], jnp.zeros((r, 1))], axis=-1).reshape(r, k, n + 1)[..., :n]
        weights.append(jnp.take_along_axis(w, inv[..., None], axis=1))
    out["weights"] = weights
    inter = sum(jnp.sum(stepfun.lossfun_outer(jax.lax.stop_gradient(fin["s"]), jax.lax.stop_gradient(fin["w"]),
                                              s["s"], s["w"]), -1) for s in seqs[:-1])
    out["interlevel"] = inter / (model.k * cfg.num_nerf_samples)  # [R]: per ray, mean over K * n intervals
    return out
