"""Data parallelism: batch-size checks, 1 vs 4 devices, checkpoints across device counts, 2 processes.

Multi-device runs happen in subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (this file is also their
script), so the pytest process keeps its single CPU device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
from helpers.processes import flat, free_port, load_npz, run_together, train_tsv
from helpers.training import check_batch, compile_cache, subprocess_env, toy_config

from nerflib import parallel  # noqa: E402


# --------------------------------------------------------------------------- subprocess side


def _toy_train(out: Path):
    from nerflib import datasets

    scene = datasets.toy_scene(out / "data")
    return datasets.load_dataset(scene, factor=1, split="train", test_every=4, normalize=None)


def _driver4(out: Path, ref: Path) -> None:
    """ref: a model folder trained with the same config in a single-device process."""
    import jax

    from nerflib import checkpoint, datasets, train

    assert jax.device_count() == 4
    ds = _toy_train(out)
    cfg = toy_config()
    devs = jax.devices()
    mesh1, mesh4 = parallel.make_mesh(devs[:1]), parallel.make_mesh(devs)
    result = {"run4": train.train(cfg, ds, out / "m4", progress=False, tb=False, mesh=mesh4)}
    # checkpoints across device counts: params and the full TrainState
    for src, mesh, name in ((ref, mesh4, "m1_on_4"), (out / "m4", mesh1, "m4_on_1")):
        _, params, _ = checkpoint.restore_params(src, mesh)
        assert all(x.sharding.mesh.devices.size == mesh.devices.size for x in jax.tree_util.tree_leaves(params))
        np.savez(out / f"{name}.npz", **flat(params))
    model = train.make_model(cfg, ds.num_train_images)
    template = train.init_state(cfg, ds, jax.random.PRNGKey(0), mesh1, model=model)
    with checkpoint.Checkpointer(out / "m4" / "checkpoints") as ck:
        state = ck.restore(mesh1, template=template)
    result["restored_state_step"] = int(state.step)
    result["restored_state_type"] = type(state).__name__
    # one step on an explicit global batch (parallel.shard_batch), 4 devices vs 1
    b1 = datasets.RayBatcher(ds, batch_size=64, mesh=mesh1)
    host = jax.tree_util.tree_map(np.asarray, jax.jit(b1.sample)(jax.random.PRNGKey(5), b1.data))
    stepped = {}
    for mesh in (mesh1, mesh4):
        st = train.init_state(cfg, ds, jax.random.PRNGKey(0), mesh, model=model)
        fn = train.make_train_step(cfg, model, mesh)
        st, stats = fn(st, parallel.shard_batch(host, mesh), parallel.replicate(np.asarray(jax.random.PRNGKey(2)), mesh))
        stepped[mesh.devices.size] = flat(jax.device_get(st.params))
        result[f"explicit_loss_{mesh.devices.size}"] = float(stats["loss"])
    np.savez(out / "explicit_1.npz", **stepped[1])
    np.savez(out / "explicit_4.npz", **stepped[4])
    # shard_batch: per-process rows -> one global array split over the 4 devices
    local = {"x": np.arange(16, dtype=np.float32).reshape(8, 2)}
    glob = parallel.shard_batch(local, mesh4)["x"]
    result["shard_batch_shape"] = list(glob.shape)
    result["shard_batch_devices"] = len({s.device for s in glob.addressable_shards})
    np.testing.assert_array_equal(np.asarray(glob), local["x"])
    # sharded images: each device draws only from its own images, every ray is a true pixel
    batcher = datasets.RayBatcher(ds, batch_size=64, mesh=mesh4, mode="shard")
    batch = jax.jit(batcher.sample)(jax.random.PRNGKey(1), batcher.data)
    idx = check_batch(ds, batch)
    per_device = idx.reshape(4, 16)
    result["shard_images_per_device"] = [sorted(set(int(i) for i in row)) for row in per_device]
    result["shard_device_bytes"] = batcher.device_bytes
    result["replicate_device_bytes"] = datasets.RayBatcher(ds, batch_size=64, mesh=mesh4).device_bytes
    (out / "result.json").write_text(json.dumps(result))


def _worker(out: Path, process_id: int, port: int) -> None:
    """One of two processes (2 CPU devices each) training the same run together."""
    parallel.initialize_distributed(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
    import jax

    from nerflib import checkpoint, train

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    ds = _toy_train(out / f"p{process_id}")  # each process reads its own copy (same content)
    summary = train.train(toy_config(), ds, out / "mp", progress=False, tb=False)
    _, params, step = checkpoint.restore_params(out / "mp", parallel.make_mesh())
    if process_id == 0:
        np.savez(out / "mp_params.npz", **flat(params))
        (out / "mp_result.json").write_text(json.dumps({"summary": summary, "step": step}))


if __name__ == "__main__":
    if sys.argv[1] == "driver4":
        _driver4(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        _worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    sys.exit(0)


# --------------------------------------------------------------------------- tests


def test_check_batch_size_names_valid_sizes():
    parallel.check_batch_size(16384, 8)
    with pytest.raises(ValueError) as e:
        parallel.check_batch_size(1000, 3)
    msg = str(e.value)
    assert "batch_size=1000" in msg and "3 devices" in msg and "999" in msg and "1002" in msg
    assert parallel.valid_batch_sizes(1000, 3) == [996, 999, 1002, 1005]
    with pytest.raises(ValueError, match="multiple of 8"):
        parallel.check_batch_size(4, 8)


def test_initialize_distributed_single_process_is_a_no_op(monkeypatch):
    for name in ("DNERF_COORDINATOR", "DNERF_NUM_PROCESSES", "DNERF_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed(coordinator_address="h:1", num_processes=1, process_id=0) is False
    with pytest.raises(ValueError, match="needs all of"):
        parallel.initialize_distributed(coordinator_address="h:1")
    monkeypatch.setenv("DNERF_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="DNERF_NUM_PROCESSES"):
        parallel.initialize_distributed()


@pytest.mark.parametrize("environ, expected", [
    ({}, None),  # no GPUs: JAX decides (CPU)
    ({"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, None),  # sees the node's GPUs: JAX takes GPU 1
    ({"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "2"}, [0]),  # --ntasks-per-gpu: its own GPU only
    ({"SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "5"}, None),  # first task: JAX's GPU 0 is right
    ({"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "4,5"}, [0, 1]),  # --gpus-per-task=2
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, None),  # not a SLURM task
])
def test_slurm_tasks_get_gpus_they_can_see(environ, expected):
    assert parallel.slurm_local_devices(environ) == expected


def test_launcher_command_gives_srun_the_jobs_task_layout():
    # The SLURM profile's README example: 2 nodes x 4 GPUs, one task per GPU.
    layout = {"mpi": "srun", "nodes": 2, "tasks": 8, "tasks_per_gpu": 1, "gpu": 8, "mem_mb": 64000}
    assert parallel.launcher_command("srun", layout) == [
        "srun", "--nodes=2", "--ntasks=8", "--gpus=8", "--ntasks-per-gpu=1"]
    per_node = {"nodes": 2, "tasks_per_node": 4, "gres": "gpu:4"}
    assert parallel.launcher_command("/usr/bin/srun --mpi=none", per_node) == [
        "/usr/bin/srun", "--mpi=none", "--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4"]
    assert parallel.launcher_command("mpirun -n 8", layout) == ["mpirun", "-n", "8"]  # as written
    assert parallel.launcher_command("", layout) == []


def test_mesh_and_replicate_single_device():
    import jax

    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
    tree = parallel.replicate({"a": np.ones(3, np.float32)}, mesh)
    assert tree["a"].sharding.is_fully_replicated
    assert parallel.fetch(tree)["a"].tolist() == [1.0, 1.0, 1.0]
    assert parallel.any_process(True) and not parallel.any_process(False)


def _run(args: list[str], env: dict) -> None:
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """A 1-device reference run (its own process: shares its compiled step with test_train.py), then 4 devices."""
    out = tmp_path_factory.mktemp("parallel4")
    cache = compile_cache(tmp_path_factory)
    _run([str(HERE.parent / "test_train.py"), "single", str(out / "ref")], subprocess_env(cache, devices=1))
    _run([str(HERE), "driver4", str(out), str(out / "ref" / "run")], subprocess_env(cache, devices=4))
    return out, json.loads((out / "result.json").read_text())


def test_four_devices_train_like_one(four):
    out, result = four
    assert result["run4"]["devices"] == 4
    # same global batches (drawn from one key), gradients averaged by the compiler
    p1, p4 = load_npz(out / "m1_on_4.npz"), load_npz(out / "m4_on_1.npz")
    for k in p1:
        np.testing.assert_allclose(p4[k], p1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # the loss curves match step by step
    c1, c4 = train_tsv(out / "ref" / "run" / "train.tsv"), train_tsv(out / "m4" / "train.tsv")
    np.testing.assert_array_equal(c1[:, 0], c4[:, 0])
    np.testing.assert_allclose(c4[:, 1:], c1[:, 1:], rtol=1e-4)


def test_one_step_on_an_explicit_batch_4_devices_equals_1(four):
    out, result = four
    assert result["explicit_loss_4"] == pytest.approx(result["explicit_loss_1"], rel=1e-5)
    p1, p4 = load_npz(out / "explicit_1.npz"), load_npz(out / "explicit_4.npz")
    assert p1.keys() == p4.keys()
    for k in p1:
        np.testing.assert_allclose(p4[k], p1[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_checkpoints_restore_across_device_counts(four):
    _, result = four
    assert result["restored_state_type"] == "TrainState" and result["restored_state_step"] == 6


def test_shard_batch_and_sharded_images(four):
    _, result = four
    assert result["shard_batch_shape"] == [8, 2] and result["shard_batch_devices"] == 4
    # 6 training images over 4 devices: device d holds images d and d + 4
    assert result["shard_images_per_device"] == [[0, 4], [1, 5], [2], [3]]
    assert result["shard_device_bytes"] * 3 == result["replicate_device_bytes"]  # 2 slots instead of 6


def test_two_processes_match_one(four, tmp_path_factory):
    out, _ = four
    port = free_port()
    env = subprocess_env(compile_cache(tmp_path_factory), devices=2)  # 2 CPU devices per process, 4 in all
    run_together([[str(HERE), "worker", str(out), str(i), str(port)] for i in range(2)], env)
    res = json.loads((out / "mp_result.json").read_text())
    assert res["summary"]["processes"] == 2 and res["summary"]["devices"] == 4 and res["step"] == 6
    single, multi = load_npz(out / "m1_on_4.npz"), load_npz(out / "mp_params.npz")
    for k in single:
        np.testing.assert_allclose(multi[k], single[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(train_tsv(out / "mp" / "train.tsv")[:, 1:],
                               train_tsv(out / "ref" / "run" / "train.tsv")[:, 1:], rtol=1e-4)
