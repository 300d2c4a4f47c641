"""The training step: TrainState, the optimizer (multinerf's clipping + Adam), `init_state`, `make_train_step`.

The step is one jitted function with `donate_argnums=(0,)`; its randomness comes from
`fold_in(key, step)`. A step whose loss or gradients are not finite leaves params and
optimizer state unchanged (stats['nonfinite'] = 1). `nerflib.train` runs the loop and
re-exports these names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nerflib import configs, datasets, losses, models, parallel, pose_refine
from nerflib import math as nmath


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params / opt_state: pytrees; lr_mult: float32 []; num_skipped: int32 []."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    lr_mult: jnp.ndarray
    num_skipped: jnp.ndarray


# --------------------------------------------------------------------------- set-up


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache; returns its directory (None if off).

    path, else $DNERF_JAX_CACHE, else ~/.cache/dnerf/jax; 'off' (or '') disables.
    An existing setting (e.g. JAX_COMPILATION_CACHE_DIR) is kept.
    """
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    value = str(path) if path is not None else os.environ.get("DNERF_JAX_CACHE", "~/.cache/dnerf/jax")
    if value.strip().lower() in ("", "off", "0", "none", "false"):
        return None
    directory = Path(value).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home must not stop training
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return str(directory)


def make_model(cfg: configs.Config, num_images: int):
    return models.make_model(cfg.model, num_images=num_images)


def lr_at(cfg: configs.Config, step):
    """The scheduled learning rate at `step` (before TrainState.lr_mult)."""
    return nmath.learning_rate_decay(
        step, lr_init=cfg.lr_init, lr_final=cfg.lr_final, max_steps=cfg.max_steps,
        lr_delay_steps=cfg.lr_delay_steps, lr_delay_mult=cfg.lr_delay_mult,
    )


def tree_norm(tree):
    """sqrt of the sum of squares of all leaves (optax.global_norm, which newer optax renames)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def clip_by_module_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale each top-level subtree to norm <= max_norm (multinerf's clip_gradients).

    mult = min(1, max_norm / (eps + |g|)) per module, eps = float32 epsilon.
    """

    def update_fn(updates, state, params=None):
        del params
        eps = jnp.finfo(jnp.float32).eps
        if not isinstance(updates, dict):
            modules = {"": updates}
        else:
            modules = updates
        out = {}
        for name, g in modules.items():
            mult = jnp.minimum(1.0, max_norm / (eps + tree_norm(g)))
            out[name] = jax.tree_util.tree_map(lambda z, m=mult: z * m, g)
        return (out[""] if not isinstance(updates, dict) else type(updates)(out)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(cfg: configs.Config) -> optax.GradientTransformation:
    """Clipping + Adam's scaling; the learning rate is applied in the step (it depends on lr_mult)."""
    parts = []
    if cfg.grad_max_val > 0:
        parts.append(optax.clip(cfg.grad_max_val))
    if cfg.grad_max_norm > 0:
        parts.append(clip_by_module_norm(cfg.grad_max_norm) if cfg.grad_clip_per_module
                     else optax.clip_by_global_norm(cfg.grad_max_norm))
    parts.append(optax.scale_by_adam(b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_eps))
    return optax.chain(*parts)


def init_state(cfg: configs.Config, dataset: datasets.Dataset, key, mesh, *, model=None) -> TrainState:
    """A fresh TrainState replicated over `mesh` (every process computes the same)."""
    model = make_model(cfg, dataset.num_train_images) if model is None else model
    tx = make_optimizer(cfg)

    precond = pose_refine.pose_preconditioner(dataset.c2w) if cfg.model.refine_poses else None

    def init(key):
        params = models.init_variables(model, key)["params"]
        if precond is not None:  # the cameras' own preconditioners (pose_refine.pose_preconditioner)
            params = {**params, "pose_precondition": jnp.asarray(precond)}
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            lr_mult=jnp.ones((), jnp.float32),
            num_skipped=jnp.zeros((), jnp.int32),
        )

    return jax.jit(init, out_shardings=parallel.replicated_sharding(mesh))(key)


