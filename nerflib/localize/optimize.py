"""The optimizer: `localize` refines batched problems (query x restart) through the frozen
field, coarse to fine, sharded over the devices; `score_poses` is its final measurement
alone. Names and shapes: the docstring of nerflib.localize.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nerflib import cameras as cam_lib
from nerflib import parallel
from nerflib.localize.options import Options
from nerflib.localize.pixels import (
    downsample,
    eval_grid,
    interest_pixels,
    psnr_from_mse,
    robust_loss,
)
from nerflib.localize.poses import apply_twist, perturb_pose
from nerflib.logs import progress_bar
from nerflib.types import CAMERA_MODELS, Camera

NUM_VARS = 7  # twist (6) + log focal scale


def _levels_model(cameras, factors) -> str:
    """The one camera model of every level: downsampling a size that the factor does not divide
    scales x and y differently, which a single-focal model (SIMPLE_PINHOLE, ...) cannot express."""
    return cam_lib.common_model([cam_lib.scale_camera(c, int(f)) for c in cameras for f in sorted(set(factors))])


def _focal_mask(model_name: str) -> np.ndarray:
    """[P] float: 1 where the camera parameter is a focal length."""
    return np.array([n in ("f", "fx", "fy") for n in CAMERA_MODELS[model_name]], np.float32)


def _render_fn(model) -> Callable:
    """render(params, rays [...]) -> rgb [..., 3] of the final round, deterministic: evaluate.ray_render,
    the one differentiable render of either model kind (untiled, tiled; or any object with the
    NerfModel's `apply`, such as the tests' analytic fields).

    params are an argument of every jitted function here, never a closure
    constant (XLA would fold a whole network into the program).
    """
    from nerflib import evaluate

    final = evaluate.ray_render(model, zero_glo=uses_glo(model), extras=False)
    return lambda params, rays: final(params, rays)["rgb"]


def uses_glo(model) -> bool:
    return getattr(getattr(model, "cfg", None), "num_glo_features", 0) > 0


@flax.struct.dataclass
class _Level:
    """Device-side data of one coarse-to-fine level, padded to the base level's shapes.

    Every level has the same array shapes, so one compiled step serves them all.
    images [Q, Hmax, Wmax, 3] float32, sizes [Q, 2] int32 (W, H at this level),
    cand [Q, K, 2] int32 interest pixels, params [Q, P] float32 camera params,
    offsets [N, 2] float32 sub-pixel offset of each ray slot, sub [] int32 rays per
    pixel (s^2), n_int [] int32 interest pixels (the other pixels are uniform).
    """

    images: Any
    sizes: Any
    cand: Any
    params: Any
    offsets: Any
    sub: Any
    n_int: Any


def _build_level(images, cameras, model_name, factor, mult, opts, rng, shape) -> _Level:
    """The level of extra downsampling `mult`; `shape` (Hmax, Wmax) of the base level."""
    f = factor * mult
    ims = [downsample(im, f) for im in images]
    cams = [cam_lib.convert_camera(cam_lib.scale_camera(c, f), model_name) for c in cameras]
    padded = np.zeros((len(ims), *shape, 3), np.float32)
    for i, im in enumerate(ims):
        padded[i, : im.shape[0], : im.shape[1]] = im
    k = max(4096, opts.n_pixels)
    cand = np.stack([interest_pixels(im, k, rng, sampling=opts.sampling, dilate=opts.dilate) for im in ims])
    s = min(mult, opts.supersample)
    s = max(1, min(s, math.isqrt(opts.n_pixels)))  # at least one whole pixel per step
    grid = (np.arange(s) + 0.5) / s - 0.5
    grid = np.stack(np.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    n_pix = opts.n_pixels // (s * s)
    n_int = 0 if opts.sampling == "uniform" else n_pix - int(round(n_pix * opts.uniform_fraction))
    return _Level(
        images=jnp.asarray(padded),
        sizes=jnp.asarray([[im.shape[1], im.shape[0]] for im in ims], jnp.int32),
        cand=jnp.asarray(cand),
        params=jnp.asarray([c.params for c in cams], jnp.float32),
        offsets=jnp.asarray(grid[np.arange(opts.n_pixels) % (s * s)], jnp.float32),
        sub=jnp.asarray(s * s, jnp.int32),
        n_int=jnp.asarray(n_int, jnp.int32),
    )


def _make_loss(model, model_name, opts: Options, *, near, far):
    """loss_one(params, var [7], c2w0 [3, 4], q [], key, level) -> scalar.

    Ray slot j (of N = n_pixels) belongs to pixel g = j // sub and is offset by
    level.offsets[j] inside it; pixel g < n_int comes from the interest
    candidates, the others are uniform; pixels g >= N // sub are unused. A
    pixel's colour is the mean of its rays (a segment sum with static shapes).
    """
    n = opts.n_pixels
    focal_mask = jnp.asarray(_focal_mask(model_name))
    render = _render_fn(model)

    def loss_one(params, var, c2w0, q, key, lv: _Level):
        c2w = apply_twist(c2w0, var[:6], pivot=opts.pivot)
        p = lv.params[q] * jnp.where(focal_mask > 0, jnp.exp(var[6]), 1.0)
        k_int, k_uni = jax.random.split(key)
        wh = lv.sizes[q]
        g = jnp.arange(n)
        interest = lv.cand[q, jax.random.randint(k_int, (n,), 0, lv.cand.shape[1])]
        uniform = jnp.minimum(jnp.floor(jax.random.uniform(k_uni, (n, 2)) * wh).astype(jnp.int32), wh - 1)
        pix = jnp.where((g < lv.n_int)[:, None], interest, uniform)  # [n, 2] pixel of each group g
        n_groups = n // lv.sub
        group = g // lv.sub  # the pixel of each ray slot
        rays = cam_lib.rays_from_pixels(model_name, p, c2w[None], jnp.zeros((n,), jnp.int32),
                                        pix[group].astype(jnp.float32) + lv.offsets, near=near, far=far)
        rgb = jax.ops.segment_sum(render(params, rays), group, num_segments=n) / lv.sub.astype(jnp.float32)
        target = lv.images[q, pix[:, 1], pix[:, 0]]
        per_pixel = robust_loss(rgb - target, kind=opts.loss, scale=opts.loss_scale)
        return jnp.sum(jnp.where(g < n_groups, per_pixel, 0.0)) / n_groups.astype(jnp.float32)

    return loss_one


def _make_eval(model, model_name, pivot: str, *, near, far):
    """eval_one(params, var, c2w0, q, pix [E, 2], valid [E], images, cam_params) -> sums [5].

    Renders each evaluation pixel and its right and lower neighbours; returns
    (sum of squared colour error, count, sum g_r . g_p, sum |g_r|^2, sum |g_p|^2)
    over valid pixels, g_r / g_p the forward-difference gradients of the grey
    render / photo (for the gradient correlation).
    """
    shifts = jnp.asarray([[0, 0], [1, 0], [0, 1]], jnp.int32)
    focal_mask = jnp.asarray(_focal_mask(model_name))
    render = _render_fn(model)

    def eval_one(params, var, c2w0, q, pix, valid, images, cam_params):
        c2w = apply_twist(c2w0, var[:6], pivot=pivot)
        p = cam_params[q] * jnp.where(focal_mask > 0, jnp.exp(var[6]), 1.0)
        pix3 = pix[None] + shifts[:, None]  # [3, E, 2]
        rays = cam_lib.rays_from_pixels(model_name, p, c2w[None], jnp.zeros(pix3.shape[:-1], jnp.int32),
                                        pix3.astype(jnp.float32), near=near, far=far)
        rgb = jnp.clip(render(params, rays), 0.0, 1.0)  # [3, E, 3]
        target = images[q, pix3[..., 1], pix3[..., 0]]
        se = jnp.sum(jnp.square(rgb[0] - target[0]), axis=-1) / 3.0
        g_r = jnp.mean(rgb[1:] - rgb[:1], axis=-1)  # [2, E]
        g_p = jnp.mean(target[1:] - target[:1], axis=-1)
        w = valid.astype(jnp.float32)
        return jnp.stack([jnp.sum(w * se), jnp.sum(w), jnp.sum(w * g_r * g_p), jnp.sum(w * g_r * g_r),
                          jnp.sum(w * g_p * g_p)])

    return eval_one


def localize(model, params, cfg, queries: Sequence[tuple], *, near: float | None = None, far: float | None = None,
             factor: int | None = None, threshold_psnr: float | None = None, threshold_ncc: float | None = None,
             mesh=None, progress: bool = True, log: Callable[[str], None] | None = None,
             callback: Callable | None = None, callback_every: int = 10, **options) -> list[dict]:
    """Refine the pose of each query photo against a frozen field.

    model, params : the Flax model (or any object with the same `apply`) and its params.
    cfg           : the training configs.Config (for near/far and factor defaults), or None.
    queries       : (name, image float [H, W, 3] in [0, 1] at full resolution, Camera of
                    that resolution, c2w_init [3, 4] normalized frame[, start label]).
    near, far     : ray bounds (normalized frame); default cfg.ray_near / cfg.ray_far.
    factor        : base downsampling of the photos (default cfg.factor, the training factor).
    threshold_psnr, threshold_ncc : the convergence thresholds (see the module docstring;
                    `step.calibrate` derives them); default Options.min_psnr / min_ncc.
    mesh          : problems are split over its 'data' axis (default: all devices).
    callback      : called as callback(step, c2w [Q, restarts, 3, 4]) every `callback_every`
                    steps and after the last (diagnostics, tests).
    options       : fields of `Options` (iters, n_pixels, restarts, loss, ...).

    Returns one dict per query: name, c2w [3, 4] (normalized), photometric_error
    (MSE on the evaluation grid), psnr, gradient_ncc, psnr_start and
    gradient_ncc_start (of the start itself), converged, threshold_psnr,
    threshold_ncc, start_used, restart (index of the winner; 0 is the
    unperturbed start), focal_scale, seconds (of the whole call).
    """
    opts = Options(**options)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not queries:
        return []
    t_start = time.perf_counter()
    if cfg is None and (near is None or far is None):
        raise ValueError("localize needs near= and far= when cfg is None")
    near = float(cfg.ray_near if near is None else near)
    far = float(cfg.ray_far if far is None else far)
    factor = int(factor if factor is not None else (cfg.factor if cfg is not None else 1))
    names, images, cameras, starts, labels = _unpack_queries(queries)
    model_name = _levels_model(cameras, [factor * m for m in (1, *opts.coarse_to_fine)])
    rng = np.random.default_rng(opts.seed)
    c2w0 = _problem_starts(starts, opts, rng)
    place = _Placement(parallel.make_mesh() if mesh is None else mesh, c2w0.shape[0] * c2w0.shape[1])
    shape = (max(im.shape[0] // factor for im in images), max(im.shape[1] // factor for im in images))
    build = functools.partial(_build_level, images, cameras, model_name, factor, opts=opts, rng=rng, shape=shape)
    params = jax.device_put(params, place.rep)
    c2w0_d = place.put(c2w0.reshape(-1, 3, 4).astype(np.float32))
    qidx = place.put(np.repeat(np.arange(len(queries)), opts.restarts).astype(np.int32))
    var = _optimize(model, params, model_name, opts, build, c2w0, c2w0_d, qidx, place, near=near, far=far,
                    progress=progress, log=log, callback=callback, callback_every=callback_every, factor=factor)

    # Evaluation on a fixed grid of the base-level images, at the start and at the end.
    base = jax.device_put(build(1), place.rep)  # as score_poses
    eval_fn = _eval_fn(model, model_name, opts.pivot, near, far, place.mesh)
    pix, valid = _eval_grids(base, opts.n_eval)
    B, R = place.size, opts.restarts
    end = _evaluate(eval_fn, params, var, c2w0_d, qidx, pix, valid, base, opts, place.shard, B, R)
    start = _evaluate(eval_fn, params, jnp.zeros_like(var), c2w0_d, qidx, pix, valid, base, opts, place.shard, B, R)
    thresholds = (opts.min_psnr if threshold_psnr is None else float(threshold_psnr),
                  opts.min_ncc if threshold_ncc is None else float(threshold_ncc))
    var_np = np.asarray(var, np.float64)[:B].reshape(len(queries), R, NUM_VARS)
    return _results(names, labels, c2w0, var_np, start, end, opts, thresholds, time.perf_counter() - t_start)


def _unpack_queries(queries: Sequence[tuple]):
    """names, images float32 [H, W, 3], cameras, starts [Q, 3, 4], start labels of `localize`'s queries."""
    names = [q[0] for q in queries]
    images = [np.asarray(q[1], np.float32) for q in queries]
    cameras = [q[2] for q in queries]
    starts = np.stack([np.asarray(q[3], np.float64).reshape(3, 4) for q in queries])
    labels = [q[4] if len(q) > 4 else "given" for q in queries]
    for name, im, cam in zip(names, images, cameras):
        if im.ndim != 3 or im.shape[-1] != 3:
            raise ValueError(f"query {name}: image must be [H, W, 3], got {im.shape}")
        if (cam.width, cam.height) != (im.shape[1], im.shape[0]):
            raise ValueError(f"query {name}: camera is {cam.width}x{cam.height} but the image is "
                             f"{im.shape[1]}x{im.shape[0]}; scale the camera to the photo (cameras.scale_camera)")
    return names, images, cameras, starts, labels


