"""mip-NeRF 360 as Flax modules: proposal fields, the NeRF field and the sampler.

Short names and shapes (see also nerflib.types.Rays, nerflib.coord and
nerflib.stepfun):
  rays        a `Rays` pytree with batch shape `...`.
  sdist       [..., n+1]   normalised interval endpoints in [0, 1].
  tdist       [..., n+1]   the same endpoints in metric t (depth) units.
  weights     [..., n]     alpha-compositing weights of the intervals.
  means, covs [..., n, 3], [..., n, 3, 3]  Gaussians of the conical frusta.
  density     [..., n]     volume density; rgb [..., n, 3] colour.

One forward pass runs `num_levels` rounds. Round k draws intervals from the
weights of round k-1 (the first from one interval [near, far]), evaluates a
field on them and alpha-composites. All but the last round use a cheap
proposal field that only predicts density; the last uses the NeRF field,
which also predicts colour. Sampling happens in normalised distance s
(1/t-spaced for mip-NeRF 360) and positions are contracted into a ball of
radius 2 before encoding.

Public API:
  ModelConfig, model_mipnerf360(), model_tiny(), config_from_dict() (declared in
  nerflib.model_config, re-exported here), make_model(cfg, num_images=...),
  init_variables(model, key, num_rays=...). Camera refinement: nerflib.pose_refine.
"""

from __future__ import annotations

import functools
import importlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nerflib import coord, pose_refine, render, stepfun
from nerflib import math as nmath
from nerflib.model_config import (  # noqa: F401 (re-exported: the model's settings live there)
    BACKGROUNDS,
    CONTRACTIONS,
    DATA_LOSSES,
    DENSITY_ACTIVATIONS,
    FIELDS,
    MLP_DTYPES,
    ModelConfig,
    config_from_dict,
    model_mipnerf360,
    model_tiny,
)
from nerflib.types import Rays

__all__ = [
    "ModelConfig",
    "model_mipnerf360",
    "model_tiny",
    "config_from_dict",
    "make_model",
    "init_variables",
    "NerfModel",
    "Field",
    "background_rgb",
    "dummy_rays",
]

# ---------------------------------------------------------------------------
# Fields.
# ---------------------------------------------------------------------------


def _hash_encoding(cfg: ModelConfig, name: str, *, proposal: bool = False) -> nn.Module:
    """The hook for field="hashgrid": nerflib.hashgrid.HashEncoding.

    Contract with nerflib/hashgrid.py: `HashEncoding(**cfg.hashgrid_options)`
    is a Flax module mapping positions x01 [..., 3] in [0, 1]^3 to features
    [..., F]. We pass the contracted position mapped affinely from the
    radius-2 ball to [0, 1]^3.
    """
    try:
        hashgrid = importlib.import_module("nerflib.hashgrid")
    except ImportError as err:  # the module is written separately.
        raise ValueError(f"field='hashgrid' needs nerflib/hashgrid.py, which is not importable: {err}") from err
    options = cfg.prop_hashgrid_options if proposal and cfg.prop_hashgrid_options else cfg.hashgrid_options
    return hashgrid.HashEncoding(**dict(options), name=name)


