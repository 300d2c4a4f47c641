"""The tiled model in the pipeline (Config.tiles > 1): its mesh, its layout, its trainer and its renderer.

nerflib.train's loop asks a trainer for five things (`Trainer`: the untiled one lives in
nerflib.train); `TiledTrainer` gives them for a TiledModel:
  init(key)           a TrainState whose tile arrays are created sharded P('tile')
  step_fn(batcher)    the jitted step(state, RayData, key) -> (state, stats), with the untiled
                      step's guards (non-finite steps skipped, lr_mult, the learning-rate schedule)
  shardings(state)    the state's shardings, for restoring checkpoints straight onto the mesh
  render_fn()         jit(params, rays [C]) -> {'rgb', 'depth', 'acc'} for evaluate.render_image
  model               the TiledModel

The layout travels with the parameters: params = {'prop_field', 'nerf_field', 'tile_boxes'}
(the boxes lo, hi, c_lo, c_hi [K, 3], constants outside the optimizer), so a model folder
renders without its training inputs (`model_of`).

Layout: split at the scene's SfM points (`scene_with_points`: the train rule's sparse/0, tiles > 1
rows only), else at the training cameras' centres (`layout_points`).

Mesh: `tile_mesh(K)` over the available devices: the 'tile' axis min(K, devices) rounded down
to a power of two (so it divides K), 'data' the devices left over divided by that; one
device holds all K tiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nerflib import math as nmath
from nerflib import parallel
from nerflib import train_step as ts
from nerflib.tiled.model import TiledModel, TileLayout, layout_from_points
from nerflib.tiled.train import state_shardings

BOXES = "tile_boxes"  # the params entry holding the layout
_BOX_NAMES = ("lo", "hi", "c_lo", "c_hi")


def tile_mesh(k: int, devices=None) -> Mesh:
    """The ('data', 'tile') mesh for K tiles over `devices` (default all): tile = the largest power of
    two <= min(K, devices), data = devices // tile (devices beyond data * tile stay idle)."""
    devices = list(jax.devices() if devices is None else devices)
    if k < 1 or k & (k - 1):
        raise ValueError(f"tiles must be a power of two, got {k}")
    tile = 1
    while tile * 2 <= min(k, len(devices)):
        tile *= 2
    data = len(devices) // tile
    return Mesh(np.array(devices[: data * tile]).reshape(data, tile), (parallel.DATA_AXIS, "tile"))


def scene_with_points(scene, sparse):
    """`scene` carrying the points of the COLMAP model at `sparse` (the poses step's sparse/0, written in
    scene.json's frame), for splitting tiles at them; `scene` itself when sparse is '' or holds none.
    The points are normalized with the cameras when the dataset is loaded (datasets.load_for_config)."""
    if not sparse:
        return scene
    from nerflib import scene_io

    points = scene_io.read_colmap(sparse, check_images=False).points
    return scene if points is None else dataclasses.replace(scene, points=points)


def layout_points(dataset) -> tuple[np.ndarray, str]:
    """(points [P, 3], what they are) to split into tiles: the (normalized) scene's SfM points when it
    carries them, else the training cameras' centres."""
    points = getattr(dataset.scene, "points", None) if dataset.scene is not None else None
    if points is not None and len(points) >= 16:
        return np.asarray(points, np.float64), f"{len(points)} SfM points"
    return np.asarray(dataset.c2w[:, :, 3], np.float64), f"{len(dataset.c2w)} camera centres"


def fields(params) -> dict:
    """The trained part of tiled params (everything but the layout)."""
    return {k: v for k, v in params.items() if k != BOXES}


def model_of(cfg, params) -> TiledModel:
    """The TiledModel of trained params (their 'tile_boxes' entry is the layout)."""
    boxes = jax.device_get(params[BOXES])
    return TiledModel(cfg.model, TileLayout(**{n: np.asarray(boxes[n], np.float64) for n in _BOX_NAMES}))


def ray_render(model: TiledModel, *, extras: bool = False):
    """render(params, rays [...]) -> {'rgb' [..., 3], 'depth', 'acc' [...]}: all tiles on this device,
    deterministic (centred samples), not jitted, differentiable w.r.t. params and rays
    (evaluate.ray_render's tiled case; params with or without their 'tile_boxes'). extras: also
    'distance_median', 'distance_percentile_5', '_95' (`distance_percentiles`), as the untiled model's
    compute_extras gives them."""

    def render(params, rays):
        shape = rays.origins.shape[:-1]
        flat = jax.tree.map(lambda x: x.reshape(-1, x.shape[-1]), rays)  # render_local takes rays [R]
        out, hist = model.render(fields(params), flat, jitter=None, train_frac=1.0)
        out = {k: out[k] for k in ("rgb", "depth", "acc")}
        if extras:
            out.update(distance_percentiles(hist[-1]["tdist"], hist[-1]["weights"], out["acc"], flat.far))
        return {k: v.reshape(shape + v.shape[1:]) for k, v in out.items()}

    return render


