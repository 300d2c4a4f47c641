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
  ModelConfig, model_mipnerf360(), model_tiny(), config_from_dict(),
  make_model(cfg, num_images=...), init_variables(model, key, num_rays=...).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nerflib import coord, render, rigid, stepfun
from nerflib import math as nmath
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

FIELDS = ("mlp", "hashgrid")
BACKGROUNDS = ("white", "black", "random")
CONTRACTIONS = ("mipnerf360", "none")
DENSITY_ACTIVATIONS = ("softplus", "exp", "relu")
DATA_LOSSES = ("charbonnier", "mse")
MLP_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter of the model and its losses.

    The defaults are mip-NeRF 360's (paper + multinerf's configs/360.gin).
    Only hashable values (numbers, strings, tuples) so that the config can be
    a Flax module attribute and be saved as JSON (`dataclasses.asdict`).
    """

    # --- Sampling -------------------------------------------------------
    num_prop_samples: tuple[int, ...] = (64, 64)  # samples of each proposal round.
    num_nerf_samples: int = 32  # samples of the final round.
    num_levels: int = 3  # rounds; must equal len(num_prop_samples) + 1.
    near: float = 0.2  # default near bound for ray generation (world units).
    far: float = 1e6  # default far bound ("infinity" for unbounded scenes).
    raydist_fn: str = "reciprocal"  # t <-> s warp, a name in coord.RAY_WARPS.
    single_jitter: bool = True  # one jitter per ray (not per sample) in training.
    anneal_slope: float = 10.0  # Schlick-bias slope for annealing proposal weights (0: off).
    dilation_multiplier: float = 0.5  # dilate proposal weights by this * mean interval width ...
    dilation_bias: float = 0.0025  # ... plus this, in s units (anti-aliasing).
    # Dilate on the previous round's own endpoints (stepfun.max_dilate_on_grid: an upper bound
    # of the exact dilation, no sort) instead of on the union of shifted endpoints (mip-NeRF 360).
    dilate_on_grid: bool = False
    resample_padding: float = 0.0  # added to weights before resampling.
    stop_level_grad: bool = True  # no gradient through the sampled intervals.
    # --- Field ----------------------------------------------------------
    field: str = "mlp"  # "mlp" (IPE + MLP) or "hashgrid" (nerflib.hashgrid + small MLP).
    contraction: str = "mipnerf360"  # "mipnerf360" or "none".
    disable_integration: bool = False  # True: plain positional encoding (zero covariance).
    basis_shape: str = "icosahedron"  # directions positions are projected on ("axes": mip-NeRF).
    basis_subdivisions: int = 2  # icosahedron tessellation: 2 -> 21 directions.
    min_deg_point: int = 0  # IPE frequencies 2^min .. 2^(max-1).
    max_deg_point: int = 12
    share_proposal_field: bool = True  # one proposal field for all proposal rounds.
    # Fraction 1/m of each training batch's rays whose proposal rounds carry gradients (every
    # m-th ray; the others' proposal densities are evaluated under stop_gradient, so their
    # backward pass, the proposal grid's gradient scatter included, is never computed). The
    # proposal fields only learn an envelope of the final weights, for which fewer rays will
    # do. 1.0: all rays (mip-NeRF 360). Applies to passes with an rng (training).
    prop_grad_fraction: float = 1.0
    # Empty-space skipping (ours; instant-ngp's occupancy grid, with the proposal rounds as the
    # grid). A final-round sample whose interval the last proposal round bounds from above by
    # less than `skip_threshold` of weight (its outer measure, after dilation) is empty: the
    # NeRF field is not evaluated there and its density is 0, in training and rendering alike.
    # The interlevel loss trains the proposal weights to bound the final ones, so a skipped
    # sample could have added at most about that weight to its pixel. 0: off (mip-NeRF 360).
    skip_threshold: float = 0.0
    # With skip_threshold > 0, in training: the NeRF field runs on a static-size set of this
    # fraction of the final samples, packed from the live ones (1 - sample_budget of the field's
    # work is saved). A batch with more live samples keeps whole rays while they fit and leaves
    # the rest out of the loss (instant-ngp: fixed samples, varying rays; the 'fits' stat says
    # how many rays trained). Rendering evaluates every sample. 1.0: no packing.
    sample_budget: float = 1.0
    prop_net_depth: int = 4
    prop_net_width: int = 256
    nerf_net_depth: int = 8
    nerf_net_width: int = 1024
    skip_layer: int = 4  # concatenate the input again after every this many layers.
    bottleneck_width: int = 256
    use_viewdirs: bool = True
    deg_view: int = 4  # positional-encoding degree of view directions.
    net_depth_viewdirs: int = 1
    net_width_viewdirs: int = 128
    density_activation: str = "softplus"
    density_bias: float = -1.0  # added to the raw density before the activation.
    rgb_padding: float = 0.001  # colours span [-pad, 1 + pad] so 0 and 1 are reachable.
    weight_init: str = "he_uniform"  # a name in jax.nn.initializers.
    # Precision of the hidden layers' matmuls and activations ("bfloat16": half the memory
    # traffic of the small hash-grid MLPs); parameters, the density and colour heads stay float32.
    mlp_dtype: str = "float32"
    num_glo_features: int = 0  # per-image appearance (GLO) code length; 0 = off.
    # Anti-aliasing of the hash grid (Zip-NeRF; field="hashgrid" only). 0: the grid reads each
    # interval's mean as a point (instant-ngp). 1: the mean, with each grid level weighted by how
    # much of the interval's footprint one of its cells holds (hashgrid.footprint_level_weights),
    # so levels finer than the footprint fade out. 6: Zip-NeRF's hexagonal multisamples of the
    # conical frustum (coord.multisample_frustum), level-weighted and averaged (6x the lookups).
    # `multisamples` applies to the NeRF field, `prop_multisamples` to the proposal fields.
    multisamples: int = 0
    prop_multisamples: int = 0
    multisample_std_scale: float = 0.35  # multisample std = this * cone radius at its distance.
    # Camera refinement (ours; nerfstudio's SO3xR3 camera optimiser): a learned per-image
    # rotation (axis-angle) and translation applied to training rays about the camera centre,
    # c2w -> [R_d R | t + t_d]. Parameters are delta / pose_refine_scale (Adam's steps are about
    # lr in parameter units, so this scales the pose learning rate). Regularised by
    # pose_reg_rot * mean |rotation| + pose_reg_trans * mean |translation| (radians, world units).
    refine_poses: bool = False
    pose_refine_scale: float = 0.01
    pose_reg_rot: float = 1e-3
    pose_reg_trans: float = 1e-2
    # Keyword arguments for hashgrid.HashEncoding as (name, value) pairs; used
    # only with field="hashgrid".
    hashgrid_options: tuple[tuple[str, Any], ...] = ()
    # The same for the proposal fields (which only shape the sampling, so a
    # small grid will do, as nerfacto's proposal networks); () = hashgrid_options.
    prop_hashgrid_options: tuple[tuple[str, Any], ...] = ()
    # --- Rendering ------------------------------------------------------
    background: str = "white"  # "white", "black" or "random" (random per ray in training).
    opaque_background: bool = True  # last interval fully opaque (unbounded scenes).
    # --- Losses ---------------------------------------------------------
    data_loss_type: str = "charbonnier"  # "charbonnier" or "mse".
    charb_padding: float = 0.001
    interlevel_loss_mult: float = 1.0
    # Weight of a loss on the proposal rounds' weight in front of the far bound (ours): the
    # interlevel loss only pushes proposal weights up, so nothing teaches the proposals that a
    # ray through empty space is empty, and empty-space skipping (skip_threshold) then skips
    # nothing there. 0: off (mip-NeRF 360).
    prop_sparsity_mult: float = 0.0
    distortion_loss_mult: float = 0.01

    def __post_init__(self):
        # Accept lists (e.g. from JSON) but store tuples, which are hashable.
        set_ = functools.partial(object.__setattr__, self)
        set_("num_prop_samples", tuple(int(k) for k in self.num_prop_samples))
        for name in ("hashgrid_options", "prop_hashgrid_options"):
            set_(name, tuple((str(k), _freeze(v)) for k, v in dict(getattr(self, name)).items()))

        def need(ok, what, value):
            if not ok:
                raise ValueError(f"ModelConfig.{what}: got {value!r}")

        need(self.num_levels >= 1, "num_levels must be >= 1", self.num_levels)
        need(
            len(self.num_prop_samples) == self.num_levels - 1,
            f"num_levels={self.num_levels} needs num_levels - 1 proposal sample counts, num_prop_samples",
            self.num_prop_samples,
        )
        for k in self.num_prop_samples + (self.num_nerf_samples,):
            need(k >= 2, "every sample count must be >= 2", k)
        need(0 < self.near < self.far, "need 0 < near < far", (self.near, self.far))
        need(self.raydist_fn in coord.RAY_WARPS, f"raydist_fn must be one of {sorted(coord.RAY_WARPS)}",
             self.raydist_fn)
        need(self.field in FIELDS, f"field must be one of {FIELDS}", self.field)
        need(self.contraction in CONTRACTIONS, f"contraction must be one of {CONTRACTIONS}", self.contraction)
        need(self.background in BACKGROUNDS, f"background must be one of {BACKGROUNDS}", self.background)
        need(
            self.density_activation in DENSITY_ACTIVATIONS,
            f"density_activation must be one of {DENSITY_ACTIVATIONS}",
            self.density_activation,
        )
        need(self.mlp_dtype in MLP_DTYPES, f"mlp_dtype must be one of {MLP_DTYPES}", self.mlp_dtype)
        need(self.data_loss_type in DATA_LOSSES, f"data_loss_type must be one of {DATA_LOSSES}", self.data_loss_type)
        need(0 <= self.min_deg_point <= self.max_deg_point, "need 0 <= min_deg_point <= max_deg_point",
             (self.min_deg_point, self.max_deg_point))
        need(self.basis_shape in ("icosahedron", "axes"), "basis_shape must be 'icosahedron' or 'axes'",
             self.basis_shape)
        need(self.basis_subdivisions >= 1, "basis_subdivisions must be >= 1", self.basis_subdivisions)
        for name in ("prop_net_depth", "nerf_net_depth", "net_depth_viewdirs", "bottleneck_width", "num_glo_features",
                     "skip_layer", "deg_view"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0", getattr(self, name))
        for name in ("prop_net_width", "nerf_net_width", "net_width_viewdirs"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1", getattr(self, name))
        need(self.anneal_slope >= 0, "anneal_slope must be >= 0", self.anneal_slope)
        need(self.resample_padding >= 0, "resample_padding must be >= 0", self.resample_padding)
        need(self.dilation_multiplier >= 0 and self.dilation_bias >= 0, "dilation must be >= 0",
             (self.dilation_multiplier, self.dilation_bias))
        m = round(1.0 / self.prop_grad_fraction) if self.prop_grad_fraction > 0 else 0
        need(m >= 1 and abs(1.0 / m - self.prop_grad_fraction) < 1e-6,
             "prop_grad_fraction must be 1/m for a whole m >= 1 (1.0, 0.5, 0.25, ...)", self.prop_grad_fraction)
        need(self.prop_sparsity_mult >= 0, "prop_sparsity_mult must be >= 0", self.prop_sparsity_mult)
        need(self.skip_threshold >= 0, "skip_threshold must be >= 0 (0 = off)", self.skip_threshold)
        need(0 < self.sample_budget <= 1, "sample_budget must be in (0, 1]", self.sample_budget)
        for name in ("multisamples", "prop_multisamples"):
            need(getattr(self, name) in (0, *coord.MULTISAMPLE_COUNTS),
                 f"{name} must be 0 (off) or one of {coord.MULTISAMPLE_COUNTS}", getattr(self, name))
            need(getattr(self, name) == 0 or self.field == "hashgrid", f"{name} needs field='hashgrid'",
                 getattr(self, name))
        need(self.multisample_std_scale >= 0, "multisample_std_scale must be >= 0", self.multisample_std_scale)
        need(self.pose_refine_scale > 0, "pose_refine_scale must be > 0", self.pose_refine_scale)
        need(self.pose_reg_rot >= 0 and self.pose_reg_trans >= 0, "pose_reg_rot and pose_reg_trans must be >= 0",
             (self.pose_reg_rot, self.pose_reg_trans))
        need(hasattr(jax.nn.initializers, self.weight_init), "weight_init must name a jax.nn.initializers function",
             self.weight_init)


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def model_mipnerf360(**overrides) -> ModelConfig:
    """mip-NeRF 360 as published: 2x64 proposal + 32 NeRF samples, 4x256 / 8x1024 MLPs."""
    return dataclasses.replace(ModelConfig(), **overrides)


def model_tiny(**overrides) -> ModelConfig:
    """A CPU-sized model for tests and demos (32 proposal + 16 NeRF samples)."""
    tiny = ModelConfig(
        num_prop_samples=(32,),
        num_nerf_samples=16,
        num_levels=2,
        basis_subdivisions=1,  # 6 directions instead of 21.
        max_deg_point=8,
        prop_net_depth=2,
        prop_net_width=64,
        nerf_net_depth=3,
        nerf_net_width=128,
        bottleneck_width=64,
        net_width_viewdirs=64,
    )
    return dataclasses.replace(tiny, **overrides)


def config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a ModelConfig from `dataclasses.asdict(cfg)` (e.g. read from JSON)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig fields: {unknown}")
    return ModelConfig(**d)


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
                delta = pose_delta_of(theta[cam_idx], jax.lax.stop_gradient(precond)[cam_idx], cfg)
                origins, directions, viewdirs = apply_pose_delta(delta, origins, directions, viewdirs)

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


def apply_pose_delta(delta, origins, directions, viewdirs):
    """Rays of the cameras c2w -> [R_d R | t + t_d], delta [..., 6] = (axis-angle of R_d, t_d).

    Rotating about the camera centre turns a ray (o, d) into (o + t_d, R_d d).
    """
    R = rigid.exp_so3(delta[..., :3])
    turn = lambda v: jnp.einsum("...ij,...j->...i", R, v)  # noqa: E731
    return origins + delta[..., 3:], turn(directions), turn(viewdirs)


def pose_delta_of(theta, precond, cfg: ModelConfig):
    """Pose deltas [..., 6] from the parameters theta [..., 6] and preconditioners [..., 6, 6]."""
    return jnp.einsum("...ij,...j->...i", precond, theta) * cfg.pose_refine_scale


def pose_deltas(params, cfg: ModelConfig):
    """The learned per-image pose deltas [num_images, 6] (axis-angle, translation), or None."""
    if not cfg.refine_poses or "pose_delta" not in params:
        return None
    return pose_delta_of(params["pose_delta"], params["pose_precondition"], cfg)


def pose_preconditioner(c2w, *, num_points: int = 256, seed: int = 0, damping: float = 1e-4):
    """Per-camera preconditioners P [N, 6, 6] of the pose deltas (CamP, Park et al. 2023).

    A rotation about an axis across the view and a sideways translation move the image of
    a scene at a distance almost alike: in the raw deltas the loss is a long narrow valley
    that Adam crawls along. With delta = P theta, P = (J^T J + damping tr/6)^(-1/2), where J
    [num_points * 2, 6] is the Jacobian of the normalized image coordinates (x/z, y/z) of
    points in front of the camera with respect to the delta, a unit step of theta in any
    direction moves the points' images by about one unit RMS: the valley becomes round.
    The points lie along random directions within 45 degrees of the optical axis, at
    depths 0.5-1.5 times the camera's distance to the origin (the scene's centre after
    normalization). c2w: [N, 3, 4] float (camera frame: x right, y down, z forward).
    """
    c2w = np.asarray(c2w, np.float64)
    rng = np.random.default_rng(seed)
    n = len(c2w)
    xy = rng.uniform(-1.0, 1.0, size=(n, num_points, 2))
    depth = np.linalg.norm(c2w[:, :, 3], axis=-1)[:, None] * rng.uniform(0.5, 1.5, size=(n, num_points))
    depth = np.maximum(depth, 1e-3)
    cam_pts = np.concatenate([xy, np.ones((n, num_points, 1))], -1) * depth[..., None]
    world = np.einsum("nij,nkj->nki", c2w[:, :, :3], cam_pts) + c2w[:, None, :, 3]

    def project(delta, R, t, X):  # the points' normalized coordinates in the camera c2w + delta
        Rn = rigid.exp_so3(delta[:3]) @ R
        p = (X - t - delta[3:]) @ Rn  # rows: R_n^T (X - t')
        return (p[:, :2] / p[:, 2:]).reshape(-1)

    jac = jax.vmap(jax.jacfwd(project), in_axes=(None, 0, 0, 0))(
        jnp.zeros(6, jnp.float32), jnp.asarray(c2w[:, :, :3], jnp.float32), jnp.asarray(c2w[:, :, 3], jnp.float32),
        jnp.asarray(world, jnp.float32))
    jac = np.asarray(jac, np.float64) / np.sqrt(num_points)  # [N, 2K, 6]; J^T J = mean over points
    m = np.einsum("nki,nkj->nij", jac, jac)
    m += damping * np.trace(m, axis1=1, axis2=2)[:, None, None] / 6 * np.eye(6)
    w, v = np.linalg.eigh(m)
    return np.einsum("nij,nj,nkj->nik", v, 1.0 / np.sqrt(np.maximum(w, 1e-30)), v).astype(np.float32)


def refined_c2w(c2w, delta):
    """c2w [N, 3, 4] corrected by delta [N, 6] as in apply_pose_delta (numpy float64)."""
    c2w = np.asarray(c2w, np.float64)
    R_d = rigid.exp_so3(np.asarray(delta, np.float64)[:, :3])
    out = c2w.copy()
    out[:, :, :3] = R_d @ c2w[:, :, :3]
    out[:, :, 3] = c2w[:, :, 3] + np.asarray(delta, np.float64)[:, 3:]
    return out


def pose_regularizer(params, cfg: ModelConfig):
    """pose_reg_rot * mean |rotation| + pose_reg_trans * mean |translation| of the deltas (0 when off)."""
    delta = pose_deltas(params, cfg)
    if delta is None:
        return jnp.float32(0.0)
    # sqrt(x + eps): a finite gradient at the all-zero start.
    norm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=-1) + 1e-12)  # noqa: E731
    return cfg.pose_reg_rot * jnp.mean(norm(delta[:, :3])) + cfg.pose_reg_trans * jnp.mean(norm(delta[:, 3:]))


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
