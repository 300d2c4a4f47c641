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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nerflib import coord, pose_refine, render, sample_packing, stepfun
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


def _resample(cfg: ModelConfig, key, sdist, weights, num_samples: int, *, level: int, samples_so_far: int,
              anneal):
    """One round's intervals drawn from the previous round's weights -> (sdist, weights, envelope).

    weights come back renormalised after dilation; envelope = (sdist, weights) of the previous
    round after dilation and before renormalising: what decides which final samples are
    empty (cfg.skip_threshold).
    """
    # Resampling never carries gradients back into the previous round.
    weights = jax.lax.stop_gradient(weights)
    dilate = level > 0 and (cfg.dilation_bias > 0 or cfg.dilation_multiplier > 0)
    if dilate:
        # Widen the previous round's peaks by a fraction of its typical
        # interval width so that small sampling shifts cannot miss them.
        dilation = cfg.dilation_bias + cfg.dilation_multiplier / samples_so_far
        sdist, weights = stepfun.max_dilate_weights(sdist, weights, dilation, domain=(0.0, 1.0),
                                                    on_grid=cfg.dilate_on_grid)
    envelope = (sdist, weights)
    if dilate:
        weights = stepfun.renormalize_weights(weights)
    # weights**anneal as logits; zero-width intervals get -inf. The
    # safe_log floor keeps 0 * log(0) from producing nan at anneal 0.
    logits = jnp.where(sdist[..., 1:] > sdist[..., :-1],
                       anneal * nmath.safe_log(weights + cfg.resample_padding), -jnp.inf)
    sdist = stepfun.sample_intervals(key, sdist, logits, num_samples, single_jitter=cfg.single_jitter,
                                     domain=(0.0, 1.0))
    if cfg.stop_level_grad:
        sdist = jax.lax.stop_gradient(sdist)
    return sdist, weights, envelope


def _frusta(cfg: ModelConfig, key, tdist, origins, directions, radii, *, proposal: bool):
    """What a round's field reads of its intervals: (means, covs) of the conical frusta (cast_rays),
    or with multisampling (means [..., n, k, 3], their stds [..., n, k]) (coord.multisample_frustum)."""
    count = _multisamples(cfg, proposal=proposal)
    if proposal and cfg.refine_poses:
        # Camera refinement learns from the final round only: d(loss)/d(position) through a hash
        # grid costs a second round of its gathers, which the proposal rounds need not pay.
        origins, directions = jax.lax.stop_gradient(origins), jax.lax.stop_gradient(directions)
    if count:
        means, covs = coord.multisample_frustum(tdist, origins, directions, radii, count=count,
                                                std_scale=cfg.multisample_std_scale, key=key)
    else:
        means, covs = coord.cast_rays(tdist, origins, directions, radii, diag=False)
    if cfg.disable_integration:
        covs = jnp.zeros_like(covs)  # IPE with zero variance is plain PE (multisamples: no level weights).
    return means, covs


def _multisamples(cfg: ModelConfig, *, proposal: bool) -> int:
    """Multisamples per interval a round's field reads (0: the Gaussians of cast_rays)."""
    return (cfg.prop_multisamples if proposal else cfg.multisamples) if cfg.field == "hashgrid" else 0


def _proposal_density(cfg: ModelConfig, field, means, covs, *, train: bool):
    """A proposal field's density; in training, differentiable through every m-th ray only."""
    every = round(1.0 / cfg.prop_grad_fraction)
    if train and every > 1:
        return sample_packing.grad_on_every(every, field, means, covs)[0]
    return field(means, covs)[0]


def _glo_codes(cfg: ModelConfig, cam_idx, num_images: int, *, zero: bool):
    """Appearance codes [..., G] of the rays' images (zeros with `zero`); inside NerfModel's __call__."""
    idx = jnp.asarray(cam_idx, jnp.int32)[..., 0]
    if zero:
        return jnp.zeros(idx.shape + (cfg.num_glo_features,), jnp.float32)
    return nn.Embed(num_images, cfg.num_glo_features, name="glo")(idx)


def _make_fields(cfg: ModelConfig):
    """(NeRF field, [proposal field of each proposal round]); call inside NerfModel's compact __call__."""
    nerf_field = Field(cfg, cfg.nerf_net_depth, cfg.nerf_net_width, predict_rgb=True, name="nerf_field")
    num_prop = cfg.num_levels - 1
    if cfg.share_proposal_field:
        shared = Field(cfg, cfg.prop_net_depth, cfg.prop_net_width, predict_rgb=False, name="prop_field")
        return nerf_field, [shared] * num_prop
    return nerf_field, [Field(cfg, cfg.prop_net_depth, cfg.prop_net_width, predict_rgb=False,
                              name=f"prop_field_{i}") for i in range(num_prop)]


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
        origins, directions, viewdirs, radii, near, far = (
            jnp.asarray(getattr(rays, k), jnp.float32) for k in ("origins", "directions", "viewdirs", "radii", "near", "far"))
        batch = origins.shape[:-1]

        nerf_field, prop_fields = _make_fields(cfg)
        num_prop = len(prop_fields)

        if cfg.refine_poses:  # created at init too; applied in training only (see nerflib.pose_refine)
            theta = self.param("pose_delta", nn.initializers.zeros, (self.num_images, 6), jnp.float32)
            precond = self.param("pose_precondition", lambda key, shape: jnp.broadcast_to(jnp.eye(6), shape),
                                 (self.num_images, 6, 6))
            if rng is not None:
                origins, directions, viewdirs = pose_refine.refine_rays(
                    theta, jax.lax.stop_gradient(precond), rays.cam_idx, origins, directions, viewdirs, cfg)

        glo_vec = _glo_codes(cfg, rays.cam_idx, self.num_images, zero=zero_glo) if cfg.num_glo_features else None

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
            key, rng = _split(rng)
            sdist, weights, envelope = _resample(cfg, key, sdist, weights, num_samples, level=level,
                                                 samples_so_far=samples_so_far, anneal=anneal)
            samples_so_far *= num_samples
            tdist = s_to_t(sdist)

            key, rng = _split(rng) if _multisamples(cfg, proposal=is_prop) else (None, rng)
            means, covs = _frusta(cfg, key, tdist, origins, directions, radii, proposal=is_prop)
            if is_prop:
                density = _proposal_density(cfg, prop_fields[level], means, covs, train=rng is not None)
                rgb = jnp.zeros(density.shape + (3,), density.dtype)  # proposals carry no colour.
            elif cfg.skip_threshold > 0 and level > 0:
                bound = stepfun.outer_measure(jax.lax.stop_gradient(sdist), *envelope)
                density, rgb, live, fits = sample_packing.skip_empty(nerf_field, cfg, bound, means, covs, viewdirs, glo_vec,
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
