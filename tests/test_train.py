"""Training loop: resume equals uninterrupted, outputs, NaN guard, SIGTERM, optimizer pieces.

The training runs happen in one subprocess (this file is also its script:
`python tests/test_train.py driver OUT`), so that its XLA flags (fast CPU
compilation, a private compilation cache) do not leak into other tests; the
runs share one compiled step through that cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.training import compile_cache, subprocess_env, toy_config

HERE = Path(__file__).resolve()

# --------------------------------------------------------------------------- the subprocess side


def _driver(out: Path) -> None:
    import jax

    from nerflib import checkpoint, datasets, parallel, train

    scene = datasets.toy_scene(out / "data")
    ds = datasets.load_dataset(scene, factor=1, split="train", test_every=4, normalize=None)
    cfg = toy_config()
    mesh = parallel.make_mesh()
    result = {}
    result["full"] = train.train(cfg, ds, out / "full", progress=False)
    result["part"] = train.train(cfg, ds, out / "resumed", stop_after=3, progress=False)
    result["rest"] = train.train(cfg, ds, out / "resumed", progress=False)
    lines: list[str] = []
    nan_cfg = dataclasses.replace(cfg, debug_nan_steps=(4, 5), nan_patience=2)
    result["nan"] = train.train(nan_cfg, ds, out / "nan", progress=False, log=lines.append)
    result["nan_log"] = lines
    for name in ("full", "resumed", "nan"):
        _, params, step = checkpoint.restore_params(out / name, mesh)
        flat = {"/".join(str(k.key) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(out / f"{name}_params.npz", **flat)
        result[f"{name}_step"] = step
    (out / "result.json").write_text(json.dumps(result))


def _single(out: Path) -> None:
    """One uninterrupted run (the reference of tests/test_parallel.py)."""
    from nerflib import datasets, train

    scene = datasets.toy_scene(out / "data")
    ds = datasets.load_dataset(scene, factor=1, split="train", test_every=4, normalize=None)
    train.train(toy_config(), ds, out / "run", progress=False, tb=False)


def _sigterm(out: Path, signum: int = signal.SIGTERM) -> None:
    """Train; the log callback sends SIGTERM (or `signum`) to this process once step 2 is reported."""
    from nerflib import datasets, train

    scene = datasets.toy_scene(out / "data")
    ds = datasets.load_dataset(scene, factor=1, split="train", test_every=4, normalize=None)

    def log(msg: str) -> None:
        print(msg, flush=True)
        if msg.startswith("step 2/"):
            os.kill(os.getpid(), signum)

    train.train(toy_config(), ds, out / "sig", progress=False, tb=False, log=log)
    print("NOT PREEMPTED", flush=True)


if __name__ == "__main__":
    {"driver": _driver, "single": _single, "sigterm": _sigterm,
     "sigint": lambda out: _sigterm(out, signal.SIGINT)}[sys.argv[1]](Path(sys.argv[2]))
    sys.exit(0)


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_runs")
    proc = subprocess.run([sys.executable, str(HERE), "driver", str(out)], env=subprocess_env(compile_cache(tmp_path_factory)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "result.json").read_text())


def _params(out: Path, name: str) -> dict:
    with np.load(out / f"{name}_params.npz") as z:
        return {k: z[k] for k in z.files}


def test_resume_after_stop_equals_uninterrupted(runs):
    out, result = runs
    assert result["part"]["final_step"] == 3 and result["part"]["stopped_early"]
    assert result["rest"]["start_step"] == 3 and result["rest"]["final_step"] == 6
    assert result["full_step"] == result["resumed_step"] == 6
    full, resumed = _params(out, "full"), _params(out, "resumed")
    assert full.keys() == resumed.keys()
    for k in full:
        np.testing.assert_allclose(resumed[k], full[k], rtol=0, atol=1e-6, err_msg=k)
    # the loss curve too: train.tsv of the resumed run has each step once and the same losses
    def curve(name):
        lines = (out / name / "train.tsv").read_text().splitlines()
        assert lines[0].split("\t") == ["step", "loss", "psnr", "lr", "rays_per_s", "elapsed_s"]
        return np.array([[float(x) for x in line.split("\t")[:4]] for line in lines[1:]])
    a, b = curve("full"), curve("resumed")
    np.testing.assert_array_equal(a[:, 0], np.arange(1, 7))
    np.testing.assert_array_equal(b[:, 0], np.arange(1, 7))
    np.testing.assert_allclose(b[:, 1:], a[:, 1:], rtol=1e-5)


def read_tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from the TFRecord event files in `folder` (an independent reader)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def test_outputs_written(runs):
    out, _ = runs
    from nerflib import checkpoint, configs

    model_dir = out / "full"
    cfg = checkpoint.load_config(model_dir)
    assert cfg == toy_config()
    assert configs.load_json(model_dir / "config.json").max_steps == 6
    steps = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 6]  # keep_checkpoints = 2 of 0, 3, 6
    # TensorBoard scalars read back from the event files agree with train.tsv.
    tb = read_tensorboard_scalars(model_dir / "tb")
    tsv = (model_dir / "train.tsv").read_text().splitlines()
    header = tsv[0].split("\t")
    rows = [dict(zip(header, map(float, line.split("\t")))) for line in tsv[1:]]
    assert rows and "train/loss" in tb and "train/psnr" in tb
    by_step = dict(tb["train/loss"])
    for row in rows:
        assert np.isclose(by_step[int(row["step"])], row["loss"], rtol=1e-3, atol=1e-6)
    assert not list(model_dir.glob(".*.tmp")) and not list(model_dir.glob(".train.tsv*")), "temp files left"


def test_nan_steps_skipped_then_restore_and_lr_drop(runs):
    out, result = runs
    nan = result["nan"]
    # steps 5 and 6 (state.step 4, 5) are NaN; patience 2 -> restore checkpoint 3, halve the LR, redo 4..6
    assert nan["skipped_steps"] == 2
    assert nan["lr_drops"] == 1 and nan["lr_mult"] == 0.5
    assert nan["final_step"] == 6 and np.isfinite(nan["loss"])
    log = "\n".join(result["nan_log"])
    assert "non-finite loss/gradient, update skipped" in log
    assert "restored checkpoint 3 and halved the learning rate" in log
    params = _params(out, "nan")
    assert all(np.all(np.isfinite(v)) for v in params.values())
    # after the restore, steps 4..6 ran at half the learning rate: a different result
    full = _params(out, "full")
    assert any(not np.allclose(params[k], full[k]) for k in full)
    lines = (out / "nan" / "train.tsv").read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in lines] == [1, 2, 3, 4, 5, 6]
    # TensorBoard shows each step once too: the rewind's new event file hides the NaN steps 4..6.
    from helpers.tbtools import tensorboard_steps

    assert tensorboard_steps(out / "nan" / "tb") == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("sig", ["sigterm", "sigint"])
def test_sigterm_saves_checkpoint_and_exits_143(runs, tmp_path, tmp_path_factory, sig):
    """SIGTERM (preemption) and SIGINT (Ctrl-C) both save a checkpoint first; 143 / 130 as a shell reports them."""
    env = subprocess_env(compile_cache(tmp_path_factory))  # the driver (`runs`) compiled this step already
    proc = subprocess.run([sys.executable, str(HERE), sig, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    from nerflib import train

    expected = train.EXIT_PREEMPTED if sig == "sigterm" else train.EXIT_INTERRUPTED
    assert proc.returncode == expected, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NOT PREEMPTED" not in proc.stdout
    text = proc.stdout + proc.stderr
    line = next(x for x in text.splitlines() if "saved checkpoint at step" in x)
    step = int(line.split("saved checkpoint at step")[1].split(";")[0])
    assert step >= 2
    saved = sorted(int(p.name) for p in (tmp_path / "sig" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == step


# --------------------------------------------------------------------------- in-process units


def test_clip_by_module_norm_matches_multinerf():
    import jax.numpy as jnp

    from nerflib import train

    grads = {"a": {"w": jnp.full((3,), 3.0)}, "b": {"w": jnp.array([1e-5, 0.0])}}
    clipped, _ = train.clip_by_module_norm(1e-3).update(grads, None)
    eps = np.finfo(np.float32).eps
    norm_a = np.sqrt(27.0)
    np.testing.assert_allclose(clipped["a"]["w"], 3.0 * 1e-3 / (eps + norm_a), rtol=1e-6)
    np.testing.assert_allclose(clipped["b"]["w"], [1e-5, 0.0], rtol=1e-6)  # under the limit: unchanged


def test_optimizer_chain_follows_config():
    import jax.numpy as jnp

    from nerflib import train

    cfg = toy_config(grad_max_norm=1e-3, grad_max_val=0.5, lr_delay_steps=0)
    tx = train.make_optimizer(cfg)
    params = {"a": jnp.ones(3)}
    updates, _ = tx.update({"a": jnp.array([10.0, -10.0, 0.0])}, tx.init(params), params)
    # first Adam step: update = g_hat / (sqrt(g_hat^2) + eps) = sign(g) where g != 0
    np.testing.assert_allclose(updates["a"], [1.0, -1.0, 0.0], atol=1e-2)
    np.testing.assert_allclose(float(train.lr_at(cfg, 0)), cfg.lr_init, rtol=1e-6)
    np.testing.assert_allclose(float(train.lr_at(cfg, cfg.max_steps)), cfg.lr_final, rtol=1e-5)


def test_compilation_cache_can_be_turned_off(monkeypatch):
    import jax

    from nerflib import train

    if jax.config.jax_compilation_cache_dir:
        pytest.skip("a compilation cache is already configured in this process")
    monkeypatch.setenv("DNERF_JAX_CACHE", "off")
    assert train.enable_compilation_cache() is None
    assert not jax.config.jax_compilation_cache_dir


def test_preempted_is_a_system_exit_with_status_143():
    from nerflib import train

    e = train.Preempted(7)
    assert isinstance(e, SystemExit) and e.code == 143 and e.step == 7
    assert "step 7" in str(e)
