"""Camera localization against a frozen radiance field (iNeRF-style pose refinement).

Given photos of a scene the field was trained on, find each photo's pose by
rendering a subset of its pixels at a candidate pose and descending the
photometric error with respect to the pose (Yen-Chen et al., "iNeRF", 2021).

Short names and shapes (see also types.py and rigid.py):
  twist   [..., 6]   (omega, v) pose update: rotation vector (radians) first, then
                     translation (normalized-frame units).
  var     [B, 7]     the optimized vector of each problem: twist and the log focal
                     scale (0 unless `refine_focal`).
  c2w0    [B, 3, 4]  the starting pose of each problem (normalized frame).
  problem            one (query, restart) pair; B = Q * restarts, batched with vmap.
  level              one round of the coarse-to-fine schedule: images (and the
                     camera) downsampled by factor * coarse_to_fine[level].

The pose update (`apply_twist`) is the exp map of the twist left-multiplied on
the starting pose, c2w = exp(twist) c2w0 (iNeRF; pivot='world'): in the
normalized frame of a 360 capture the world origin is the cameras' focus
point, so omega orbits the camera about what it looks at and v shifts it.
pivot='camera' uses C exp(twist) C^-1 c2w0 with C = [I | c0] instead (turn in
place, then move). Measured on the analytic test scene from 10 deg / 10 %
starts (120 iterations, Adam): 'world' reached 0.01-0.06 deg on 3 of 4 queries
where 'camera' was still at 1-3 deg, its rotation and translation being
nearly interchangeable for the image (a long, flat valley). Each problem has
its own Adam state (optax, elementwise) with separate learning rates for
rotation, translation and focal scale, decayed exponentially over all
iterations.

Pixel sampling: every step draws `n_pixels` rays per problem: a fraction
`uniform_fraction` uniformly over the image, the rest from interest regions
(iNeRF's interest-region sampling): pixels of high gradient magnitude
('edges') or FAST keypoints ('keypoints'), dilated by `dilate` pixels.
At a coarse level m > 1 each pixel is rendered as the mean of s x s sub-pixel
rays (s = min(m, supersample)) with n_pixels / s^2 pixels, so the render is
box-filtered like the downsampled target (hash-grid fields do not anti-alias
on their own) and the ray count per step stays constant.

Robust loss on the colour residual r = |rgb - target| per pixel (`loss`, with
scale c = `loss_scale`): 'mse' r^2, 'charbonnier' sqrt(r^2 + c^2), 'huber'
(quadratic below c), 'cauchy' c^2 log(1 + r^2 / c^2).

Selection and convergence: after optimization every problem is rendered on a
fixed evaluation pixel set (a regular grid of about `n_eval` pixels of the
base-level image, plus each pixel's right and lower neighbour); per query the
restart with the lowest MSE there wins. Two scores are reported: PSNR, and
`gradient_ncc`, the correlation of the grey forward-difference gradients of
photo and render (edges in the same places: 1 for an exact render, ~0 for
misaligned or unrelated content). `converged` = psnr >= threshold_psnr and
gradient_ncc >= threshold_ncc. PSNR alone is a poor judge on a blurry field:
on the demo's tiny field a query stuck 7 deg off scored 18.3 dB against 19.1-
19.5 dB at true poses, while its gradient correlation fell to 0.19 against
0.26-0.35 (and to ~0 at 7 deg off without optimization). The thresholds are
calibrated per field (`calibrate`, used by `localize_step`): the field's median
scores on a few held-out views (else training views) at their known poses,
threshold_ncc = ncc_fraction (0.5) x that correlation, threshold_psnr = that
PSNR - 3 dB. Without calibration `min_psnr` / `min_ncc` apply. Noise or a photo
of another scene fails both. The criterion is only as sharp as the field: a
field that cannot render fine detail cannot confirm a pose to a fraction of
a degree either (a 300-step tiny field, ~18 dB, passed a query 6.9 deg off
and failed one 0.75 deg off), and neither score pins the camera's depth
along its optical axis well.

Frames: `localize` works in the field's normalized frame; `to_original` /
`to_normalized` convert poses with a scene_io.normalize_scene transform.
Initial guesses for `localize_step`: a poses file, COLMAP absolute pose
registration (`register_with_colmap`) or the nearest training view by image
retrieval (`nearest_view`), in that order; each result says which was used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from nerflib import cameras as cam_lib
from nerflib import fileio, parallel, rigid
from nerflib.types import CAMERA_MODELS, Camera, Scene

LOSSES = ("mse", "charbonnier", "huber", "cauchy")
SAMPLINGS = ("edges", "keypoints", "uniform")
NUM_VARS = 7  # twist (6) + log focal scale


# --------------------------------------------------------------------------- poses


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


def perturb_pose(c2w, rng: np.random.Generator, *, rot_deg: float, trans: float) -> np.ndarray:
    """c2w [3, 4] turned about its centre by exactly rot_deg about a random axis and moved by `trans`."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    step = rng.normal(size=3)
    step /= np.linalg.norm(step)
    twist = np.concatenate([axis * math.radians(rot_deg), step * trans])
    # pivot='camera' with V(omega) v: rescale v so that the centre moves by exactly `trans`.
    T = rigid.exp_se3(twist)
    twist[3:] *= trans / max(np.linalg.norm(T[:3, 3]), 1e-12) if trans > 0 else 0.0
    return apply_twist(np.asarray(c2w, np.float64), twist, pivot="camera")


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