class Field(nn.Module):
    """A radiance field on Gaussians: density (and optionally colour).

    Position features are the IPE of the contracted, basis-projected Gaussians
    (field="mlp") or hash-grid features of the contracted means
    (field="hashgrid"); an MLP of `net_depth` x `net_width` follows. The
    colour head sees a bottleneck of the trunk, the encoded view direction
    and the optional GLO code.
    """

    cfg: ModelConfig
    net_depth: int
    net_width: int
    predict_rgb: bool

    @property
    def multisamples(self) -> int:
        """Multisamples per interval this field reads (0: plain points), see ModelConfig."""
        return self.cfg.multisamples if self.predict_rgb else self.cfg.prop_multisamples

    def _position_features(self, means, covs, hash_encoding):
        cfg = self.cfg
        if hash_encoding is not None:
            contracted = cfg.contraction == "mipnerf360"
            x = coord.contract(means) if contracted else means
            if not self.multisamples:
                # Ball of radius 2 -> [0, 1]^3 (uncontracted scenes should already
                # be scaled into [-2, 2]^3).
                return hash_encoding((x + 2.0) / 4.0)
            # means [..., k, 3] multisamples, covs [..., k] their stds (world units): the
            # contraction scales a std by contract_scale, the map to [0, 1]^3 by 1/4.
            stds = covs * coord.contract_scale(means) if contracted else covs
            level_weights = hash_encoding.footprint_weights(jax.lax.stop_gradient(stds) / 4.0)
            return jnp.mean(hash_encoding((x + 2.0) / 4.0, level_weights=level_weights), axis=-2)
        if cfg.contraction == "mipnerf360":
            means, covs = coord.track_linearize(coord.contract, means, covs)
        basis = jnp.asarray(coord.geodesic_basis(cfg.basis_shape, cfg.basis_subdivisions), means.dtype)
        m, v = coord.lift_and_diagonalize(means, covs, basis)
        return coord.integrated_pos_enc(m, v, min_deg=cfg.min_deg_point, max_deg=cfg.max_deg_point)

    @nn.compact
    def __call__(self, means, covs, viewdirs=None, glo_vec=None):
        """means [..., n, 3], covs [..., n, 3, 3], viewdirs [..., 3], glo_vec [..., G].

        With multisampling (`self.multisamples` > 0), means are [..., n, k, 3] and
        covs the multisamples' stds [..., n, k] (coord.multisample_frustum).

        Returns (density [..., n], rgb [..., n, 3] or None).
        """
        cfg = self.cfg
        head_dense = functools.partial(nn.Dense, kernel_init=getattr(jax.nn.initializers, cfg.weight_init)())
        dense = functools.partial(head_dense, dtype=jnp.dtype(cfg.mlp_dtype))  # hidden layers
        # Submodules must be created here (inside the compact method).
        hash_encoding = (_hash_encoding(cfg, "hash_encoding", proposal=not self.predict_rgb)
                         if cfg.field == "hashgrid" else None)
        inputs = self._position_features(means, covs, hash_encoding)
        x = inputs
        for i in range(self.net_depth):
            x = nn.relu(dense(self.net_width)(x))
            if cfg.skip_layer > 0 and i > 0 and i % cfg.skip_layer == 0:
                x = jnp.concatenate([x, inputs], axis=-1)
        raw_density = head_dense(1)(x.astype(jnp.float32))[..., 0] + cfg.density_bias
        if cfg.density_activation == "softplus":
            density = jax.nn.softplus(raw_density)
        elif cfg.density_activation == "exp":
            density = nmath.safe_exp(raw_density)
        else:
            density = nn.relu(raw_density)
        if not self.predict_rgb:
            return density, None

        head = []
        if cfg.use_viewdirs or glo_vec is not None:
            if cfg.bottleneck_width > 0:
                head.append(dense(cfg.bottleneck_width)(x).astype(jnp.float32))
            batch = x.shape[:-1]
            if cfg.use_viewdirs:
                enc = coord.pos_enc(viewdirs, min_deg=0, max_deg=cfg.deg_view, append_identity=True)
                head.append(jnp.broadcast_to(enc[..., None, :], batch + enc.shape[-1:]))
            if glo_vec is not None:
                head.append(jnp.broadcast_to(glo_vec[..., None, :], batch + glo_vec.shape[-1:]))
            x = jnp.concatenate(head, axis=-1)
            for _ in range(cfg.net_depth_viewdirs):
                x = nn.relu(dense(cfg.net_width_viewdirs)(x))
        rgb = jax.nn.sigmoid(head_dense(3)(x.astype(jnp.float32)))
        return density, rgb * (1.0 + 2.0 * cfg.rgb_padding) - cfg.rgb_padding


