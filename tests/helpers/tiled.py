"""Helpers of the tiled-field tests (test_tiled, test_tiled_mesh): a small hash-grid config, random
rays, a random non-trivial field, a tile layout, and the subprocess runner with host devices."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nerflib import models, tiled
from nerflib.types import Rays

REPO = Path(__file__).resolve().parents[2]
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

HASH = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 10), ("base_resolution", 4),
        ("max_resolution", 64))


def small_cfg(**overrides) -> models.ModelConfig:
    cfg = models.model_tiny(field="hashgrid", hashgrid_options=HASH, prop_hashgrid_options=HASH[:3] + (
        ("base_resolution", 4), ("max_resolution", 16)), num_prop_samples=(12,), num_nerf_samples=8,
        prop_net_depth=1, prop_net_width=16, nerf_net_depth=1, nerf_net_width=16, bottleneck_width=8,
        net_width_viewdirs=16, opaque_background=False, near=0.05, far=50.0, density_bias=-3.0)
    return dataclasses.replace(cfg, **overrides)


def random_rays(seed, n=32, *, near=0.05, far=50.0) -> Rays:
    rng = np.random.default_rng(seed)
    o = rng.uniform(-0.8, 0.8, (n, 3)).astype(np.float32)
    d = rng.normal(size=(n, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return Rays(origins=jnp.asarray(o), directions=jnp.asarray(d), viewdirs=jnp.asarray(d),
                radii=jnp.full((n, 1), 2e-3, jnp.float32), near=jnp.full((n, 1), near, jnp.float32),
                far=jnp.full((n, 1), far, jnp.float32), cam_idx=jnp.zeros((n, 1), jnp.int32))


def noisy_params(model, seed):
    """Initial params plus noise, so that densities and colours vary (a random, non-trivial field)."""

    def make(key):
        params = model.init(key)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return jax.tree.unflatten(tree, [p + 0.4 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    return jax.jit(make)(jax.random.PRNGKey(seed))


def layout(k, seed=0):
    pts = np.random.default_rng(seed).normal(size=(500, 3)) * [0.6, 0.5, 0.3]
    return tiled.layout_from_points(pts, k)


def run_script(script: Path, devices: int = 1) -> subprocess.CompletedProcess:
    """`python script` on CPU with `devices` host devices and FAST_XLA (shared by the tiled tests)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_XLA}",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600, check=False)


def assert_script_prints(script: Path, marker: str, *, devices: int = 1) -> None:
    """Run a test module as a script (`run_script`); it must exit 0 having printed `marker`."""
    result = run_script(script, devices=devices)
    assert result.returncode == 0 and marker in result.stdout, result.stdout[-3000:] + result.stderr[-5000:]


def restore_on_training_mesh(cfg, ds, model_dir):
    """The latest good checkpoint of `model_dir` restored as the training loop restores it:
    (mesh, trainer, state, step), every array on the training mesh's shardings."""
    from nerflib import checkpoint
    from nerflib import train as train_mod

    mesh = train_mod.training_mesh(cfg)
    trainer = train_mod.make_trainer(cfg, ds, mesh)
    template = trainer.init(jax.random.PRNGKey(0))
    with checkpoint.Checkpointer(checkpoint.checkpoint_dir(model_dir)) as ckpt:
        state, step = ckpt.restore_latest_good(mesh, template=template, shardings=trainer.shardings(template))
    return mesh, trainer, state, step
