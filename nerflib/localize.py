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
calibrated per field (`localize_step.calibrate`, used by the pipeline step):
the field's median scores on a few held-out views (else training views) at their known poses,
threshold_ncc = ncc_fraction (0.5) x that correlation, threshold_psnr = that
PSNR - 5 dB. Without calibration `min_psnr` / `min_ncc` apply. Noise or a photo
of another scene fails both. The criterion is only as sharp as the field: a
field that cannot render fine detail cannot confirm a pose to a fraction of
a degree either (a 300-step tiny field, ~18 dB, passed a query 6.9 deg off
and failed one 0.75 deg off), and neither score pins the camera's depth
along its optical axis well.

Frames: `localize` works in the field's normalized frame; `to_original` /
`to_normalized` convert poses with a scene_io.normalize_scene transform.
Initial guesses, ground truth, the convergence calibration and the files of
the pipeline step live in `localize_step` (the `localize_step` function).
"""

from __future__ import annotations

import dataclasses
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
from jax.sharding import NamedSharding, PartitionSpec as P

from nerflib import cameras as cam_lib
from nerflib import parallel, rigid
from nerflib.settings import setting
from nerflib.types import CAMERA_MODELS, Camera

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


def perturb_pose(c2w, rng: np.random.Generator, *, rot_deg: float, trans: float,
                 pivot: str = "camera") -> np.ndarray:
    """c2w [3, 4] turned by exactly rot_deg about a random axis, then moved by `trans`.

    pivot='camera' turns the camera about its own centre (the view swings away
    from what it saw) and moves the centre by exactly `trans`; pivot='world'
    turns the whole pose about the world origin, as iNeRF's benchmark does
    (rotation @ pose: an object at the origin stays where it was in the image),
    which moves the centre along its orbit, then adds a step of length `trans`.
    """
    if pivot not in ("camera", "world"):
        raise ValueError(f"pivot must be 'camera' or 'world', got {pivot!r}")
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    step = rng.normal(size=3)
    step /= np.linalg.norm(step)
    c2w = np.asarray(c2w, np.float64)
    if pivot == "world":
        moved = apply_twist(c2w, np.concatenate([axis * math.radians(rot_deg), np.zeros(3)]), pivot="world")
        moved[:3, 3] += step * trans
        return moved
    twist = np.concatenate([axis * math.radians(rot_deg), step * trans])
    # pivot='camera' with V(omega) v: rescale v so that the centre moves by exactly `trans`.
    T = rigid.exp_se3(twist)
    twist[3:] *= trans / max(np.linalg.norm(T[:3, 3]), 1e-12) if trans > 0 else 0.0
    return apply_twist(c2w, twist, pivot="camera")


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

    # The settings of the workflow (config.yaml `localize:`) and of `nerf localize` (nerflib.settings);
    # the defaults measured on the demo in CI (commit 1e474f8: 4/4 queries at 0.08 deg). The GPU
    # benchmarks of bench/RESULTS.md ran 300 iterations, 512 rays, 4096 evaluation pixels
    # (bench/localize_bench.py passes those).
    iters: int = setting(250, "Optimization steps per query (split over the coarse-to-fine levels).", minimum=1)
    restarts: int = setting(3, "Starts per query (the guess, then perturbed copies); the best photometric fit wins.",
                            minimum=1)
    n_pixels: int = setting(256, "Rays per start and step.", minimum=1, flag="--pixels")
    n_eval: int = setting(1024, "Pixels per query of the final photometric score (winner selection, convergence "
                                "flag), a regular grid of the base-level image.", minimum=1)
    # The rest: config.yaml localize.options, nerf localize --set.
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
    eval_chunk: int = 2048  # evaluation rays per problem per call ...
    eval_rays: int = 65536  # ... and at most this many over all problems (memory bound: 50 queries x 8 restarts).
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
        need(min(self.n_eval, self.eval_chunk, self.eval_rays) >= 1, "n_eval, eval_chunk and eval_rays must be >= 1",
             (self.n_eval, self.eval_chunk, self.eval_rays))


WORKFLOW_OPTIONS = ("iters", "restarts", "n_pixels", "n_eval")  # the Options fields of config.yaml `localize:`


def _levels_model(cameras, factors) -> str:
    """The one camera model of every level: downsampling a size that the factor does not divide
    scales x and y differently, which a single-focal model (SIMPLE_PINHOLE, ...) cannot express."""
    return cam_lib.common_model([cam_lib.scale_camera(c, int(f)) for c in cameras for f in sorted(set(factors))])


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
                    `localize_step.calibrate` derives them); default Options.min_psnr / min_ncc.
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
    model_name = _levels_model(cameras, [factor * m for m in (1, *opts.coarse_to_fine)])
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
    base = jax.device_put(_build_level(images, cameras, model_name, factor, 1, opts, rng, shape), rep)  # as score_poses
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