# --------------------------------------------------------------------------- losses and pixels


def robust_loss(residual, *, kind: str = "cauchy", scale: float = 0.1):
    """Per-pixel loss of colour residuals [..., 3] -> [...] (see the module docstring)."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    r2 = jnp.sum(jnp.square(residual), axis=-1)
    c2 = scale * scale
    if kind == "mse":
        return r2
    if kind == "charbonnier":
        return jnp.sqrt(r2 + c2)
    if kind == "cauchy":
        return c2 * jnp.log1p(r2 / c2)
    # Huber on r = |residual|; the double `where` keeps sqrt's gradient finite at 0.
    big = r2 > c2
    r = jnp.sqrt(jnp.where(big, r2, 1.0))
    return jnp.where(big, 2.0 * scale * r - c2, r2)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """float [H, W, 3] -> [H // f, W // f, 3] by area averaging (the pyramid's cv2.INTER_AREA)."""
    if factor == 1:
        return np.asarray(image, np.float32)
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(np.asarray(image, np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def interest_pixels(image: np.ndarray, count: int, rng: np.random.Generator, *, sampling: str = "edges",
                    dilate: int = 1, quantile: float = 0.7) -> np.ndarray:
    """`count` pixel indices (column, row) [count, 2] int32 drawn from interest regions of image [H, W, 3].

    'edges': gradient magnitude (Sobel on grey) at or above its `quantile`;
    'keypoints': FAST corners (falls back to edges with fewer than 8 corners);
    'uniform': every pixel. The region is dilated by `dilate` pixels, then
    `count` pixels are drawn from it with replacement (a fixed shape for jit).
    """
    import cv2

    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    h, w = image.shape[:2]
    gray = np.asarray(image, np.float32).mean(-1)
    mask = np.ones((h, w), bool)
    if sampling == "keypoints":
        fast = cv2.FastFeatureDetector_create(threshold=10)
        kps = fast.detect(np.clip(gray * 255, 0, 255).astype(np.uint8), None)
        if len(kps) >= 8:
            mask = np.zeros((h, w), bool)
            for kp in kps:
                x, y = int(round(kp.pt[0])), int(round(kp.pt[1]))
                mask[min(y, h - 1), min(x, w - 1)] = True
        else:
            sampling = "edges"
    if sampling == "edges":
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.hypot(gx, gy)
        thr = np.quantile(mag, quantile)
        mask = mag > thr if np.any(mag > thr) else mag >= thr  # '>' so flat images do not select everything
    if dilate > 0 and sampling != "uniform":
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        ys, xs = np.nonzero(np.ones((h, w), bool))
    pick = rng.integers(0, len(xs), count)
    return np.stack([xs[pick], ys[pick]], axis=-1).astype(np.int32)


def eval_grid(width: int, height: int, n_eval: int) -> np.ndarray:
    """A regular grid of about n_eval pixel indices (column, row) [E, 2] covering the image."""
    stride = max(1, math.ceil(math.sqrt(width * height / max(n_eval, 1))))
    xs = np.arange(stride // 2, width, stride)
    ys = np.arange(stride // 2, height, stride)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)
    return grid.astype(np.int32)


def psnr_from_mse(mse):
    return -10.0 * np.log10(np.maximum(np.asarray(mse, np.float64), 1e-10))


# --------------------------------------------------------------------------- the optimizer


@dataclasses.dataclass(frozen=True)
class Options:
    """Hyperparameters of `localize` (keyword arguments of the same names)."""

    iters: int = 300
    n_pixels: int = 512  # rays per problem and step.
    restarts: int = 3  # problems per query: the start itself, then perturbed copies.
    restart_rot_deg: float = 10.0  # perturbation of restarts 1.. (rotation about the camera centre) ...
    restart_trans: float = 0.1  # ... and translation (normalized units; cameras lie in the unit ball).
    coarse_to_fine: tuple[int, ...] = (4, 2, 1)  # extra downsampling per level; iterations split evenly.
    supersample: int = 2  # sub-pixel rays per axis at coarse levels (at most the level's factor).
    sampling: str = "edges"
    uniform_fraction: float = 0.25
    dilate: int = 1
    loss: str = "cauchy"
    loss_scale: float = 0.1
    lr_rot: float = 0.01  # Adam step sizes (radians, normalized units, log focal).
    lr_trans: float = 0.01
    lr_focal: float = 0.005
    lr_final_mult: float = 0.05  # exponential decay to lr * this at the last iteration.
    refine_focal: bool = False
    pivot: str = "world"  # see apply_twist; "world" (iNeRF) converged better on object-centric scenes.
    n_eval: int = 4096  # evaluation pixels per query (a regular grid of the base-level image).
    eval_chunk: int = 2048  # evaluation rays per problem per call.
    min_psnr: float = 20.0  # converged thresholds when `localize` is given none.
    min_ncc: float = 0.3
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "coarse_to_fine", tuple(int(m) for m in self.coarse_to_fine))

        def need(ok, what, value):
            if not ok:
                raise ValueError(f"localize: {what}, got {value!r}")

        need(self.iters >= 1, "iters must be >= 1", self.iters)
        need(self.n_pixels >= 1, "n_pixels must be >= 1", self.n_pixels)
        need(self.restarts >= 1, "restarts must be >= 1", self.restarts)
        need(len(self.coarse_to_fine) >= 1 and all(m >= 1 for m in self.coarse_to_fine),
             "coarse_to_fine must be a non-empty tuple of factors >= 1", self.coarse_to_fine)
        need(self.supersample >= 1, "supersample must be >= 1", self.supersample)
        need(self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}", self.sampling)
        need(0.0 <= self.uniform_fraction <= 1.0, "uniform_fraction must be in [0, 1]", self.uniform_fraction)
        need(self.loss in LOSSES, f"loss must be one of {LOSSES}", self.loss)
        need(self.loss_scale > 0, "loss_scale must be > 0", self.loss_scale)
        need(self.pivot in ("camera", "world"), "pivot must be 'camera' or 'world'", self.pivot)
        need(min(self.lr_rot, self.lr_trans, self.lr_focal) >= 0, "learning rates must be >= 0",
             (self.lr_rot, self.lr_trans, self.lr_focal))
        need(0 < self.lr_final_mult <= 1, "lr_final_mult must be in (0, 1]", self.lr_final_mult)
        need(self.n_eval >= 1 and self.eval_chunk >= 1, "n_eval and eval_chunk must be >= 1",
             (self.n_eval, self.eval_chunk))


def _focal_mask(model_name: str) -> np.ndarray:
    """[P] float: 1 where the camera parameter is a focal length."""
    return np.array([n in ("f", "fx", "fy") for n in CAMERA_MODELS[model_name]], np.float32)


def _render_fn(model) -> Callable:
    """render(params, rays [...]) -> rgb [..., 3] of the final round, deterministic.

    params are an argument of every jitted function here, never a closure
    constant (XLA would fold a whole network into the program).
    """
    kw = {"zero_glo": True} if _uses_glo(model) else {}

    def render(params, rays):
        renderings, _ = model.apply({"params": params}, rays, rng=None, train_frac=1.0, **kw)
        return renderings[-1]["rgb"]

    return render


def _uses_glo(model) -> bool:
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


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="it", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


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
                    `calibrate` derives them); default Options.min_psnr / min_ncc.
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
    if factor is None:
        factor = cfg.factor if cfg is not None else 1
    factor = int(factor)
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
    model_name = cam_lib.common_model(cameras)
    rng = np.random.default_rng(opts.seed)

    # Problems: restart r of query q is problem q * R + r; restart 0 is the start itself.
    Q, R = len(queries), opts.restarts
    c2w0 = np.zeros((Q, R, 3, 4))
    for q in range(Q):
        c2w0[q, 0] = starts[q]
        for r in range(1, R):
            c2w0[q, r] = perturb_pose(starts[q], rng, rot_deg=opts.restart_rot_deg, trans=opts.restart_trans)
    mesh = parallel.make_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    B = Q * R
    B_pad = math.ceil(B / n_dev) * n_dev
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], B_pad - B, 0)]) if B_pad > B else x  # noqa: E731
    shard = NamedSharding(mesh, P(parallel.DATA_AXIS))
    rep = NamedSharding(mesh, P())
    put = lambda x: jax.device_put(jnp.asarray(pad(np.asarray(x))), shard)  # noqa: E731
    c2w0_d = put(c2w0.reshape(B, 3, 4).astype(np.float32))
    qidx = put(np.repeat(np.arange(Q), R).astype(np.int32))
    var = put(np.zeros((B, NUM_VARS), np.float32))
    step_fn, tx, opt_shard = _train_step_fn(model, model_name, opts, float(near), float(far), mesh)
    opt_state = jax.device_put(tx.init(var), opt_shard)
    params = jax.device_put(params, rep)
    key = jax.random.PRNGKey(opts.seed)
    levels = opts.coarse_to_fine
    per_level = [opts.iters // len(levels)] * len(levels)
    per_level[-1] += opts.iters - sum(per_level)
    shape = (max(im.shape[0] // factor for im in images), max(im.shape[1] // factor for im in images))
    bar = _progress(opts.iters, progress, "localize")
    step = 0
    for mult, n_iters in zip(levels, per_level):
        if n_iters == 0:
            continue
        lv = jax.device_put(_build_level(images, cameras, model_name, factor, mult, opts, rng, shape), rep)
        losses = None
        for _ in range(n_iters):
            var, opt_state, losses = step_fn(params, var, opt_state, c2w0_d, qidx, jax.random.fold_in(key, step), lv)
            step += 1
            if bar is not None:
                bar.update(1)
            if callback is not None and (step % callback_every == 0 or step == opts.iters):
                v = np.asarray(var, np.float64)[:B].reshape(Q, R, NUM_VARS)
                callback(step, apply_twist(c2w0, v[..., :6], pivot=opts.pivot))
        log(f"localize: level x{factor * mult}: {n_iters} iterations, {int(lv.sub)} ray(s) per pixel, "
            f"mean loss {float(np.mean(np.asarray(losses)[:B])):.5f}")
    if bar is not None:
        bar.close()

    # Evaluation on a fixed grid of the base-level images, at the start and at the end.
    base = _build_level(images, cameras, model_name, factor, 1, opts, rng, shape)
    eval_fn = _eval_fn(model, model_name, opts.pivot, float(near), float(far), mesh)
    pix, valid = _eval_grids(base, opts.n_eval)
    end = _evaluate(eval_fn, params, var, c2w0_d, qidx, pix, valid, base, opts, shard, B, R)
    start = _evaluate(eval_fn, params, jnp.zeros_like(var), c2w0_d, qidx, pix, valid, base, opts, shard, B, R)
    thr_psnr = opts.min_psnr if threshold_psnr is None else float(threshold_psnr)
    thr_ncc = opts.min_ncc if threshold_ncc is None else float(threshold_ncc)
    var_np = np.asarray(var, np.float64)[:B].reshape(Q, R, NUM_VARS)
    seconds = time.perf_counter() - t_start
    results = []
    for q in range(Q):
        best = int(np.argmin(end["mse"][q]))
        c2w = apply_twist(c2w0[q, best], var_np[q, best, :6], pivot=opts.pivot)
        psnr = float(psnr_from_mse(end["mse"][q, best]))
        ncc = float(end["ncc"][q, best])
        results.append({
            "name": names[q],
            "c2w": c2w,
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
                far: float, factor: int = 1, mesh=None, **options) -> dict[str, np.ndarray]:
    """Photometric scores of photos [H, W, 3] (full resolution) at poses c2w [N, 3, 4] (normalized frame).

    The same measurement as `localize`'s final one: on a fixed grid of about
    n_eval pixels of each photo downsampled by `factor`. Returns {'mse', 'psnr',
    'ncc'} [N], ncc the correlation of the grey forward-difference gradients of
    render and photo (1: aligned detail, ~0: unrelated).
    """
    opts = Options(**options)
    n = len(images)
    if n == 0:
        return {"mse": np.zeros(0), "psnr": np.zeros(0), "ncc": np.zeros(0)}
    images = [np.asarray(im, np.float32) for im in images]
    model_name = cam_lib.common_model(list(cameras))
    mesh = parallel.make_mesh() if mesh is None else mesh
    shard, rep = NamedSharding(mesh, P(parallel.DATA_AXIS)), NamedSharding(mesh, P())
    n_pad = math.ceil(n / mesh.devices.size) * mesh.devices.size
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
    """{'mse', 'ncc'} [Q, R] of every problem on its query's evaluation grid (chunked over pixels)."""
    q_np = np.asarray(qidx)
    sums = np.zeros((var.shape[0], 5))
    e = pix.shape[1]
    chunk = min(opts.eval_chunk, e)
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


# --------------------------------------------------------------------------- initial guesses


def _thumbnail(image: np.ndarray, size=(32, 24)) -> np.ndarray:
    """Zero-mean, unit-norm grey thumbnail [size[1] * size[0]] (float64) for retrieval."""
    import cv2

    gray = np.asarray(image, np.float32).mean(-1)
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    small -= small.mean()
    return small / max(np.linalg.norm(small), 1e-12)


def nearest_view(image: np.ndarray, references: Sequence[np.ndarray]) -> tuple[int, float]:
    """(index, correlation) of the reference image [h, w, 3] most like `image` (grey thumbnail correlation)."""
    if not len(references):
        raise ValueError("nearest_view needs at least one reference image")
    t = _thumbnail(image)
    scores = np.array([float(t @ _thumbnail(r)) for r in references])
    best = int(np.argmax(scores))
    return best, float(scores[best])


def _pycolmap_camera(camera: Camera):
    import pycolmap

    return pycolmap.Camera(model=camera.model, width=int(camera.width), height=int(camera.height),
                           params=list(camera.params))


def _sift(image: np.ndarray, max_num_features: int = 8192):
    """(keypoints [M, 2] xy (COLMAP pixel convention), descriptors [M, 128] float32 unit rows) by pycolmap SIFT.

    Grey = Rec. 709 luma of the 8-bit RGB photo: with it the keypoints and
    descriptors equal those COLMAP's own extraction stored in its database
    (checked on the demo scene: 200 of 200 keypoints, cosine 1.0).
    """
    import warnings

    import pycolmap

    gray = np.asarray(image, np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    gray = np.ascontiguousarray(np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8))
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_num_features)
    opts.sift.first_octave = -1 if max(gray.shape) <= 1024 else 0  # as sfm.py chooses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycolmap.Sift: the array API that is documented
        sift = pycolmap.Sift(opts, device=pycolmap.Device.cpu)
    kp, desc = sift.extract(gray)
    desc = np.asarray(desc, np.float32)
    return np.asarray(kp)[:, :2], desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def _reference_bank(rec, database, image_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors [M, 128] unit rows, points3D [M, 3], point ids [M]): one row per observation of a 3D point.

    Descriptors come from the SfM database (its keypoint order is the
    reconstruction's points2D order); without one, SIFT is run again on the
    images in image_dir and each observation takes the descriptor of the
    keypoint within 1.5 px.
    """
    import contextlib

    import pycolmap

    descs, xyz, ids = [], [], []
    db = pycolmap.Database.open(str(database)) if database is not None else None
    with contextlib.ExitStack() as stack:
        if db is not None:
            stack.callback(db.close)
        for image in rec.images.values():
            pts = [(i, p) for i, p in enumerate(image.points2D) if p.has_point3D()]
            if not pts:
                continue
            idx = np.array([i for i, _ in pts])
            pid = np.array([p.point3D_id for _, p in pts])
            p3d = np.array([rec.points3D[k].xyz for k in pid])
            if db is not None:
                try:
                    d = np.asarray(db.read_descriptors(db.read_image_with_name(image.name).image_id).data, np.float32)
                except Exception:
                    continue
                d = d[idx]
            else:
                if image_dir is None or not (Path(image_dir) / image.name).is_file():
                    continue
                from nerflib.images import load_image

                kp, dd = _sift(load_image(Path(image_dir) / image.name))
                xy = np.array([p.xy for _, p in pts])
                dist = np.linalg.norm(xy[:, None, :] - kp[None, :, :], axis=-1)
                near = dist.argmin(1)
                ok = dist[np.arange(len(xy)), near] < 1.5
                d, p3d, pid = dd[near[ok]], p3d[ok], pid[ok]
            descs.append(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12))
            xyz.append(p3d)
            ids.append(pid)
    if not descs:
        return np.zeros((0, 128), np.float32), np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(descs).astype(np.float32), np.concatenate(xyz), np.concatenate(ids)


def register_with_colmap(query_images: dict[str, np.ndarray], sparse_dir, *, cameras: dict[str, Camera],
                         database=None, image_dir=None, ratio: float = 0.8, min_inliers: int = 20,
                         log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Absolute poses of query photos against a COLMAP model (original frame).

    query_images : name -> float [H, W, 3]; cameras: name -> Camera of that photo.
    sparse_dir   : the COLMAP model (with 3D points); database: its database.db
                   (descriptors), else image_dir to re-extract them.
    Matches query SIFT to the model's 3D-point observations (ratio test), then
    pycolmap.estimate_and_refine_absolute_pose (LO-RANSAC + refinement).
    Returns name -> {'c2w' [3, 4], 'num_inliers', 'num_matches'} for the photos
    registered with at least `min_inliers` inliers (others are left out).
    """
    import cv2
    import pycolmap

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rec = pycolmap.Reconstruction(str(sparse_dir))
    bank, xyz, ids = _reference_bank(rec, database, image_dir)
    if len(bank) < min_inliers:
        log(f"register_with_colmap: {sparse_dir} has {len(bank)} usable 3D-point descriptors: nothing to match")
        return {}
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    out = {}
    for name, image in query_images.items():
        kp, desc = _sift(image)
        if len(kp) < min_inliers:
            continue
        # Ratio test against the nearest descriptor of *another* 3D point: the bank holds
        # every observation, so the runner-up is often the same point seen from elsewhere.
        good = []
        for cand in matcher.knnMatch(desc, bank, k=8):
            rival = next((m for m in cand[1:] if ids[m.trainIdx] != ids[cand[0].trainIdx]), None) if cand else None
            if cand and (rival is None or cand[0].distance < ratio * rival.distance):
                good.append(cand[0])
        if len(good) < min_inliers:
            log(f"register_with_colmap: {name}: {len(good)} matches after the ratio test")
            continue
        pts2d = np.array([kp[m.queryIdx] for m in good], np.float64)
        pts3d = np.array([xyz[m.trainIdx] for m in good], np.float64)
        est = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, _pycolmap_camera(cameras[name]))
        n_in = int(est["num_inliers"]) if est else 0
        log(f"register_with_colmap: {name}: {len(good)} matches, {n_in} inliers")
        if est is None or n_in < min_inliers:
            continue
        w2c = np.asarray(est["cam_from_world"].matrix(), np.float64)
        R, t = w2c[:, :3], w2c[:, 3]
        out[name] = {"c2w": np.concatenate([R.T, (-R.T @ t)[:, None]], axis=1), "num_inliers": n_in,
                     "num_matches": len(good)}
    return out


# --------------------------------------------------------------------------- the pipeline step


def _normalization_of(cfg, scene: Scene):
    """(normalized scene, transform or None, cfg) exactly as training normalized it (steps._load_split)."""
    from nerflib import scene_io

    if scene.forward_facing and cfg.normalize == "360":
        cfg = dataclasses.replace(cfg, normalize="forward")
    if cfg.normalize is None:
        return scene, None, cfg
    norm_scene, transform = scene_io.normalize_scene(scene, mode=cfg.normalize)
    return norm_scene, transform, cfg


def _query_camera(name: str, image: np.ndarray, pose_cams: dict[str, Camera], scene: Scene) -> Camera:
    h, w = image.shape[:2]
    if name in pose_cams:
        cam = pose_cams[name]
        if (cam.width, cam.height) != (w, h):
            raise ValueError(f"query {name}: the poses file gives a {cam.width}x{cam.height} camera for a "
                             f"{w}x{h} photo")
        return cam
    cam = scene.cameras[0]
    sx, sy = w / cam.width, h / cam.height
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise ValueError(f"query {name}: {w}x{h} does not have the aspect ratio of the scene's camera "
                         f"({cam.width}x{cam.height}); give its intrinsics in a poses file (query_poses=)")
    params = dict(zip(CAMERA_MODELS[cam.model], cam.params))
    scaled = tuple(v * (sx if n in ("f", "fx", "cx") else sy if n in ("fy", "cy") else 1.0)
                   for n, v in params.items())
    return Camera(cam.model, w, h, scaled)


def calibrate(model, params, cfg, norm_scene: Scene, image_dir, *, near, far, mesh=None, ncc_fraction: float = 0.5,
              psnr_margin_db: float = 3.0, max_views: int = 4, log=None, **options) -> dict | None:
    """Convergence thresholds from what the field achieves at known poses (None without images).

    Scores up to `max_views` held-out views of the scene (the training split
    when there are none) at their own poses with `score_poses`; the medians
    are the field's reference quality on photos it can explain. A localized
    query counts as converged when its gradient correlation reaches
    `ncc_fraction` of the reference and its PSNR is within `psnr_margin_db`
    of it. (Measured on the demo's tiny field: at the true pose queries reach
    0.26-0.35 gradient correlation, 1-3 degrees off 0.02-0.25, 7 degrees off
    ~0; PSNR moves by 1-5 dB over the same range, less on a blurry field.)
    """
    from nerflib import datasets

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if image_dir is None:
        return None
    # image_dir holds the photos at the training factor; the dataset's cameras are scaled to match.
    kw = dict(image_dir=image_dir, factor=cfg.factor, white_background=cfg.white_background, normalize=None,
              near=near, far=far, lazy=True)
    ds = None
    for split, every in (("test", cfg.test_every), ("all", 0)):
        try:
            ds = datasets.load_dataset(norm_scene, split=split, test_every=every, **kw)
        except ValueError as e:
            log(f"localize: calibration views ({split}): {e}")
            continue
        if len(ds):
            break
    if ds is None or not len(ds):
        return None
    pick = np.linspace(0, len(ds) - 1, min(max_views, len(ds))).round().astype(int)
    ims = [ds.image_float(int(i)) for i in pick]
    cams = [ds.cameras[int(i)] for i in pick]
    s = score_poses(model, params, ims, cams, ds.c2w[pick], near=near, far=far, factor=1, mesh=mesh, **options)
    ref_psnr, ref_ncc = float(np.median(s["psnr"])), float(np.median(s["ncc"]))
    out = {"views": [ds.names[int(i)] for i in pick], "split": ds.split, "reference_psnr": ref_psnr,
           "reference_ncc": ref_ncc, "threshold_psnr": ref_psnr - psnr_margin_db,
           "threshold_ncc": ncc_fraction * ref_ncc}
    log(f"localize: the field at the known poses of {len(pick)} {ds.split} view(s): PSNR {ref_psnr:.2f} dB, "
        f"gradient correlation {ref_ncc:.3f}; converged means PSNR >= {out['threshold_psnr']:.2f} and "
        f"correlation >= {out['threshold_ncc']:.3f}")
    return out


ERRORS_COLUMNS = ("name", "rot_err_deg", "trans_err_pct", "rot_err_start_deg", "trans_err_start_pct", "psnr",
                  "gradient_ncc", "converged", "start_used")


def _errors_tsv(rows: list[dict]) -> str:
    """One row per query with ground truth, then 'median' (and converged as a count)."""
    cols = ERRORS_COLUMNS
    lines = ["\t".join(cols)]
    for r in rows:
        lines.append("\t".join(str(r[c]) if isinstance(r[c], (str, bool)) else f"{r[c]:.4f}" for c in cols))
    if rows:
        num = cols[1:7]
        med = {c: float(np.median([r[c] for r in rows])) for c in num}
        conv = sum(r["converged"] for r in rows)
        lines.append("\t".join(["median"] + [f"{med[c]:.4f}" for c in num] + [f"{conv}/{len(rows)}", ""]))
    return "\n".join(lines) + "\n"


def localize_step(model_dir, scene_json, query_dir, out_dir, *, images=None, query_poses=None, gt_poses=None,
                  sparse_dir=None, database=None, ncc_fraction: float = 0.5, psnr_margin_db: float = 3.0,
                  progress: bool = True, write_views: bool = True, log: Callable[[str], None] | None = None,
                  **options) -> dict:
    """Localize every photo in `query_dir` against the trained field in `model_dir`.

    scene_json : the scene the field was trained on (poses/scene.json, original frame).
    images     : the training images at the training factor (for nearest-view starts
                 and the calibration); default: the scene's image folder.
    query_poses: optional poses file (scene_io.load_poses formats) with initial poses
                 (and intrinsics) of the queries, in the scene's original frame.
    gt_poses   : optional ground-truth poses file (same frame) -> errors.tsv.
    sparse_dir, database : COLMAP model (and its database.db) for `register_with_colmap`.
    ncc_fraction, psnr_margin_db : the convergence thresholds relative to the field's
                 reference quality (`calibrate`).
    options    : `Options` fields.

    Writes out_dir/poses.json (scene.json format: camera-to-world, OpenCV axes, the
    scene's original frame, readable with scene_io.read_scene_json; per frame also
    psnr, gradient_ncc, photometric_error, converged, start_used, ...; at the top
    the calibration), out_dir/errors.tsv (with gt_poses: rotation error in degrees,
    camera-centre error in % of the scene radius, i.e. of the largest camera
    distance from the scene centre) and out_dir/views/<stem>.png (photo | render at
    the found pose | |difference|, at the training factor). Returns a summary dict.
    """
    from nerflib import checkpoint, evaluate, models, scene_io
    from nerflib import images as images_mod

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    out_dir, query_dir = Path(out_dir), Path(query_dir)
    opts = Options(**options)
    mesh = parallel.make_mesh()
    cfg, params, ckpt_step = checkpoint.restore_params(model_dir, mesh)
    scene = scene_io.read_scene_json(scene_json)
    norm_scene, norm, cfg = _normalization_of(cfg, scene)
    near = cfg.near if cfg.near is not None else (norm_scene.near if norm_scene.near is not None else cfg.model.near)
    far = cfg.far if cfg.far is not None else (norm_scene.far if norm_scene.far is not None else cfg.model.far)
    model = models.make_model(cfg.model, num_images=evaluate.num_images_of(params, max(1, len(scene))))
    image_dir = Path(images) if images is not None else (Path(scene.image_dir) if scene.image_dir else None)

    names = images_mod.list_images(query_dir)
    photos = {n: images_mod.load_image(query_dir / n, background="white" if cfg.white_background else "black")
              for n in names}
    given = scene_io.load_poses(query_poses, check_images=False) if query_poses else None
    pose_cams = {n: given.camera_of(i) for i, n in enumerate(given.names)} if given is not None else {}
    gt = scene_io.load_poses(gt_poses, check_images=False) if gt_poses else None
    if gt is not None and not pose_cams:
        pose_cams = {n: gt.camera_of(i) for i, n in enumerate(gt.names)}  # intrinsics only, never poses
    cams = {n: _query_camera(n, photos[n], pose_cams, scene) for n in names}

    # Initial guesses (original frame), most trusted first.
    starts: dict[str, tuple[np.ndarray, str]] = {}
    if given is not None:
        for i, n in enumerate(given.names):
            if n in photos:
                starts[n] = (given.c2w[i], "pose_file")
    todo = [n for n in names if n not in starts]
    if todo and sparse_dir is not None and Path(sparse_dir).is_dir():
        try:
            db = database if database and Path(database).is_file() else None  # else: re-extract from images
            reg = register_with_colmap({n: photos[n] for n in todo}, sparse_dir, cameras=cams, database=db,
                                       image_dir=image_dir, log=log)
        except Exception as e:  # a broken model or database must not stop the fallback
            log(f"localize: COLMAP registration failed ({type(e).__name__}: {e}); using nearest views")
            reg = {}
        for n, r in reg.items():
            starts[n] = (r["c2w"], "colmap")
    todo = [n for n in names if n not in starts]
    if todo:
        if image_dir is None:
            raise ValueError(f"no initial pose for {len(todo)} queries (e.g. {todo[0]}) and no training images "
                             "for nearest-view retrieval; pass query_poses=, sparse_dir= or images=")
        refs = [images_mod.load_image(image_dir / n) for n in scene.names]
        for n in todo:
            k, score = nearest_view(photos[n], refs)
            starts[n] = (scene.c2w[k], f"nearest_view:{scene.names[k]}")
            log(f"localize: {n}: nearest training view {scene.names[k]} (correlation {score:.3f})")

    calib = calibrate(model, params, cfg, norm_scene, image_dir, near=near, far=far, mesh=mesh, log=log,
                      ncc_fraction=ncc_fraction, psnr_margin_db=psnr_margin_db, n_eval=opts.n_eval,
                      eval_chunk=opts.eval_chunk)
    thresholds = {} if calib is None else {k: calib[k] for k in ("threshold_psnr", "threshold_ncc")}
    queries = [(n, photos[n], cams[n], to_normalized(starts[n][0], norm), starts[n][1]) for n in names]
    results = localize(model, params, cfg, queries, near=near, far=far, mesh=mesh, progress=progress, log=log,
                       **thresholds, **options)

    # poses.json in the scene's own format and frame.
    table: dict = {}
    frames = []
    for r in results:
        cam_i = table.setdefault(cams[r["name"]], len(table))
        frames.append({"name": r["name"], "camera": cam_i, "c2w": to_original(r["c2w"], norm).tolist(),
                       **{k: r[k] for k in ("psnr", "gradient_ncc", "photometric_error", "converged", "start_used",
                                            "psnr_start", "gradient_ncc_start", "restart", "focal_scale")}})
    doc = scene_io.scene_to_dict(Scene(names=[], c2w=np.zeros((0, 3, 4)), cameras=list(table),
                                       camera_idx=np.zeros(0, np.int32)))
    doc.update(frames=frames, image_dir=os.path.relpath(query_dir.resolve(), out_dir.resolve()), near=None,
               far=None, model_step=ckpt_step, calibration=calib,
               thresholds={"psnr": results[0]["threshold_psnr"], "ncc": results[0]["threshold_ncc"]})
    main = jax.process_index() == 0  # every process computes; process 0 writes
    if main:
        fileio.write_json(out_dir / "poses.json", doc)

    summary = {"queries": len(results), "converged": sum(r["converged"] for r in results), "model_step": ckpt_step,
               "starts": {r["name"]: r["start_used"] for r in results}}
    if gt is not None:
        gt_c2w = {n: gt.c2w[i] for i, n in enumerate(gt.names)}
        centres = norm_scene.c2w[:, :, 3]
        # Scene radius in the normalized frame: 1 for mode '360' (cameras fill the unit ball about the focus).
        radius = 1.0 if cfg.normalize == "360" else float(np.linalg.norm(centres - centres.mean(0), axis=1).max())
        rows = []
        for r in results:
            if r["name"] not in gt_c2w:
                continue
            g = to_normalized(gt_c2w[r["name"]], norm)
            s0 = to_normalized(starts[r["name"]][0], norm)
            rows.append({
                "name": r["name"],
                "rot_err_deg": float(rigid.rotation_error_deg(r["c2w"][:, :3], g[:, :3])),
                "trans_err_pct": 100.0 * float(np.linalg.norm(r["c2w"][:, 3] - g[:, 3])) / radius,
                "rot_err_start_deg": float(rigid.rotation_error_deg(s0[:, :3], g[:, :3])),
                "trans_err_start_pct": 100.0 * float(np.linalg.norm(s0[:, 3] - g[:, 3])) / radius,
                "psnr": r["psnr"], "gradient_ncc": r["gradient_ncc"], "converged": r["converged"],
                "start_used": r["start_used"],
            })
        if main:
            fileio.write_text(out_dir / "errors.tsv", _errors_tsv(rows))
        if rows:
            summary.update(median_rot_err_deg=float(np.median([x["rot_err_deg"] for x in rows])),
                           median_trans_err_pct=float(np.median([x["trans_err_pct"] for x in rows])))
    if write_views:
        fn = evaluate.make_render_fn(model, mesh, zero_glo=_uses_glo(model))
        for r in results:
            cam = cams[r["name"]]
            f = cfg.factor
            photo = downsample(photos[r["name"]], f)
            small = cam_lib.scale_camera(cam, f)
            if r["focal_scale"] != 1.0:
                small = Camera(small.model, small.width, small.height, tuple(
                    v * r["focal_scale"] if n in ("f", "fx", "fy") else v
                    for n, v in zip(CAMERA_MODELS[small.model], small.params)))
            rays = cam_lib.generate_rays(small, r["c2w"], near=near, far=far)
            out = evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh,
                                        render_fn=fn)
            if main:
                fileio.write_image(out_dir / "views" / (Path(r["name"]).stem + ".png"),
                                   evaluate.side_by_side(photo, out["rgb"]))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"localize: {summary}")
    return summary