def _problem_starts(starts, opts: Options, rng) -> np.ndarray:
    """c2w0 [Q, R, 3, 4]: restart r of query q is problem q * R + r; restart 0 is the start itself."""
    Q, R = len(starts), opts.restarts
    c2w0 = np.zeros((Q, R, 3, 4))
    for q in range(Q):
        c2w0[q, 0] = starts[q]
        for r in range(1, R):
            c2w0[q, r] = perturb_pose(starts[q], rng, rot_deg=opts.restart_rot_deg, trans=opts.restart_trans)
    return c2w0


class _Placement:
    """Problems split over the mesh's data axis: `size` problems padded to a multiple of the devices
    (copies of the last one) by `put`; `rep` replicates."""

    def __init__(self, mesh, size: int):
        self.mesh, self.size = mesh, size
        self.padded = math.ceil(size / mesh.devices.size) * mesh.devices.size
        self.shard = NamedSharding(mesh, P(parallel.DATA_AXIS))
        self.rep = NamedSharding(mesh, P())

    def put(self, x):
        x = np.asarray(x)
        if self.padded > self.size:
            x = np.concatenate([x, np.repeat(x[-1:], self.padded - self.size, 0)])
        return jax.device_put(jnp.asarray(x), self.shard)


def _optimize(model, params, model_name, opts: Options, build, c2w0, c2w0_d, qidx, place: _Placement, *, near,
              far, progress, log, callback, callback_every, factor):
    """The coarse-to-fine Adam loop over every problem at once; returns the optimized vector [B_pad, 7]."""
    Q, R = c2w0.shape[:2]
    var = place.put(np.zeros((place.size, NUM_VARS), np.float32))
    step_fn, tx, opt_shard = _train_step_fn(model, model_name, opts, near, far, place.mesh)
    opt_state = jax.device_put(tx.init(var), opt_shard)
    key = jax.random.PRNGKey(opts.seed)
    levels = opts.coarse_to_fine
    per_level = [opts.iters // len(levels)] * len(levels)
    per_level[-1] += opts.iters - sum(per_level)
    bar = progress_bar(opts.iters, desc="localize", enabled=progress)
    step = 0
    for mult, n_iters in zip(levels, per_level):
        if n_iters == 0:
            continue
        lv = jax.device_put(build(mult), place.rep)
        losses = None
        for _ in range(n_iters):
            var, opt_state, losses = step_fn(params, var, opt_state, c2w0_d, qidx, jax.random.fold_in(key, step), lv)
            step += 1
            if bar is not None:
                bar.update(1)
            if callback is not None and (step % callback_every == 0 or step == opts.iters):
                v = np.asarray(var, np.float64)[:place.size].reshape(Q, R, NUM_VARS)
                callback(step, apply_twist(c2w0, v[..., :6], pivot=opts.pivot))
        log(f"localize: level x{factor * mult}: {n_iters} iterations, {int(lv.sub)} ray(s) per pixel, "
            f"mean loss {float(np.mean(np.asarray(losses)[:place.size])):.5f}")
    if bar is not None:
        bar.close()
    return var


def _results(names, labels, c2w0, var_np, start: dict, end: dict, opts: Options, thresholds, seconds) -> list[dict]:
    """One dict per query (see `localize`): the restart with the lowest evaluation MSE wins."""
    thr_psnr, thr_ncc = thresholds
    results = []
    for q, name in enumerate(names):
        best = int(np.argmin(end["mse"][q]))
        psnr = float(psnr_from_mse(end["mse"][q, best]))
        ncc = float(end["ncc"][q, best])
        results.append({
            "name": name,
            "c2w": apply_twist(c2w0[q, best], var_np[q, best, :6], pivot=opts.pivot),
            "photometric_error": float(end["mse"][q, best]),
            "psnr": psnr,
            "gradient_ncc": ncc,
            "psnr_start": float(psnr_from_mse(start["mse"][q, 0])),
            "gradient_ncc_start": float(start["ncc"][q, 0]),
            "converged": bool(np.isfinite(psnr) and psnr >= thr_psnr and ncc >= thr_ncc),
            "threshold_psnr": thr_psnr,
            "threshold_ncc": thr_ncc,
            "start_used": labels[q],
            "restart": best,
            "focal_scale": float(np.exp(var_np[q, best, 6])),
            "seconds": seconds,
        })
    return results


def _eval_grids(base: _Level, n_eval: int):
    """(pix [Q, E, 2], valid [Q, E]): the fixed evaluation grid of each image of `base`."""
    # The grid leaves out the last column and row: gradients need the right and lower neighbours.
    grids = [eval_grid(int(w) - 1, int(h) - 1, n_eval) for w, h in np.asarray(base.sizes)]
    e_max = max(len(g) for g in grids)
    pix = np.zeros((len(grids), e_max, 2), np.int32)
    valid = np.zeros((len(grids), e_max), bool)
    for q, g in enumerate(grids):
        pix[q, : len(g)] = g
        valid[q, : len(g)] = True
    return pix, valid


# The jitted functions are cached per model and settings, so repeated calls (calibration, many
# query batches, tests) compile once per array shape.
@functools.lru_cache(maxsize=8)
def _eval_fn(model, model_name: str, pivot: str, near: float, far: float, mesh) -> Callable:
    shard, rep = NamedSharding(mesh, P(parallel.DATA_AXIS)), NamedSharding(mesh, P())
    return jax.jit(jax.vmap(_make_eval(model, model_name, pivot, near=near, far=far),
                            in_axes=(None, 0, 0, 0, 0, 0, None, None)),
                   in_shardings=(rep, shard, shard, shard, shard, shard, rep, rep), out_shardings=shard)


@functools.lru_cache(maxsize=8)
def _train_step_fn(model, model_name: str, opts: Options, near: float, far: float, mesh):
    """(jitted step(params, var, opt_state, c2w0, qidx, key, level) -> (var, opt_state, losses), tx, opt sharding)."""
    shard, rep = NamedSharding(mesh, P(parallel.DATA_AXIS)), NamedSharding(mesh, P())
    lr_vec = jnp.asarray([opts.lr_rot] * 3 + [opts.lr_trans] * 3 + [opts.lr_focal if opts.refine_focal else 0.0],
                         jnp.float32)
    decay = opts.lr_final_mult ** (1.0 / max(opts.iters - 1, 1))
    tx = optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                     optax.scale_by_schedule(lambda step: decay ** step.astype(jnp.float32)))
    # Adam's moments are [B, 7] (split like the problems); its step count is a replicated scalar.
    opt_shard = jax.tree_util.tree_map(lambda x: shard if jnp.ndim(x) else rep, tx.init(jnp.zeros((1, NUM_VARS))))
    loss_one = _make_loss(model, model_name, opts, near=near, far=far)

    def train_step(params, var, opt_state, c2w0, qidx, key, lv):
        keys = jax.random.split(key, var.shape[0])

        def total(var):
            losses = jax.vmap(loss_one, in_axes=(None, 0, 0, 0, 0, None))(params, var, c2w0, qidx, keys, lv)
            return jnp.sum(losses), losses  # a sum: each problem's gradient is its own

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(var)
        grads = jnp.where(jnp.isfinite(grads), grads, 0.0)  # a NaN render must not poison Adam
        updates, opt_state = tx.update(grads, opt_state)
        return var - lr_vec * updates, opt_state, losses

    step = jax.jit(train_step, in_shardings=(rep, shard, opt_shard, shard, shard, rep, rep),
                   out_shardings=(shard, opt_shard, shard), donate_argnums=(1, 2))
    return step, tx, opt_shard


