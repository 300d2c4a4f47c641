"""Tiled training over two processes (issue #26): jax.distributed on CPU, as the SLURM profile's tasks run it.

Two local processes with one host device each (parallel.initialize_distributed, gloo) train tiles 2
through nerflib.train's loop on the 1 (data) x 2 (tile) mesh over both devices, so each process holds
one tile. The run stops at step 3 (a checkpoint: each process writes its tile's shards), then resumes to
6 from it (each process reads its own). A single process with two host devices (the same total) trains
the same config straight to 6. This file is the processes' script:
  * the loss curve and the final parameters equal the single process's (float32 tolerance);
  * on the restored step-3 state every tile array is P('tile') and a process holds only its tile;
  * both processes wrote checkpoint data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from helpers.processes import flat, free_port, load_npz, run_together, train_tsv
from helpers.tiled import FAST_XLA, restore_on_training_mesh
from helpers.training import compile_cache, subprocess_env

HERE = Path(__file__).resolve()
HASH = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 10), ("base_resolution", 4),
        ("max_resolution", 64))
OVERRIDES = dict(tiles=2, factor=1, normalize=None, batch_size=64, max_steps=6, lr_delay_steps=0,
                 checkpoint_every=3, print_every=1, tb_every=1,
                 model=dict(hashgrid_options=HASH, num_prop_samples=(8,), num_nerf_samples=8, prop_net_width=16,
                            nerf_net_width=16, bottleneck_width=8, net_width_viewdirs=8))


# --------------------------------------------------------------------------- subprocess side


def _config_and_data(folder: Path):
    from nerflib import configs, datasets

    cfg = configs.override(configs.get_preset("tiny"), **OVERRIDES)
    scene = datasets.toy_scene(folder)
    return cfg, datasets.load_dataset(scene, factor=1, split="train", test_every=4, normalize=None)


def _save_params(model_dir: Path, out: Path) -> None:
    """The final params, replicated over all devices, to out (process 0 writes)."""
    import jax

    from nerflib import checkpoint, parallel

    _, params, step = checkpoint.restore_params(model_dir, parallel.make_mesh())
    if jax.process_index() == 0:
        np.savez(out, step=np.int64(step), **flat(params))


def _reference(out: Path) -> None:
    """One process, two host devices: straight to step 6."""
    import jax

    from nerflib import train

    assert jax.process_count() == 1 and jax.device_count() == 2
    cfg, ds = _config_and_data(out / "ref_data")
    summary = train.train(cfg, ds, out / "ref", progress=False, tb=False)
    assert summary["mesh"] == {"data": 1, "tile": 2}, summary
    _save_params(out / "ref", out / "ref_params.npz")


def _worker(out: Path, process_id: int, port: int) -> None:
    """One of two processes (one host device each) training tiles 2 together: to 3, then resumed to 6."""
    from nerflib import parallel

    parallel.initialize_distributed(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
    import jax
    from jax.sharding import PartitionSpec as P

    from nerflib import train

    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    cfg, ds = _config_and_data(out / f"data{process_id}")  # each process reads its own copy (same content)
    model_dir = out / "mp"
    first = train.train(cfg, ds, model_dir, stop_after=3, progress=False, tb=False)
    assert first["final_step"] == 3 and first["processes"] == 2 and first["mesh"] == {"data": 1, "tile": 2}, first
    # The step-3 checkpoint restored onto the mesh as the loop restores it: this process holds its tile only.
    mesh, trainer, state, step = restore_on_training_mesh(cfg, ds, model_dir)
    assert step == 3 and int(state.step) == 3
    coord = {d: j for row in mesh.devices for j, d in enumerate(row)}
    (mine,) = jax.local_devices()
    arrays = [a for a in jax.tree.leaves((state.params, state.opt_state)) if a.ndim >= 1]
    assert len(arrays) >= 3 * len(jax.tree.leaves(state.params["nerf_field"]))
    for a in arrays:
        assert a.sharding.spec == P("tile") and not a.is_fully_addressable, a.sharding
        (shard,) = a.addressable_shards
        assert shard.device == mine and shard.index[0] == slice(coord[mine], coord[mine] + 1), shard.index
    del state
    second = train.train(cfg, ds, model_dir, progress=False, tb=False)
    assert (second["start_step"], second["final_step"]) == (3, 6), second
    _save_params(model_dir, out / "mp_params.npz")


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        _reference(Path(sys.argv[2]))
    else:
        _worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    sys.exit(0)


# --------------------------------------------------------------------------- test


def _env(cache: Path, devices: int) -> dict:
    env = subprocess_env(cache, devices=devices)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_XLA}"
    return env


def test_tiles_over_two_processes_match_one(tmp_path, tmp_path_factory):
    cache, port = compile_cache(tmp_path_factory), free_port()
    workers = [[str(HERE), "worker", str(tmp_path), str(i), str(port)] for i in range(2)]
    run_together([[str(HERE), "reference", str(tmp_path)], *workers],
                 [_env(cache, 2), _env(cache, 1), _env(cache, 1)])
    ref, multi = load_npz(tmp_path / "ref_params.npz"), load_npz(tmp_path / "mp_params.npz")
    assert int(ref["step"]) == int(multi["step"]) == 6 and ref.keys() == multi.keys()
    assert any(k.startswith("nerf_field/") for k in ref), sorted(ref)[:5]
    for k in ref:
        np.testing.assert_allclose(multi[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    c1, c2 = train_tsv(tmp_path / "ref" / "train.tsv"), train_tsv(tmp_path / "mp" / "train.tsv")
    assert len(c2) == 6
    np.testing.assert_array_equal(c2[:, 0], c1[:, 0])
    np.testing.assert_allclose(c2[:, 1:], c1[:, 1:], rtol=1e-4)
    # Each process wrote its own shards (orbax's OCDBT: one folder of data files per process).
    written = {p.name for p in (tmp_path / "mp" / "checkpoints" / "6").rglob("ocdbt.process_*")}
    assert written >= {"ocdbt.process_0", "ocdbt.process_1"}, sorted(written)
