"""The model's hyperparameters: `ModelConfig` (frozen, hashable, JSON round trip) and its presets.

`ModelConfig` holds every setting of the fields, the sampler and the losses; `nerflib.models`
builds the Flax modules from it and re-exports these names. Defaults are mip-NeRF 360's
(paper + multinerf's configs/360.gin); `model_mipnerf360()` and `model_tiny()` are the
model presets the training presets (`nerflib.configs`) start from.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from nerflib import coord

__all__ = [
    "ModelConfig",
    "model_mipnerf360",
    "model_tiny",
    "config_from_dict",
    "tiled_model_problems",
    "for_tiles",
    "FIELDS",
    "BACKGROUNDS",
    "CONTRACTIONS",
    "DENSITY_ACTIVATIONS",
    "DATA_LOSSES",
    "MLP_DTYPES",
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
    # The interlevel loss's kind: () = mip-NeRF 360's; one box half-width per proposal round (in
    # normalised distance s) = Zip-NeRF's anti-aliased loss, the final weights blurred and re-binned
    # onto each proposal round (losses.interlevel_loss; Zip-NeRF: (0.03, 0.003) with mult 0.01).
    interlevel_blur: tuple[float, ...] = ()
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
        set_("interlevel_blur", tuple(float(r) for r in self.interlevel_blur))
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
        need(not self.interlevel_blur or (len(self.interlevel_blur) == self.num_levels - 1
                                          and min(self.interlevel_blur) > 0),
             "interlevel_blur must be () or one half-width > 0 per proposal round", self.interlevel_blur)
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


# --------------------------------------------------------------------------- the tiled model (issue #26)

# Options of the untiled model that only speed it up, which the tiled model (nerflib.tiled) does not
# implement: `for_tiles` turns them off, keeping every setting that shapes the field.
_TILED_OFF = dict(opaque_background=False, skip_threshold=0.0, prop_grad_fraction=1.0, prop_sparsity_mult=0.0,
                  sample_budget=1.0)


def tiled_model_problems(cfg: ModelConfig) -> list[str]:
    """What keeps `cfg` from being split into spatial tiles (nerflib.tiled.TiledModel); [] when it can be."""
    bad = {
        "field must be 'hashgrid'": cfg.field != "hashgrid",
        "opaque_background must be False (only the last tile along a ray could close it)": cfg.opaque_background,
        "background must be 'white' or 'black'": cfg.background == "random",
        "skip_threshold must be 0": cfg.skip_threshold > 0,
        "prop_grad_fraction must be 1": cfg.prop_grad_fraction != 1.0,
        "num_glo_features must be 0": cfg.num_glo_features > 0,
        "share_proposal_field must be True": not cfg.share_proposal_field,
        "prop_sparsity_mult must be 0": cfg.prop_sparsity_mult > 0,
        "multisamples and prop_multisamples must be 0": cfg.multisamples > 0 or cfg.prop_multisamples > 0,
        "refine_poses must be False": cfg.refine_poses,
        # The blurred final weights of one tile spill into the next: no exact decomposition over tiles.
        "interlevel_blur must be ()": bool(cfg.interlevel_blur),
    }
    return [what for what, wrong in bad.items() if wrong]


def for_tiles(cfg: ModelConfig) -> ModelConfig:
    """`cfg` as the tiled model runs it: the untiled model's speed-ups it lacks turned off (the last
    interval is not opaque, no empty-space skipping, proposal gradients from every ray). Other
    problems (an MLP field, appearance codes, ...) stay, for `tiled_model_problems` to name."""
    return dataclasses.replace(cfg, **_TILED_OFF)


def config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a ModelConfig from `dataclasses.asdict(cfg)` (e.g. read from JSON)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig fields: {unknown}")
    return ModelConfig(**d)