def score_poses(model, params, images: Sequence[np.ndarray], cameras: Sequence[Camera], c2w, *, near: float,
                far: float, factor: int = 1, mesh=None, problems: int | None = None,
                **options) -> dict[str, np.ndarray]:
    """Photometric scores of photos [H, W, 3] (full resolution) at poses c2w [N, 3, 4] (normalized frame).

    The same measurement as `localize`'s final one: on a fixed grid of about
    n_eval pixels of each photo downsampled by `factor`. Returns {'mse', 'psnr',
    'ncc'} [N], ncc the correlation of the grey forward-difference gradients of
    render and photo (1: aligned detail, ~0: unrelated). `problems` pads the
    batch to that many poses (the results are the same): with as many photos
    as `localize` has queries and problems = queries x restarts, both calls
    share one compiled evaluation (about 9 s of XLA compile on a CPU).
    """
    opts = Options(**options)
    n = len(images)
    if n == 0:
        return {"mse": np.zeros(0), "psnr": np.zeros(0), "ncc": np.zeros(0)}
    images = [np.asarray(im, np.float32) for im in images]
    model_name = _levels_model(list(cameras), [factor])
    mesh = parallel.make_mesh() if mesh is None else mesh
    shard, rep = NamedSharding(mesh, P(parallel.DATA_AXIS)), NamedSharding(mesh, P())
    n_pad = math.ceil(max(n, problems or 0) / mesh.devices.size) * mesh.devices.size
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], n_pad - n, 0)]) if n_pad > n else x  # noqa: E731
    shape = (max(im.shape[0] // factor for im in images), max(im.shape[1] // factor for im in images))
    base = jax.device_put(_build_level(images, list(cameras), model_name, factor, 1, opts,
                                       np.random.default_rng(0), shape), rep)
    fn = _eval_fn(model, model_name, opts.pivot, float(near), float(far), mesh)
    pix, valid = _eval_grids(base, opts.n_eval)
    put = lambda x: jax.device_put(jnp.asarray(pad(np.asarray(x))), shard)  # noqa: E731
    out = _evaluate(fn, jax.device_put(params, rep), put(np.zeros((n, NUM_VARS), np.float32)),
                    put(np.asarray(c2w, np.float32).reshape(n, 3, 4)), put(np.arange(n, dtype=np.int32)), pix, valid,
                    base, opts, shard, n, 1)
    mse, ncc = out["mse"][:, 0], out["ncc"][:, 0]
    return {"mse": mse, "psnr": psnr_from_mse(mse), "ncc": ncc}


def _evaluate(fn, params, var, c2w0, qidx, pix, valid, lv: _Level, opts, shard, B, R) -> dict:
    """{'mse', 'ncc'} [Q, R] of every problem on its query's evaluation grid (chunked over pixels).

    Each call renders `chunk` pixels of every problem: at most eval_chunk, and at most
    eval_rays over all problems, so memory stays bounded however many queries and restarts.
    """
    q_np = np.asarray(qidx)
    sums = np.zeros((var.shape[0], 5))
    e = pix.shape[1]
    chunk = max(1, min(opts.eval_chunk, opts.eval_rays // var.shape[0], e))
    n_chunks = math.ceil(e / chunk)
    e_pad = n_chunks * chunk
    pix_p = np.concatenate([pix, np.zeros((pix.shape[0], e_pad - e, 2), np.int32)], axis=1)
    valid_p = np.concatenate([valid, np.zeros((valid.shape[0], e_pad - e), bool)], axis=1)
    for c in range(n_chunks):
        sl = slice(c * chunk, (c + 1) * chunk)
        p = jax.device_put(jnp.asarray(pix_p[q_np, sl]), shard)
        v = jax.device_put(jnp.asarray(valid_p[q_np, sl]), shard)
        sums += np.asarray(fn(params, var, c2w0, qidx, p, v, lv.images, lv.params), np.float64)
    sums = sums[:B]
    mse = sums[:, 0] / np.maximum(sums[:, 1], 1)
    # Uncentred correlation of the gradients; 0 where either image is flat.
    ncc = sums[:, 2] / np.maximum(np.sqrt(sums[:, 3] * sums[:, 4]), 1e-12)
    return {"mse": mse.reshape(-1, R), "ncc": ncc.reshape(-1, R)}
