"""Training a TiledModel on a `data x tile` mesh: tiles' parameters and Adam state sharded on 'tile'.

One step is one jitted function. The forward pass runs inside jax.shard_map
(TiledModel.render with a mesh): each device renders its tiles' segments of its
'data' shard of the rays, with one all-gather over 'tile' of T_k per proposal
round and one of the final Segments (their transposes, reduce-scatters, in the
backward pass). Parameters and optimizer state have a leading tile axis and the
sharding P('tile'): the Adam update is elementwise, so a tile's parameters,
gradients and moments never leave the devices of its 'tile' coordinate (they
are replicated over 'data'). With mesh None everything runs on one device: the
reference the sharded step must equal.

Short names: K tiles, T = mesh.shape['tile'] (K % T == 0, K / T tiles per device),
D = mesh.shape['data'], R rays per step (R % D == 0). `save_state` / `restore_state`: orbax
checkpoints of the sharded state, restored onto any mesh whose 'tile' size divides K.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nerflib.tiled.model import TiledModel


@flax.struct.dataclass
class TiledState:
    step: jnp.ndarray
    params: Any
    opt_state: Any


def make_mesh(data: int, tile: int, devices=None) -> Mesh:
    """A (data, tile) mesh over the first data * tile devices."""
    devices = list(jax.devices() if devices is None else devices)
    if data * tile > len(devices):
        raise ValueError(f"a {data} x {tile} mesh needs {data * tile} devices, {len(devices)} available")
    return Mesh(np.array(devices[: data * tile]).reshape(data, tile), ("data", "tile"))


def make_optimizer(*, lr_init: float = 1e-2, lr_final: float = 1e-3, max_steps: int = 10_000, b1: float = 0.9,
                   b2: float = 0.99, eps: float = 1e-15) -> optax.GradientTransformation:
    """Adam with a log-linear decay lr_init -> lr_final (configs.fast's optimiser, no warm-up)."""
    if not (lr_init > 0 and lr_final > 0 and max_steps >= 1):
        raise ValueError(f"need lr_init, lr_final > 0 and max_steps >= 1, got {lr_init}, {lr_final}, {max_steps}")
    sched = lambda step: lr_init * (lr_final / lr_init) ** jnp.clip(step / max_steps, 0.0, 1.0)
    return optax.adam(sched, b1=b1, b2=b2, eps=eps)


def state_shardings(state: TiledState, mesh: Mesh):
    """P('tile') for every array with a leading tile axis (params, Adam moments), replicated scalars."""
    return jax.tree.map(lambda x: NamedSharding(mesh, P("tile") if np.ndim(x) >= 1 else P()), state)


def init_state(model: TiledModel, optimizer, key, mesh: Mesh | None = None) -> TiledState:
    """Parameters and optimizer state, created directly with their shardings (a tile's arrays are
    never materialised on the other tiles' devices)."""

    def make(key):
        params = model.init(key)
        return TiledState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    if mesh is None:
        return jax.jit(make)(key)
    shapes = jax.eval_shape(make, key)
    return jax.jit(make, out_shardings=state_shardings(shapes, mesh))(key)


def make_train_step(model: TiledModel, optimizer, mesh: Mesh | None = None, *, donate: bool = True):
    """step(state, rays [R], rgb [R, 3], key, train_frac) -> (state, stats), jitted.

    The jitter is drawn for the whole batch from fold_in(key, state.step), so the sharded step
    draws the same samples as the single-device one.
    """

    def step(state: TiledState, rays, rgb, key, train_frac):
        jitter = model.draw_jitter(jax.random.fold_in(key, state.step), rgb.shape[0])

        def loss_fn(params):
            out, _ = model.render(params, rays, jitter=jitter, train_frac=train_frac, mesh=mesh)
            return model.loss(out, rgb)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        stats = dict(stats, loss=loss)
        return TiledState(step=state.step + 1, params=params, opt_state=opt_state), stats

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    shapes = jax.eval_shape(lambda k: init_state(model, optimizer, k), jax.random.PRNGKey(0))
    st = state_shardings(shapes, mesh)
    data = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    return jax.jit(step, donate_argnums=donate_argnums, in_shardings=(st, data, data, rep, rep),
                   out_shardings=(st, rep))


def save_state(path, state: TiledState) -> None:
    """Write `state` to the new folder `path` (orbax, sharded: every process writes the shards of the
    tiles on its devices, so no device ever holds another tile's parameters)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), state)


def restore_state(path, model: TiledModel, optimizer, mesh: Mesh | None = None) -> TiledState:
    """A state saved by `save_state`, read straight into the shardings of `mesh` (any 'tile' size
    that divides K: a tile's arrays are read only on its devices), or onto one device."""
    import orbax.checkpoint as ocp

    shapes = jax.eval_shape(lambda k: init_state(model, optimizer, k), jax.random.PRNGKey(0))
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: dev, shapes)
    else:
        shardings = state_shardings(shapes, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path), abstract)


def exchange_bytes(model: TiledModel) -> dict:
    """Bytes exchanged per ray and tile in one training step (float32), and the collectives' count.

    Forward: T_k per proposal round (4 B) and the final Segment (t_enter, T, acc, sum w t, sum w s,
    distortion, rgb: 9 floats, 36 B); backward: the same sizes again (the all-gathers' transposes).
    A device receives this for each of its rays and each tile it does not hold.
    """
    rounds = model.cfg.num_levels - 1
    forward = 4 * rounds + 36
    return {"forward": forward, "backward": forward, "step": 2 * forward, "collectives": 2 * (rounds + 1)}
