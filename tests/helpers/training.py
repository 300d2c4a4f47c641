"""The toy field of the training tests and the environment of a training subprocess.

A copy of what tests/test_train.py defines for itself (the same toy model, so that every test's
subprocess compiles the same step once into the session's compilation cache); until test_train
imports it from here too, change both together.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nerflib import datasets

REPO = Path(__file__).resolve().parents[2]

# Small enough to compile in seconds at XLA optimisation level 0.
# prop_grad_fraction=0.5 (the fast preset's option): test_parallel's 4-device and 2-process runs,
# which must equal one device's, then also check its strided split of a sharded batch.
TOY_MODEL = dict(num_prop_samples=(8,), num_levels=2, num_nerf_samples=8, prop_net_width=16, prop_net_depth=1,
                 nerf_net_width=16, nerf_net_depth=2, bottleneck_width=8, net_width_viewdirs=8, max_deg_point=4,
                 basis_subdivisions=1, prop_grad_fraction=0.5,
                 # Empty-space skipping with a budget that leaves rays out at first: the 4-device and
                 # 2-process equality tests (test_parallel.py) cover its packing under sharding.
                 skip_threshold=0.05, sample_budget=0.75, prop_sparsity_mult=0.01)


def toy_config(**overrides):
    from nerflib import configs

    base = dict(factor=1, normalize=None, batch_size=64, max_steps=6, print_every=1, tb_every=1,
                checkpoint_every=3, model=dict(TOY_MODEL))
    base.update(overrides)
    return configs.tiny(**base)


def subprocess_env(cache: Path, devices: int = 1) -> dict:
    """Environment of a training subprocess: CPU, `devices` devices, fast compiles, a shared compile cache."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
        DNERF_JAX_CACHE=str(cache),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def compile_cache(tmp_path_factory) -> Path:
    """One JAX compilation cache for all training subprocesses of the session (same toy step, compiled once)."""
    return tmp_path_factory.getbasetemp() / "dnerf_jax_cache"


def check_batch(ds: datasets.Dataset, batch) -> np.ndarray:
    """Assert that every ray of `batch` goes through a pixel centre of image cam_idx and carries its colour.

    Independent of the sampler: project the ray direction back with the
    image's pose and pinhole intrinsics. Returns the cam_idx of each ray.
    """
    dirs = np.asarray(batch.rays.directions, np.float64)
    origins = np.asarray(batch.rays.origins, np.float64)
    idx = np.asarray(batch.rays.cam_idx)[:, 0]
    rgb = np.asarray(batch.rgb)
    assert idx.min() >= 0 and idx.max() < len(ds)
    for r in range(len(idx)):
        i = idx[r]
        c2w = ds.c2w[i].astype(np.float64)
        np.testing.assert_allclose(origins[r], c2w[:, 3], atol=1e-5)
        d_cam = c2w[:, :3].T @ dirs[r]
        fx, fy, cx, cy = ds.cameras[i].params
        u = fx * d_cam[0] / d_cam[2] + cx - 0.5
        v = fy * d_cam[1] / d_cam[2] + cy - 0.5
        col, row = int(round(u)), int(round(v))
        assert abs(u - col) < 1e-3 and abs(v - row) < 1e-3, (u, v)
        np.testing.assert_allclose(d_cam[2], 1.0, atol=1e-5)  # directions have camera-frame z == 1
        np.testing.assert_allclose(rgb[r], ds.image(i)[row, col] / 255.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(batch.rays.viewdirs), axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(batch.rays.near), ds.near)
    np.testing.assert_allclose(np.asarray(batch.rays.far), ds.far)
    return idx