# ---------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------


def _split(rng):
    """(key for now, key for later), or (None, None) for deterministic passes."""
    if rng is None:
        return None, None
    key, rng = jax.random.split(rng)
    return key, rng


def _grad_on_every(m, fn, *args):
    """fn(*args), differentiable only through every m-th entry of the leading axis.

    The other entries are computed under stop_gradient, so JAX never builds
    their backward pass. Rays are picked by stride, not as a leading block, so
    a batch sharded over devices keeps the same work on every device. A leading
    axis that m does not divide is differentiated whole.
    """
    n = args[0].shape[0]
    if n % m:
        return fn(*args)
    k = n // m
    grouped = [a.reshape(k, m, *a.shape[1:]) for a in args]
    live = fn(*(g[:, 0] for g in grouped))
    frozen = fn(*(g[:, 1:].reshape(n - k, *g.shape[2:]) for g in grouped))

    def interleave(y, z):
        z = jax.lax.stop_gradient(z).reshape(k, m - 1, *z.shape[1:])
        return jnp.concatenate([y[:, None], z], axis=1).reshape(n, *y.shape[1:])

    return jax.tree.map(interleave, live, frozen)


# Rays are packed in this many groups (or a multiple: one or more per device), so that the
# packing, hence the result, is the same on 1, 2, 4 or 8 devices.
_PACK_GROUPS = 8


