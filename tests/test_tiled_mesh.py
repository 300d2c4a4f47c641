"""Training the tiled field on a `data x tile` mesh (nerflib.tiled.train, issue #26).

One process with 8 host devices (this file is its script, run by test_tiled.run_script with
--xla_force_host_platform_device_count=8) runs two steps on meshes 1x2, 2x2 and 2x4
(2, 4, 8 devices; 4 tiles, two or one per device) and compares them with the same steps on
one device: the loss, the parameters and the Adam moments agree. Every
parameter and moment array is sharded P('tile'): each device holds only its own
tiles' slice, the slice of its 'tile' coordinate. A checkpoint of the sharded state
(orbax) restores onto another mesh and onto one device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from helpers.tiled import layout, random_rays, run_script, small_cfg

from nerflib import tiled

HERE = Path(__file__).resolve()

MESHES = ((1, 2), (2, 2), (2, 4))  # (data, tile): 2, 4, 8 devices


def _mesh_main() -> None:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rays = random_rays(4, 32)
    rgb = jnp.asarray(np.random.default_rng(5).uniform(size=(32, 3)), jnp.float32)
    key = jax.random.PRNGKey(3)
    # eps 1e-3: Adam's first steps are then smooth in the gradient (with 1e-15 a gradient that is
    # zero up to round-off would step by +-lr).
    opt = tiled.make_optimizer(lr_init=1e-2, lr_final=1e-3, max_steps=10, eps=1e-3)
    model = tiled.TiledModel(small_cfg(), layout(4))
    k = 4
    step = tiled.make_train_step(model, opt, None, donate=False)  # the single-device reference
    init = tiled.init_state(model, opt, jax.random.PRNGKey(0))
    want_state, want_losses = init, []
    for i in range(2):
        want_state, stats = step(want_state, rays, rgb, key, 0.5)
        want_losses.append(float(stats["loss"]))
    want_state = jax.device_get(want_state)
    for data, tile in MESHES:
        mesh = tiled.make_mesh(data, tile)
        step = tiled.make_train_step(model, opt, mesh)
        if data == 1:  # created directly with the shardings
            state = tiled.init_state(model, opt, jax.random.PRNGKey(0), mesh)
        else:  # (one compile less) the single-device initial state, placed
            state = jax.device_put(jax.device_get(init), tiled.state_shardings(init, mesh))  # (host copy: donated)
        shard = NamedSharding(mesh, P("data"))
        r, c = jax.device_put((rays, rgb), shard)
        got = []
        for i in range(2):
            state, stats = step(state, r, c, key, 0.5)
            got.append(float(stats["loss"]))
        np.testing.assert_allclose(got, want_losses, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # 1e-3 of lr
        # Placement: every array with a tile axis is split on 'tile', each device holding its slice.
        coord = {d: j for row in mesh.devices for j, d in enumerate(row)}
        arrays = jax.tree.leaves((state.params, state.opt_state))
        tiled_arrays = [a for a in arrays if a.ndim >= 1]
        assert len(tiled_arrays) >= 3 * len(jax.tree.leaves(state.params))  # params, mu, nu
        for a in tiled_arrays:
            assert a.sharding.spec == P("tile"), a.sharding
            for s in a.addressable_shards:
                j = coord[s.device]
                kl = k // tile
                assert s.data.shape[0] == kl and s.index[0] == slice(kl * j, kl * j + kl), (s.device, s.index)
        print("MESH OK", data * tile, flush=True)
    # Checkpoints: the 2x4 mesh's state saved shard by shard, read back onto 1x2 and onto one device.
    with tempfile.TemporaryDirectory() as tmp:
        tiled.save_state(Path(tmp) / "ckpt", state)
        mesh = tiled.make_mesh(1, 2)
        back = tiled.restore_state(Path(tmp) / "ckpt", model, opt, mesh)
        one = tiled.restore_state(Path(tmp) / "ckpt", model, opt)
        for a, b, c in zip(jax.tree.leaves(back), jax.tree.leaves(one), jax.tree.leaves(want_state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            if a.ndim:
                assert a.sharding.spec == P("tile") and a.sharding.mesh.shape["tile"] == 2
    print("CHECKPOINT OK", flush=True)


def test_steps_on_data_x_tile_meshes_equal_one_device():
    proc = run_script(HERE, devices=8)
    for data, tile in MESHES:
        assert f"MESH OK {data * tile}" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "CHECKPOINT OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.returncode == 0


if __name__ == "__main__":
    _mesh_main()