def distance_percentiles(tdist, weights, acc, far) -> dict:
    """Termination-distance percentiles [R] of the final round over all tiles, as render.volumetric_rendering's
    extras: tdist [R, K, n+1] and global weights [R, K, n] of every tile (a render's history), acc [R],
    far [R, 1]. The tiles' intervals (disjoint) in the order the ray enters them, a zero-weight gap
    between consecutive tiles, and the missing mass 1 - acc on [t_last, far]."""
    from nerflib import render as render_lib

    order = jnp.argsort(tdist[..., 0], axis=-1)  # a tile's intervals start at its entry (missed: at far)
    t = jnp.take_along_axis(tdist, order[..., None], axis=1)
    w = jnp.take_along_axis(weights, order[..., None], axis=1)
    r, k, n = w.shape
    t = t.reshape(r, k * (n + 1))
    w = jnp.concatenate([w, jnp.zeros((r, k, 1), w.dtype)], axis=-1).reshape(r, k * (n + 1))[:, :-1]
    t_aug = jnp.concatenate([t, jnp.broadcast_to(far, (r, 1))], axis=-1)
    w_aug = jnp.concatenate([w, jnp.maximum(0.0, 1.0 - acc)[:, None]], axis=-1)
    return render_lib.distance_percentiles(t_aug, w_aug)


def make_render_fn(model: TiledModel, mesh: Mesh):
    """jit(params, rays [C]) -> {'rgb' [C, 3], 'depth' [C], 'acc' [C]}, deterministic (centred samples).

    On a mesh with a 'tile' axis the tiles render where their parameters are (P('tile')); on a
    1-D 'data' mesh every device renders all tiles (params replicated)."""
    rep = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P(parallel.DATA_AXIS))
    sharded = "tile" in mesh.axis_names

    def render(params, rays):
        out, _ = model.render(fields(params), rays, jitter=None, train_frac=1.0, mesh=mesh if sharded else None)
        return {k: out[k] for k in ("rgb", "depth", "acc")}

    if sharded:
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
        params_sh = state_shardings({**shapes, BOXES: model.boxes()}, mesh)
        return jax.jit(render, in_shardings=(params_sh, data), out_shardings=rep)
    return jax.jit(render, in_shardings=(rep, data), out_shardings=rep)


class TiledTrainer:
    """What nerflib.train's loop asks of a model (see the module docstring), for cfg.tiles > 1 tiles."""

    def __init__(self, cfg, dataset, mesh: Mesh, *, log=None):
        if "tile" not in mesh.axis_names:
            raise ValueError(f"the tiled trainer needs a ('data', 'tile') mesh (tile_mesh), got axes {mesh.axis_names}")
        self.cfg, self.mesh = cfg, mesh
        points, what = layout_points(dataset)
        self.model = TiledModel(cfg.model, layout_from_points(points, cfg.tiles, contraction=cfg.model.contraction))
        self.tx = ts.make_optimizer(cfg)
        self.description = (f"{cfg.tiles} tiles split at {what}, on a {mesh.shape['data']} (data) x "
                            f"{mesh.shape['tile']} (tile) mesh, {cfg.tiles // mesh.shape['tile']} per device")
        if log is not None:
            log(self.description)

    def _make(self, key):
        f = self.model.init(key)
        return ts.TrainState(step=jnp.zeros((), jnp.int32), params={**f, BOXES: self.model.boxes()},
                             opt_state=self.tx.init(f), lr_mult=jnp.ones((), jnp.float32),
                             num_skipped=jnp.zeros((), jnp.int32))

    def shardings(self, state=None):
        """The TrainState's shardings: P('tile') for every array with a tile axis, scalars replicated."""
        shapes = jax.eval_shape(self._make, jax.random.PRNGKey(0)) if state is None else state
        return state_shardings(shapes, self.mesh)

    def init(self, key) -> ts.TrainState:
        """A fresh state, each tile's arrays created on the devices of its 'tile' coordinate only."""
        return jax.jit(self._make, out_shardings=self.shardings())(key)

    def render_fn(self):
        if getattr(self, "_render_fn", None) is None:  # one compilation for every held-out render
            self._render_fn = make_render_fn(self.model, self.mesh)
        return self._render_fn

    def step_fn(self, batcher):
        """The jitted step(state, data, key) -> (state, stats): rays drawn inside (batcher.sample), the
        tiled render and loss, then train_step.guarded_update (the untiled step's update and guards)."""
        cfg, model, mesh, tx = self.cfg, self.model, self.mesh, self.tx
        den = max(cfg.max_steps - 1, 1)

        def step(state, data, key):
            key = jax.random.fold_in(key, state.step)
            k_batch, k_model = jax.random.split(key)
            batch = batcher.sample(k_batch, data)
            train_frac = jnp.clip(state.step.astype(jnp.float32) / den, 0.0, 1.0)
            jitter = model.draw_jitter(k_model, batch.rgb.shape[0])

            def loss_fn(f):
                out, _ = model.render(f, batch.rays, jitter=jitter, train_frac=train_frac, mesh=mesh)
                return model.loss(out, batch.rgb)

            f = fields(state.params)
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(f)
            new_state, out = ts.guarded_update(cfg, tx, state, f, grads, loss, stats)
            new_state = new_state.replace(params={**new_state.params, BOXES: state.params[BOXES]})
            if "psnr" not in out:
                out["psnr"] = nmath.psnr_from_mse(out["mse"])
            return new_state, out

        st = self.shardings()
        rep = NamedSharding(mesh, P())
        return jax.jit(step, in_shardings=(st, batcher.sharding, rep), out_shardings=(st, rep), donate_argnums=(0,))