def _skip_empty(field, cfg: ModelConfig, bound, means, covs, viewdirs, glo_vec, *, pack: bool):
    """The final field where the proposal bound `bound` [..., n] reaches cfg.skip_threshold.

    Returns (density [..., n], rgb [..., n, 3], live [..., n], fits [...]):
    zero density and colour where a sample is skipped; `live` marks the
    samples the field was evaluated on, `fits` the rays rendered in full.

    With `pack` and cfg.sample_budget < 1 (training), the live samples are
    packed into a static-size set (sample_budget of all samples) and the field
    runs on that set only, so a step's cost is fixed. As instant-ngp fixes the
    samples per batch and varies the rays, a batch whose live samples do not
    all fit keeps whole rays in order while they fit; the rays left over
    (`fits` False) have no live samples and must be left out of the loss.
    Packing works in groups of rays (8, or a multiple of the device count,
    when the rays split evenly), so a batch sharded along its rays packs
    locally on each device and the result does not depend on the device count.
    Without `pack`, every sample is evaluated and the skipped ones are zeroed.
    """
    live = bound >= cfg.skip_threshold
    batch, n = bound.shape[:-1], bound.shape[-1]
    if not pack or cfg.sample_budget >= 1.0:
        density, rgb = field(means, covs, viewdirs, glo_vec)
        fits = jnp.ones(batch, bool)
        return jnp.where(live, density, 0.0), jnp.where(live[..., None], rgb, 0.0), live, fits
    num_rays = int(np.prod(batch))
    groups = math.lcm(_PACK_GROUPS, jax.device_count())
    if num_rays % groups:
        groups = 1
    size = num_rays // groups * n  # samples per group
    budget = min(size, -(-int(np.ceil(cfg.sample_budget * size)) // 8) * 8)

    live = live.reshape(groups, num_rays // groups, n)
    fits = jnp.cumsum(jnp.sum(live, axis=-1, dtype=jnp.int32), axis=-1) <= budget  # [groups, rays]
    live = (live & fits[..., None]).reshape(groups, size)
    slot = jnp.where(live, jnp.cumsum(live, axis=-1, dtype=jnp.int32) - 1, budget)  # `budget`: discarded
    # Sample index of every slot; unused slots point past the end (clamped below, then unused).
    source = jax.vmap(lambda s: jnp.full((budget,), size, jnp.int32).at[s].set(
        jnp.arange(size, dtype=jnp.int32), mode="drop"))(slot)
    source = jnp.minimum(source, size - 1)
    ray = source // n

    def take(x, idx):  # x [groups, count, F...], idx [groups, budget] -> [groups, budget, F...]
        return jax.vmap(lambda a, i: a[i])(x, idx)

    def per_sample(x):  # [..., n, F...] -> [groups, budget, 1, F...]
        return take(x.reshape(groups, size, *x.shape[len(batch) + 1:]), source)[:, :, None]

    def per_ray(x):  # [..., F] -> [groups, budget, F]
        return take(x.reshape(groups, size // n, *x.shape[len(batch):]), ray)

    density, rgb = field(per_sample(means), per_sample(covs), per_ray(viewdirs),
                         None if glo_vec is None else per_ray(glo_vec))

    def unpack(y):  # [groups, budget, 1, F...] -> [..., n, F...], zero where skipped
        y = jnp.concatenate([y[:, :, 0], jnp.zeros_like(y[:, :1, 0])], axis=1)  # the discarded slot
        return take(y, slot).reshape(*batch, n, *y.shape[2:])

    return unpack(density), unpack(rgb), live.reshape(*batch, n), fits.reshape(batch)


def _schlick_bias(x, slope):
    """Schlick's bias curve, 0 -> 0, 1 -> 1, steeper near 0 for slope > 1."""
    return slope * x / ((slope - 1.0) * x + 1.0)


class NerfModel(nn.Module):
    """mip-NeRF 360: proposal rounds, then the NeRF round. Build with `make_model`."""

    cfg: ModelConfig
    num_images: int = 1

    @nn.compact
    def __call__(self, rays: Rays, *, rng, train_frac, compute_extras: bool = False, zero_glo: bool = False):
        """Render `rays`.

        Args:
          rays: a Rays pytree with any batch shape `...`.
          rng: a PRNG key for jittered sampling (and random backgrounds), or
            None for deterministic evaluation.
          train_frac: fraction of training done, in [0, 1] (anneals the
            proposal weights); use 1.0 for evaluation.
          compute_extras: also return distance percentiles per level.
          zero_glo: use an all-zero appearance code (for images that were not
            trained on) instead of looking up `rays.cam_idx`. Otherwise
            cam_idx must lie in [0, num_images): out-of-range lookups are
            not checked inside jit (they produce NaN colours).

        Returns:
          renderings: one dict per round (last = final) with 'rgb' [..., 3],
            'depth' [...], 'acc' [...] (+ extras).
          ray_history: one dict per round with 'sdist', 'tdist' [..., n+1]
            and 'weights' [..., n].
        """
        cfg = self.cfg
        origins = jnp.asarray(rays.origins, jnp.float32)
        directions = jnp.asarray(rays.directions, jnp.float32)
        viewdirs = jnp.asarray(rays.viewdirs, jnp.float32)
        radii = jnp.asarray(rays.radii, jnp.float32)
        near = jnp.asarray(rays.near, jnp.float32)
        far = jnp.asarray(rays.far, jnp.float32)
        batch = origins.shape[:-1]

        nerf_field = Field(cfg, cfg.nerf_net_depth, cfg.nerf_net_width, predict_rgb=True, name="nerf_field")
        num_prop = cfg.num_levels - 1
        if cfg.share_proposal_field:
            shared = Field(cfg, cfg.prop_net_depth, cfg.prop_net_width, predict_rgb=False, name="prop_field")
            prop_fields = [shared] * num_prop
        else:
            prop_fields = [
                Field(cfg, cfg.prop_net_depth, cfg.prop_net_width, predict_rgb=False, name=f"prop_field_{i}")
                for i in range(num_prop)
            ]

        if cfg.refine_poses:
            # Created at init (rng None) too, so checkpoints always hold them; applied in training only.
            # pose_precondition is set once from the cameras (train.init_state, pose_preconditioner)
            # and never trained: its gradient is stopped, so Adam's update of it is exactly 0.
            theta = self.param("pose_delta", nn.initializers.zeros, (self.num_images, 6), jnp.float32)
            precond = self.param("pose_precondition", lambda key, shape: jnp.broadcast_to(jnp.eye(6), shape),
                                 (self.num_images, 6, 6))
            if rng is not None:
                cam_idx = jnp.asarray(rays.cam_idx, jnp.int32)[..., 0]
                delta = pose_refine.pose_delta_of(theta[cam_idx], jax.lax.stop_gradient(precond)[cam_idx], cfg)
                origins, directions, viewdirs = pose_refine.apply_pose_delta(delta, origins, directions, viewdirs)

        glo_vec = None
        if cfg.num_glo_features > 0:
            if zero_glo:
                glo_vec = jnp.zeros(batch + (cfg.num_glo_features,), jnp.float32)
            else:
                cam_idx = jnp.asarray(rays.cam_idx, jnp.int32)[..., 0]
                glo_vec = nn.Embed(self.num_images, cfg.num_glo_features, name="glo")(cam_idx)

        _, s_to_t = coord.construct_ray_warps(cfg.raydist_fn, near, far)
        anneal = _schlick_bias(jnp.clip(train_frac, 0.0, 1.0), cfg.anneal_slope) if cfg.anneal_slope > 0 else 1.0

        # Start from one interval [0, 1] in s holding all the weight.
        sdist = jnp.concatenate([jnp.zeros_like(near), jnp.ones_like(far)], axis=-1)
        weights = jnp.ones_like(near)
        samples_so_far = 1
        renderings, ray_history = [], []
        for level in range(cfg.num_levels):
            is_prop = level < num_prop
            num_samples = cfg.num_prop_samples[level] if is_prop else cfg.num_nerf_samples
            # Resampling never carries gradients back into the previous round.
            weights = jax.lax.stop_gradient(weights)
            dilate = level > 0 and (cfg.dilation_bias > 0 or cfg.dilation_multiplier > 0)
            if dilate:
                # Widen the previous round's peaks by a fraction of its typical
                # interval width so that small sampling shifts cannot miss them.
                dilation = cfg.dilation_bias + cfg.dilation_multiplier / samples_so_far
                sdist, weights = stepfun.max_dilate_weights(sdist, weights, dilation, domain=(0.0, 1.0),
                                                            on_grid=cfg.dilate_on_grid)
            # The previous round's (dilated) weights, before renormalising: the envelope that
            # decides which final samples are empty (cfg.skip_threshold).
            envelope = (sdist, weights)
            if dilate:
                weights = stepfun.renormalize_weights(weights)
            samples_so_far *= num_samples
            # weights**anneal as logits; zero-width intervals get -inf. The
            # safe_log floor keeps 0 * log(0) from producing nan at anneal 0.
            logits = jnp.where(sdist[..., 1:] > sdist[..., :-1],
                               anneal * nmath.safe_log(weights + cfg.resample_padding), -jnp.inf)
            key, rng = _split(rng)
            sdist = stepfun.sample_intervals(key, sdist, logits, num_samples, single_jitter=cfg.single_jitter,
                                             domain=(0.0, 1.0))
            if cfg.stop_level_grad:
                sdist = jax.lax.stop_gradient(sdist)
            tdist = s_to_t(sdist)

            count = (cfg.prop_multisamples if is_prop else cfg.multisamples) if cfg.field == "hashgrid" else 0
            # Camera refinement learns from the final round only: d(loss)/d(position) through a hash
            # grid costs a second round of its gathers, which the proposal rounds need not pay.
            ray = (origins, directions) if not (is_prop and cfg.refine_poses) else (
                jax.lax.stop_gradient(origins), jax.lax.stop_gradient(directions))
            if count:
                key, rng = _split(rng)
                # covs: the multisamples' stds [..., n, k] (what Field reads with multisampling).
                means, covs = coord.multisample_frustum(tdist, *ray, radii, count=count,
                                                        std_scale=cfg.multisample_std_scale, key=key)
            else:
                means, covs = coord.cast_rays(tdist, *ray, radii, diag=False)
            if cfg.disable_integration:
                covs = jnp.zeros_like(covs)  # IPE with zero variance is plain PE.
            if is_prop:
                every = round(1.0 / cfg.prop_grad_fraction)
                if rng is not None and every > 1:
                    density = _grad_on_every(every, prop_fields[level], means, covs)[0]
                else:
                    density = prop_fields[level](means, covs)[0]
                rgb = jnp.zeros(density.shape + (3,), density.dtype)  # proposals carry no colour.
            elif cfg.skip_threshold > 0 and level > 0:
                bound = stepfun.outer_measure(jax.lax.stop_gradient(sdist), *envelope)
                density, rgb, live, fits = _skip_empty(nerf_field, cfg, bound, means, covs, viewdirs, glo_vec,
                                                       pack=rng is not None)
            else:
                density, rgb = nerf_field(means, covs, viewdirs, glo_vec)

            weights = render.compute_alpha_weights(density, tdist, directions,
                                                   opaque_background=cfg.opaque_background)[0]
            key, rng = _split(rng)
            bg_rgbs = background_rgb(cfg.background, key, batch)
            rendering = render.volumetric_rendering(rgb, weights, tdist, bg_rgbs, t_far=far,
                                                    compute_extras=compute_extras)
            renderings.append(rendering)
            ray_history.append({"sdist": sdist, "tdist": tdist, "weights": weights})
        if cfg.skip_threshold > 0 and cfg.num_levels > 1:
            ray_history[-1]["live"] = live  # the final samples the NeRF field was evaluated on
            ray_history[-1]["fits"] = fits  # the rays rendered in full (the others: out of the loss)
        return renderings, ray_history


def background_rgb(background: str, key, batch_shape: tuple[int, ...]):
    """Background colours [*batch_shape, 3] for `ModelConfig.background`.

    'random' draws a uniform colour per ray when a key is given (training:
    discourages explaining the background with semi-transparent matter) and
    is mid-grey for deterministic renders.
    """
    shape = tuple(batch_shape) + (3,)
    if background == "white":
        return jnp.ones(shape, jnp.float32)
    if background == "black":
        return jnp.zeros(shape, jnp.float32)
    if background != "random":
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if key is None:
        return jnp.full(shape, 0.5, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32)


def make_model(cfg: ModelConfig, *, num_images: int) -> NerfModel:
    """The Flax module for `cfg`; `num_images` sizes the GLO table."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images!r}")
    return NerfModel(cfg=cfg, num_images=int(num_images))


def dummy_rays(cfg: ModelConfig, num_rays: int = 8) -> Rays:
    """Rays looking down +z from the origin, for initialisation and tests."""
    n = int(num_rays)
    dirs = np.zeros((n, 3), np.float32)
    dirs[:, 2] = 1.0
    return Rays(
        origins=jnp.zeros((n, 3), jnp.float32),
        directions=jnp.asarray(dirs),
        viewdirs=jnp.asarray(dirs),
        radii=jnp.full((n, 1), 1e-3, jnp.float32),
        near=jnp.full((n, 1), cfg.near, jnp.float32),
        far=jnp.full((n, 1), cfg.far, jnp.float32),
        cam_idx=jnp.zeros((n, 1), jnp.int32),
    )


def init_variables(model: NerfModel, key, *, num_rays: int = 8):
    """Initialise the model's variables ({'params': ...}) from `key`."""
    if num_rays < 1:
        raise ValueError(f"num_rays must be >= 1, got {num_rays!r}")
    return model.init(key, dummy_rays(model.cfg, num_rays), rng=None, train_frac=1.0)