def scalar_stats(stats: dict) -> dict:
    """The scalar entries of the loss's stats (per-level lists are dropped)."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, (jax.Array, np.ndarray, float, int)) and jnp.ndim(v) == 0:
            out[k] = jnp.asarray(v, jnp.float32)
    return out


def guarded_update(cfg: configs.Config, tx: optax.GradientTransformation, state: TrainState, params, grads, loss,
                   stats: dict) -> tuple[TrainState, dict]:
    """The update of one step, shared by the untiled and the tiled step: (state, scalar stats).

    params: the trained parameters (state.params, or the part the optimizer holds); the new state's
    params are the updated `params`. A step whose loss or gradients are not finite leaves params and
    optimizer state unchanged (stats['nonfinite'] = 1). The learning rate is lr_at(step) * lr_mult.
    """
    # One sum of squares over all gradients (needed for the stats anyway)
    # is non-finite iff some gradient is (or overflows float32 when
    # squared, a blow-up all the same); cheaper than an isfinite pass per leaf.
    grad_norm = tree_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Non-finite gradients would poison Adam's moments even if the update
    # were dropped: feed zeros instead and throw the whole update away.
    safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt = tx.update(safe_grads, state.opt_state, params)
    lr = lr_at(cfg, state.step) * state.lr_mult
    new_params = jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params=jax.tree_util.tree_map(keep, new_params, params),
        opt_state=jax.tree_util.tree_map(keep, new_opt, state.opt_state),
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32),
    )
    out = scalar_stats(stats)
    out["loss"] = loss
    out["lr"] = lr
    out["grad_norm"] = grad_norm
    out["nonfinite"] = (~finite).astype(jnp.float32)
    return new_state, out


def make_train_step(cfg: configs.Config, model, mesh, *, batcher: datasets.RayBatcher | None = None,
                    tx: optax.GradientTransformation | None = None) -> Callable:
    """The jitted `train_step(state, batch, key) -> (state, stats)`.

    Without `batcher`, batch is a `datasets.Batch` of global arrays split
    along 'data' (e.g. from `parallel.shard_batch`); with it, batch is the
    batcher's `RayData` and the rays are drawn inside the step
    (`batcher.sample`). key: the run's base key (replicated); the step uses
    fold_in(key, state.step). `state` is donated.
    """
    tx = make_optimizer(cfg) if tx is None else tx
    rep = parallel.replicated_sharding(mesh)
    batch_sharding = batcher.sharding if batcher is not None else parallel.data_sharding(mesh)
    train_frac_den = max(cfg.max_steps - 1, 1)

    def step_fn(state: TrainState, batch, key):
        key = jax.random.fold_in(key, state.step)
        k_batch, k_model = jax.random.split(key)
        if isinstance(batch, datasets.RayData):
            if batcher is None:
                raise ValueError("train_step got RayData but make_train_step had no batcher")
            batch = batcher.sample(k_batch, batch)
        # multinerf: train_frac = (step - 1) / (max_steps - 1) with steps from 1.
        train_frac = jnp.clip(state.step.astype(jnp.float32) / train_frac_den, 0.0, 1.0)

        def loss_fn(params):
            renderings, ray_history = model.apply(
                {"params": params}, batch.rays, rng=k_model, train_frac=train_frac
            )
            loss, stats = losses.total_loss(renderings, ray_history, batch.rgb, cfg.model)
            if cfg.model.refine_poses:
                stats["pose_reg"] = pose_refine.pose_regularizer(params, cfg.model)
                loss = loss + stats["pose_reg"]
            return loss, stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, out = guarded_update(cfg, tx, state, state.params, grads, loss, stats)
        if "psnr" not in out:
            out["psnr"] = nmath.psnr_from_mse(out["mse"]) if "mse" in out else jnp.float32(jnp.nan)
        return new_state, out

    return jax.jit(
        step_fn,
        in_shardings=(rep, batch_sharding, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
