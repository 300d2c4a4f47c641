"""Training configuration: one frozen dataclass, named presets, JSON round trip.

`Config` holds the model (`models.ModelConfig`) and every training knob; no
global registry. The resolved config is written next to the checkpoints
(`model/config.json`) and read back by evaluation and resumption.

Presets (named functions; `get_preset(name, **overrides)` applies overrides):
  mipnerf360()  the paper's training recipe (multinerf configs.py + configs/360.gin),
  tiny()        CPU-sized, for the demo and CI,
  fast()        hash-grid field with small MLPs (untuned, see its docstring),
  quality()     fast with a larger, finer grid and a wider colour head (about 5 minutes on one H100).

Overrides use field names; model fields go either as `model={...}` or as
dotted names through a dict: `get_preset('tiny', **{'model.num_nerf_samples': 8})`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

from nerflib import fileio
from nerflib import typed
from nerflib.typed import check_fields, check_type, to_dict  # noqa: F401 (re-exported)
from nerflib.model_config import for_tiles, tiled_model_problems
from nerflib.models import ModelConfig, model_mipnerf360, model_tiny
from nerflib.settings import setting

NORMALIZE_MODES = ("360", "forward", None)
IMAGE_SHARDING = ("auto", "replicate", "shard")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults are mipnerf360()'s.

    Sources: "mn configs.py" = multinerf internal/configs.py defaults,
    "mn 360.gin" = multinerf configs/360.gin, "mn train.py" / "mn train_utils.py"
    the training loop; "ours" = our own choice (bookkeeping, not the science).
    """

    model: ModelConfig = dataclasses.field(default_factory=model_mipnerf360)

    # --- Data -------------------------------------------------------------
    factor: int = 4  # image downsampling; mn 360.gin Config.factor = 4.
    test_every: int = 8  # every 8th image held out; mn configs.py llffhold = 8 (0: no hold-out).
    normalize: str | None = "360"  # scene_io.normalize_scene mode; None keeps the given frame.
    # Ray bounds; None: the scene's own if it has them, else the model's
    # (ModelConfig.near/far = mn 360.gin 0.2 / 1e6); see datasets.load_for_config.
    near: float | None = None
    far: float | None = None
    # Where training images live on the devices (ours): "replicate" = every
    # device holds all of them, batches are identical for any device count;
    # "shard" = each device holds 1/D of the images and samples its share of
    # the batch from them (memory scales to big captures, batches depend on
    # D); "auto" = shard when the uint8 images exceed shard_threshold_mb.
    image_sharding: str = "auto"
    shard_threshold_mb: float = 2048.0

    # --- Optimisation -------------------------------------------------------
    batch_size: int = 16384  # rays per step (global); mn configs.py (360.gin keeps it).
    max_steps: int = 250_000  # mn configs.py.
    lr_init: float = 2e-3  # mn configs.py.
    lr_final: float = 2e-5  # mn configs.py.
    lr_delay_steps: int = 512  # warm-up steps; mn configs.py.
    lr_delay_mult: float = 0.01  # warm-up starts at lr_init * this; mn configs.py.
    adam_beta1: float = 0.9  # mn configs.py.
    adam_beta2: float = 0.999  # mn configs.py.
    adam_eps: float = 1e-6  # mn configs.py.
    grad_max_norm: float = 1e-3  # gradient norm clip, 0 = off; mn configs.py.
    grad_max_val: float = 0.0  # gradient value clip, 0 = off; mn configs.py.
    # Clip each top-level module (proposal field, NeRF field, ...) separately,
    # as mn train_utils.clip_gradients does; False = one global norm (optax).
    grad_clip_per_module: bool = True

    # --- Bookkeeping (ours unless stated) ----------------------------------
    seed: int = 20200823  # mn train.py random.PRNGKey(20200823).
    checkpoint_every: int = 5000  # mn uses 25000; more often costs ~nothing and loses less on a crash.
    keep_checkpoints: int = 3
    print_every: int = 100  # mn configs.py.
    tb_every: int = 100  # mn writes TensorBoard at print_every.
    eval_every: int = 5000  # PSNR of one held-out view during training; mn train_render_every; 0 = off.
    render_chunk_size: int = 16384  # rays per rendering call (global); mn configs.py.
    eval_quantize: bool = True  # metrics on 8-bit images; mn configs.py eval_quantize_metrics.
    nan_patience: int = 20  # consecutive non-finite steps before restoring the last checkpoint.
    max_lr_drops: int = 4  # give up (RuntimeError) after this many restore + halve-LR rounds.
    # Debug knob for tests: steps (0-based state.step) whose rays are made NaN
    # (NaN camera poses fed to the same compiled step), only while the LR
    # multiplier is still 1: a transient blow-up that one LR drop cures.
    debug_nan_steps: tuple[int, ...] = ()

    # --- Spatial tiles (issue #26; nerflib.tiled, docs/tiles.md) ------------
    tiles: int = setting(1, """Spatial tiles of the field (NeRF-XL): K > 1 splits space into K boxes, each with
        its own hash grids and networks, sharded over the GPUs' 'tile' axis, so that more GPUs hold a larger
        field. A power of two; 1 = the untiled model. Needs a hash-grid preset (tiny, fast, quality).""",
                         minimum=1)

    def __post_init__(self):
        object.__setattr__(self, "debug_nan_steps", tuple(int(s) for s in self.debug_nan_steps))
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"Config.model must be a ModelConfig, got {type(self.model).__name__}")

        def need(ok, what, value):
            if not ok:
                raise ValueError(f"Config.{what}, got {value!r}")

        for name in ("batch_size", "max_steps", "factor", "checkpoint_every", "keep_checkpoints", "print_every",
                     "tb_every", "render_chunk_size", "nan_patience"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1", getattr(self, name))
        for name in ("test_every", "eval_every", "lr_delay_steps", "max_lr_drops"):
            need(int(getattr(self, name)) >= 0, f"{name} must be >= 0", getattr(self, name))
        need(self.lr_init > 0 and self.lr_final > 0, "lr_init and lr_final must be positive", (self.lr_init, self.lr_final))
        need(self.lr_delay_mult > 0, "lr_delay_mult must be positive", self.lr_delay_mult)
        need(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam betas must be in [0, 1)",
             (self.adam_beta1, self.adam_beta2))
        need(self.adam_eps >= 0, "adam_eps must be >= 0", self.adam_eps)
        need(self.grad_max_norm >= 0 and self.grad_max_val >= 0, "gradient clips must be >= 0 (0 = off)",
             (self.grad_max_norm, self.grad_max_val))
        need(self.normalize in NORMALIZE_MODES, f"normalize must be one of {NORMALIZE_MODES}", self.normalize)
        need(self.image_sharding in IMAGE_SHARDING, f"image_sharding must be one of {IMAGE_SHARDING}",
             self.image_sharding)
        need(self.tiles >= 1 and self.tiles & (self.tiles - 1) == 0, "tiles must be a power of two "
             "(1, 2, 4, 8, ...)", self.tiles)
        if self.tiles > 1 and tiled_model_problems(self.model):
            raise ValueError(
                f"Config.tiles={self.tiles}: the tiled model does not support this model: "
                f"{'; '.join(tiled_model_problems(self.model))}. The presets it supports: {', '.join(tiled_presets())} "
                "(their speed-ups it lacks are turned off with tiles > 1); use one of them, or tiles 1")
        if self.near is not None or self.far is not None:
            need(0 <= self.ray_near < self.ray_far, "need 0 <= near < far", (self.near, self.far))

    @property
    def ray_near(self) -> float:
        """near, or the model's default (what applies when the scene has no bounds)."""
        return float(self.model.near if self.near is None else self.near)

    @property
    def ray_far(self) -> float:
        return float(self.model.far if self.far is None else self.far)

    @property
    def white_background(self) -> bool:
        """Composite images with alpha onto white, matching the model's background ('black' -> False)."""
        return self.model.background != "black"


# --------------------------------------------------------------------------- presets

# Every preset is declared once, by the `_preset` decorator on its function: its name
# and whether it is made for a GPU. PRESETS, GPU_PRESETS, get_preset, the CLI's
# choices and (through tests/test_configs.py) the config schemas derive from that.
_FACTORIES: dict[str, Any] = {}
_GPU: dict[str, bool] = {}
AUTO = "auto"  # default_preset / --preset auto: resolve_preset picks by the accelerator present


def _preset(*, gpu: bool):
    """Declare the decorated function a preset; `gpu`: made for a GPU (on a CPU it stops unless allowed)."""

    def declare(factory):
        _FACTORIES[factory.__name__] = factory
        _GPU[factory.__name__] = gpu
        return factory

    return declare


@_preset(gpu=True)
def mipnerf360(**overrides) -> Config:
    """mip-NeRF 360 as trained in the paper (see the field comments for each value's source).

    batch 16384 rays, 250k steps, Adam(0.9, 0.999, 1e-6), lr 2e-3 -> 2e-5
    log-linear with a 512-step warm-up from 1% (multinerf configs.py; 360.gin
    changes none of these), gradient norm clipped to 1e-3 per MLP
    (train_utils.clip_gradients), images at 1/4 resolution (360.gin), every
    8th image held out (llffhold). The model is models.model_mipnerf360().
    """
    return _replace(Config(model=model_mipnerf360()), overrides)


# The small hash grid of the tiny preset: 8 levels of 2^14 entries, 16 -> 512
# cells across the contracted scene.
TINY_HASHGRID = (("num_levels", 8), ("features_per_level", 2), ("log2_table_size", 14),
                 ("base_resolution", 16), ("max_resolution", 512))


@_preset(gpu=False)
def tiny(**overrides) -> Config:
    """CPU-sized (demo, CI): a small hash-grid field, 1024-ray batches, 1500 steps.

    Not a paper recipe. Measured on the demo scene on 2 busy CPU cores
    (2026-11-25, factor 4, 120 s of training each): the MLP-only
    models.model_tiny() reached 21.9 dB held-out in 450 steps, this hash-grid
    field 24.2 dB in 900 steps (mean-colour baseline 15.5 dB). A higher
    learning rate (1e-2 -> 1e-4), a short warm-up, and no gradient clipping
    (the 1e-3 per-module clip of mip-NeRF 360 is tuned for 16k-ray batches and
    250k steps and slows a short run down).
    """
    base = Config(
        model=model_tiny(
            field="hashgrid",
            hashgrid_options=TINY_HASHGRID,
            prop_net_depth=1,
            prop_net_width=32,
            nerf_net_depth=1,
            nerf_net_width=64,
            bottleneck_width=15,
            net_width_viewdirs=32,
        ),
        factor=4,
        batch_size=1024,
        max_steps=1500,
        lr_init=1e-2,
        lr_final=1e-4,
        lr_delay_steps=100,
        lr_delay_mult=0.01,
        grad_max_norm=0.0,
        checkpoint_every=500,
        keep_checkpoints=2,
        print_every=50,
        tb_every=50,
        eval_every=0,
        render_chunk_size=4096,
    )
    return _replace(base, overrides)


@_preset(gpu=True)
def fast(**overrides) -> Config:
    """Hash-grid field (models field='hashgrid') with small MLPs: untuned, ours.

    Values follow instant-ngp's optimiser (lr 1e-2, Adam beta2 0.99, eps
    1e-15, no gradient clipping) with mip-NeRF 360's sampling and losses. The
    schedule (25k steps, 1e-2 -> 1e-3, about 2.5 min on one H100) is not tuned:
    on bonsai it ends 0.5 dB above a 12k-step one (bench/RESULTS.md call 17).
    """
    model = model_mipnerf360(
        field="hashgrid",
        prop_net_depth=1,
        prop_net_width=64,
        nerf_net_depth=1,
        nerf_net_width=64,
        bottleneck_width=15,
        net_depth_viewdirs=2,
        net_width_viewdirs=64,
        skip_layer=0,
        hashgrid_options=(("num_levels", 16), ("features_per_level", 2), ("log2_table_size", 19),
                          ("base_resolution", 16), ("max_resolution", 2048), ("dtype", "bfloat16")),
        # The proposal rounds only shape the sampling: a 5-level 2^17 grid (nerfacto's proposal
        # networks) is 1.45x faster per step than the full grid at the same held-out PSNR
        # (bench/RESULTS.md, call 8).
        prop_hashgrid_options=(("num_levels", 5), ("features_per_level", 2), ("log2_table_size", 17),
                               ("base_resolution", 16), ("max_resolution", 256), ("dtype", "bfloat16")),
        # bfloat16 interpolation and hidden layers (tables, parameters and heads stay float32):
        # 1.14x the rays/s at the same held-out PSNR (H100, bench/RESULTS.md call 12).
        mlp_dtype="bfloat16",
        # The proposal rounds learn from every 4th ray only (their backward pass is 1/4):
        # 1.22x the rays/s on lego400 and 1.35x on the real cup at the same held-out PSNR
        # (H100, bench/RESULTS.md call 17).
        prop_grad_fraction=0.25,
        # Dilate the proposal weights on their own endpoints (an upper bound of mip-NeRF 360's
        # dilation, without its sorts): 1.15x the rays/s on lego400 at a better held-out PSNR
        # (H100, bench/RESULTS.md call 19).
        dilate_on_grid=True,
        # Empty-space skipping: final samples the last proposal round bounds below 1e-3 of weight
        # are not evaluated. Only whole empty rays fall under it (final samples are drawn where
        # the proposal weight is), so it pays on objects on a plain background, where for_scene
        # also packs the live samples (sample_budget); elsewhere it changes nothing.
        skip_threshold=1e-3,
    )
    base = Config(
        model=model,
        batch_size=16384,
        max_steps=25_000,
        lr_init=1e-2,
        lr_final=1e-3,
        lr_delay_steps=1000,
        lr_delay_mult=0.01,
        adam_beta2=0.99,
        adam_eps=1e-15,
        grad_max_norm=0.0,
        checkpoint_every=2500,
    )
    return _replace(base, overrides)


# The quality preset's final grid: Zip-NeRF's finest resolution (8192) and a 2^21 table.
QUALITY_HASHGRID = (("num_levels", 16), ("features_per_level", 2), ("log2_table_size", 21),
                    ("base_resolution", 16), ("max_resolution", 8192), ("dtype", "bfloat16"))


@_preset(gpu=True)
def quality(**overrides) -> Config:
    """`fast` with a larger, finer final grid (QUALITY_HASHGRID) and Zip-NeRF's colour head: ~5 min on one H100.

    Each piece measured alone on bonsai, our SfM poses, 37 held-out views (H100, bench/RESULTS.md):
    the grid on `fast` 30.30 dB against 30.01 (70 s, call 22); Zip-NeRF's colour head (bottleneck
    256 and a 2 x 256 view MLP, not 15 and 2 x 64) on that 30.49 against 30.11 (60 s, call 24).
    Off (no gain at equal time): level weights (30.01) and 6 multisamples (28.56), camera
    refinement (29.89; SfM poses at 0.33 px), the anti-aliased interlevel loss (29.82), float32
    (29.96). The 26k steps end within 5 min on one H100: 31.97 dB on bonsai (call 25).
    """
    base = fast()
    model = dataclasses.replace(base.model, hashgrid_options=QUALITY_HASHGRID, bottleneck_width=256,
                                net_width_viewdirs=256)
    cfg = dataclasses.replace(base, model=model, max_steps=26_000, checkpoint_every=5000)
    return _replace(cfg, overrides)


PRESETS = tuple(_FACTORIES)  # ("mipnerf360", "tiny", "fast", "quality")
GPU_PRESETS = tuple(name for name in PRESETS if _GPU[name])
PRESET_CHOICES = (AUTO, *PRESETS)  # what the sheet, config.yaml and `nerf train --preset` accept
AUTO_GPU_PRESET = "fast"  # auto on a GPU: the best held-out PSNR per minute (bench/RESULTS.md)
AUTO_CPU_PRESET = "tiny"  # auto on a CPU


def tiled_presets() -> tuple[str, ...]:
    """The presets the tiled model (Config.tiles > 1) supports: hash-grid fields (for_tiles adapts the rest)."""
    return tuple(name for name in PRESETS if not tiled_model_problems(for_tiles(_FACTORIES[name]().model)))


def get_preset(name: str, **overrides) -> Config:
    """The preset `name` ('mipnerf360', 'tiny', 'fast') with `overrides` applied."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _FACTORIES[name](**overrides)


def needs_gpu(name: str) -> bool:
    """Whether preset `name` is made for a GPU (declared with `_preset(gpu=True)`)."""
    if name not in _GPU:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _GPU[name]


def resolve_preset(name: str, *, accelerator: bool) -> tuple[str, str]:
    """(preset, why): `auto` becomes AUTO_GPU_PRESET with an accelerator, else AUTO_CPU_PRESET."""
    if name != AUTO:
        needs_gpu(name)  # raises on an unknown name
        return name, f"preset {name}"
    if accelerator:
        return AUTO_GPU_PRESET, f"preset auto -> {AUTO_GPU_PRESET} (a GPU is present)"
    return AUTO_CPU_PRESET, f"preset auto -> {AUTO_CPU_PRESET} (no GPU: JAX runs on the CPU)"


def override(cfg: Config, **overrides) -> Config:
    """`cfg` with `overrides` applied (top-level names, `model={...}` or dotted `model.x`), validated."""
    return _replace(cfg, overrides)


def _replace(cfg: Config, overrides: dict) -> Config:
    """Apply top-level, `model={...}` and dotted `model.x` overrides, validating names and types."""
    if not overrides:
        return cfg
    top: dict[str, Any] = {}
    model_over: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "model":
            if isinstance(value, ModelConfig):
                top["model"] = value
            elif isinstance(value, dict):
                model_over.update(value)
            else:
                raise ValueError(f"override model= must be a ModelConfig or a dict, got {type(value).__name__}")
        elif key.startswith("model."):
            model_over[key[len("model."):]] = value
        else:
            top[key] = value
    merged = to_dict(cfg)
    for key, value in top.items():
        if key not in merged:
            raise ValueError(
                f"unknown config field {key!r}{typed.did_you_mean(key, merged)}; known: {', '.join(sorted(merged))}"
            )
        if key != "model":
            check_type(key, value, typing.get_type_hints(Config)[key])
        merged[key] = to_dict(value) if dataclasses.is_dataclass(value) else value
    if isinstance(merged["tiles"], int) and merged["tiles"] > 1 and cfg.tiles == 1 and "model" not in top:
        # The preset's model as the tiled model runs it (model_config.for_tiles); the user's model
        # overrides below still win (and fail, naming the option, where the tiled model lacks it).
        merged["model"] = to_dict(for_tiles(cfg.model))
    for key, value in model_over.items():
        if key not in merged["model"]:
            raise ValueError(
                f"unknown model config field {key!r}{typed.did_you_mean(key, merged['model'])}; "
                f"known: {', '.join(sorted(merged['model']))}"
            )
        check_type(f"model.{key}", value, typing.get_type_hints(ModelConfig)[key])
        merged["model"][key] = value
    return from_dict(merged)


def normalization_for(cfg: Config, scene) -> str | None:
    """The scene normalization `cfg` means for `scene`: '360' becomes 'forward' for forward-facing captures."""
    if scene.forward_facing and cfg.normalize == "360":
        return "forward"
    return cfg.normalize


def for_scene(cfg: Config, scene) -> Config:
    """`cfg` adapted to what kind of capture `scene` (a types.Scene) is; idempotent.

    * forward-facing (LLFF) scenes are normalized as 'forward' instead of '360';
    * an object on a plain background (Blender synthetic sets) trains as
      multinerf's Blender configs do: MSE data loss and no opaque last interval,
      so empty space shows the background. With the 360 recipe (Charbonnier
      loss, opaque far interval) such a scene collapses to an empty field that
      renders the background colour (measured on lego, bench/RESULTS.md).
      A hash-grid model with empty-space skipping on (the `fast` preset) also
      gets `object_scene_skipping`.

    Applied before the user's overrides (steps.train), so these stay the user's choice.
    """
    cfg = dataclasses.replace(cfg, normalize=normalization_for(cfg, scene))
    if getattr(scene, "object_on_background", False):
        # Synthetic objects on a plain background come with exact poses: nothing to refine.
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, opaque_background=False, data_loss_type="mse",
                                           refine_poses=False))
        if cfg.model.field == "hashgrid" and cfg.model.skip_threshold > 0:
            cfg = dataclasses.replace(cfg, model=object_scene_skipping(cfg.model))
    return cfg


def object_scene_skipping(model: ModelConfig) -> ModelConfig:
    """A hash-grid model with empty-space skipping, set for an object on a plain background.

    Most rays of such a scene miss the object: the proposal sparsity loss
    teaches the proposals so, the final field then runs on 35 % of the samples
    (about a third are live on lego), proposal gradients come from every 8th
    ray and the final grid has 2^18 entries (the object fills little of the
    contracted ball). Measured together on lego400 (H100, bench/RESULTS.md
    call 19): 5.5 M trained rays/s instead of 3.5 M at a better held-out PSNR.
    A capture where every ray hits something gains nothing from packing: it
    keeps sample_budget 1.0 (the same bench, real cup: all samples live).
    """
    hashgrid = dict(model.hashgrid_options)
    hashgrid["log2_table_size"] = min(18, hashgrid.get("log2_table_size", 18))
    return dataclasses.replace(model, prop_sparsity_mult=0.01, sample_budget=0.35, prop_grad_fraction=0.125,
                               hashgrid_options=tuple(hashgrid.items()))


def scale_batch_size(cfg: Config, new_batch_size: int) -> Config:
    """The config for another batch size, keeping the training recipe equivalent.

    For out-of-memory errors. multinerf's README ("OOM errors"): "reduce the
    batch size (Config.batch_size) ... If you do this, but want to preserve
    quality, be sure to increase the number of training iterations and
    decrease the learning rate by whatever scale factor you decrease batch
    size by." With s = new_batch_size / batch_size this sets
        lr_init, lr_final    *= s
        max_steps            /= s   (rounded; the same number of rays seen)
        lr_delay_steps       /= s   (ours: the warm-up then covers the same rays)
    e.g. halving the batch halves both learning rates and doubles the steps.
    Checkpoint/print intervals are left alone. s > 1 (a bigger batch for more
    devices) is allowed, but linear LR scaling upwards is less safe with Adam.
    """
    new_batch_size = int(new_batch_size)
    if new_batch_size < 1:
        raise ValueError(f"new_batch_size must be >= 1, got {new_batch_size}")
    s = new_batch_size / cfg.batch_size
    return dataclasses.replace(
        cfg,
        batch_size=new_batch_size,
        lr_init=cfg.lr_init * s,
        lr_final=cfg.lr_final * s,
        max_steps=max(1, round(cfg.max_steps / s)),
        lr_delay_steps=round(cfg.lr_delay_steps / s),
    )


# --------------------------------------------------------------------------- (de)serialisation


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict`; missing fields take their defaults, unknown ones raise ValueError."""
    return typed.from_dict_of(Config, d)


def save_json(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config atomically."""
    fileio.write_json(path, to_dict(cfg))


def load_json(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"cannot read config {path}: {e}; the file is damaged: retrain, or copy config.json back from a "
            "backup of this model folder"
        ) from e
    return from_dict(d)
