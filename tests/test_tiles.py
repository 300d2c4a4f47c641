"""Tiles (nerflib.tiles, issue #26): compositing per-tile ray segments equals rendering all samples at once.

The reference is the untiled computation of the same fields: each ray's tile
segments, in the order the ray enters the tiles, concatenated into one
sequence of intervals (a zero-density interval in each gap), then
render.compute_alpha_weights / volumetric_rendering and
stepfun.lossfun_distortion, in float64. Colour, opacity, depth, distortion
and their gradients agree. The sharded composite (one all-gather over a mesh
axis of tiles) runs over 2, 4 and 8 host devices in a subprocess (this file is
its script) and equals the single-device composite, gradients included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nerflib import render, stepfun, tiles

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def random_tiles(seed, *, rays=16, k=4, n=5, dtype=np.float64):
    """Per tile: (tdist [R, n+1], density [R, n], rgb [R, n, 3], t_enter [R]); segments in a random
    order per ray, with gaps between them, some densities zero, some tiles nearly opaque."""
    rng = np.random.default_rng(seed)
    per_tile = [[] for _ in range(k)]
    for _ in range(rays):
        order = rng.permutation(k)
        edges = np.sort(rng.uniform(0.5, 6.0, size=2 * k))  # enter/exit of each segment in ray order
        for slot, tile in enumerate(order):
            enter, leave = edges[2 * slot], edges[2 * slot + 1]
            t = np.sort(rng.uniform(enter, leave, size=n + 1))
            t[0], t[-1] = enter, leave
            density = rng.exponential(1.0, size=n) * rng.choice([0.0, 1.0, 30.0], size=n, p=[0.2, 0.6, 0.2])
            per_tile[tile].append((t, density, rng.uniform(size=(n, 3)), enter))
    return [tuple(np.stack([r[j] for r in rows]).astype(dtype) for j in range(4)) for rows in per_tile]


def untiled(per_tile, dirs, bg):
    """Reference: each ray's samples in one sequence, tiles in the order the ray enters them, a
    zero-density interval in each gap; then the plain (untiled) rendering and distortion loss."""
    t = jnp.stack([x[0] for x in per_tile], axis=1)  # [R, K, n+1]
    d = jnp.stack([x[1] for x in per_tile], axis=1)  # [R, K, n]
    c = jnp.stack([x[2] for x in per_tile], axis=1)  # [R, K, n, 3]
    order = jnp.argsort(jnp.stack([x[3] for x in per_tile], axis=1), axis=1)  # [R, K]
    t = jnp.take_along_axis(t, order[..., None], axis=1)
    d = jnp.take_along_axis(d, order[..., None], axis=1)
    c = jnp.take_along_axis(c, order[..., None, None], axis=1)
    rays, k, _ = d.shape
    # Intervals per tile, then one gap interval (zero density) to the next tile's entry.
    d = jnp.concatenate([d, jnp.zeros((rays, k, 1), d.dtype)], axis=-1).reshape(rays, -1)[:, :-1]
    c = jnp.concatenate([c, jnp.zeros((rays, k, 1, 3), c.dtype)], axis=-2).reshape(rays, -1, 3)[:, :-1]
    t = t.reshape(rays, -1)
    w, _, _ = render.compute_alpha_weights(d, t, dirs)
    px = render.volumetric_rendering(c, w, t, bg, t_far=t[:, -1:])
    depth = jnp.sum(w * 0.5 * (t[:, 1:] + t[:, :-1]), axis=-1) / jnp.maximum(1e-12, px["acc"])
    return {"rgb": px["rgb"], "acc": px["acc"], "depth": depth, "distortion": stepfun.lossfun_distortion(t, w)}


def tiled(per_tile, dirs, bg):
    seg = tiles.stack([tiles.segment(t, d, c, dirs, enter) for t, d, c, enter in per_tile])
    return tiles.composite(seg, bg)


def _score(out):
    """A scalar using every output, for gradients."""
    return (jnp.sum(out["rgb"] * jnp.arange(1.0, 4.0)) + jnp.sum(out["acc"]) + 0.1 * jnp.sum(out["depth"])
            + jnp.sum(out["distortion"]))


@pytest.mark.parametrize("seed, k", [(1, 2), (3, 8)])
def test_composite_equals_the_untiled_rendering_with_gradients(seed, k):
    with jax.enable_x64(True):
        per_tile = random_tiles(seed, k=k)
        dirs = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 3)))
        bg = jnp.asarray([0.2, 0.5, 1.0])
        got, want = jax.jit(tiled)(per_tile, dirs, bg), jax.jit(untiled)(per_tile, dirs, bg)
        for key in ("rgb", "acc", "depth", "distortion"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(got["trans"], 1.0 - got["acc"], atol=1e-12)

        def grads(fn):
            densities = [d for _, d, _, _ in per_tile]
            colours = [c for _, _, c, _ in per_tile]

            def score(densities, colours):
                tiles_ = [(t, d, c, e) for (t, _, _, e), d, c in zip(per_tile, densities, colours)]
                return _score(fn(tiles_, dirs, bg))

            return jax.jit(jax.grad(score, argnums=(0, 1)))(densities, colours)

        for a, b in zip(jax.tree_util.tree_leaves(grads(tiled)), jax.tree_util.tree_leaves(grads(untiled))):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_one_tile_is_the_plain_rendering_and_empty_tiles_change_nothing():
    with jax.enable_x64(True):
        (t, d, c, e), = random_tiles(5, k=1)
        dirs = jnp.ones((16, 3))
        w, _, _ = render.compute_alpha_weights(d, t, dirs)
        plain = render.volumetric_rendering(c, w, t, 1.0, t_far=t[..., -1:])
        one = tiled([(t, d, c, e)], dirs, 1.0)
        np.testing.assert_allclose(one["rgb"], plain["rgb"], rtol=1e-12)
        empty = (t + 10.0, jnp.zeros_like(d), c, e + 10.0)  # a tile behind, with nothing in it
        two = tiled([(t, d, c, e), empty], dirs, 1.0)
        for key in ("rgb", "acc", "depth", "distortion"):
            np.testing.assert_allclose(two[key], one[key], rtol=1e-12, atol=1e-15)


def test_box_entry_exit_and_median_split():
    o = jnp.asarray([[-2.0, 0.5, 0.5], [0.5, 0.5, 5.0], [3.0, 3.0, 3.0]])
    v = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    enter, leave = tiles.box_entry_exit(o, v, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(enter[:2], [2.0, 4.0])
    np.testing.assert_allclose(leave[:2], [3.0, 5.0])
    assert enter[2] > leave[2]  # misses the box
    points = np.random.default_rng(0).normal(size=(4000, 3)) * [4.0, 1.0, 0.5]
    boxes = tiles.median_split_boxes(points, 4, [-20, -20, -20], [20, 20, 20])
    counts = [int(np.sum(np.all((points >= lo) & (points < hi), axis=1))) for lo, hi in boxes]
    assert len(boxes) == 4 and sum(counts) == 4000 and max(counts) - min(counts) <= 2
    volume = sum(np.prod(hi - lo) for lo, hi in boxes)
    assert np.isclose(volume, 40.0**3)  # the boxes tile the whole domain
    with pytest.raises(ValueError, match="power of two"):
        tiles.median_split_boxes(points, 3, [-1] * 3, [1] * 3)


# --------------------------------------------------------------------------- sharded over a tile axis


def _sharded_main(devices: int) -> None:
    """One process with 8 host devices; meshes over the first `devices` of them (2, 4, 8)."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:devices]), ("tile",))
    k = 2 * devices
    per_tile = random_tiles(11, k=k, dtype=np.float32)
    dirs = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32)
    seg = jax.jit(lambda p: tiles.stack([tiles.segment(t, d, c, dirs, e) for t, d, c, e in p]))(per_tile)
    want = jax.jit(tiles.composite)(seg, 1.0)
    spec = tiles.Segment(t_enter=P(None, "tile"), trans=P(None, "tile"), rgb=P(None, "tile", None),
                         acc=P(None, "tile"), wt=P(None, "tile"), distortion=P(None, "tile"))
    fn = jax.jit(jax.shard_map(lambda s: tiles.composite_sharded(s, axis_name="tile"), mesh=mesh,
                               in_specs=(spec,), out_specs=P(), check_vma=False))
    got = fn(seg)
    for key in ("rgb", "acc", "depth", "distortion"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=2e-6, atol=2e-6, err_msg=key)
    grad_want = jax.jit(jax.grad(lambda s: _score(tiles.composite(s, 1.0))))(seg)
    grad_got = jax.jit(jax.grad(lambda s: _score(fn(s))))(seg)
    for a, b in zip(jax.tree_util.tree_leaves(grad_got), jax.tree_util.tree_leaves(grad_want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    print("SHARDED OK", devices)


def test_sharded_composite_equals_one_device():
    """2, 4 and 8 devices along the tile axis (one process with 8 host devices)."""
    # XLA's CPU optimisations off: 3x faster compiles (both sides of each comparison are built alike).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(HERE)], env=env, capture_output=True, text=True, timeout=300, check=False)
    for devices in (2, 4, 8):
        assert f"SHARDED OK {devices}" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.returncode == 0


if __name__ == "__main__":
    for n in (2, 4, 8):
        _sharded_main(n)
