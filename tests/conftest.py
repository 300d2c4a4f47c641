"""Shared fixtures: where the real data sets are, and skipping cleanly without them.

The real data sets (see /work/shared/data/SOURCES.md) are found through the
environment variable DNERF_DATA; by default `../shared/data` relative to the
repository root. Tests that need one ask the `dataset` fixture for it:

    def test_fern(dataset):
        fern = dataset("llff_fern")   # a Path, or the test is skipped with the reason
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "DNERF_DATA"


def data_root() -> Path:
    """DNERF_DATA if set, else ../shared/data relative to the repository root."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


def require_dataset(name: str) -> Path:
    """The folder of data set `name` under `data_root()`; skips the calling test if it is absent."""
    root = data_root()
    folder = root / name
    if not folder.is_dir():
        if DATA_ENV in os.environ:
            how = f"{DATA_ENV}={os.environ[DATA_ENV]!r}"
        else:
            how = f"{DATA_ENV} unset, default ../shared/data"
        pytest.skip(
            f"real data set folder {folder} is missing ({how}); set {DATA_ENV} to the folder that holds {name}/"
        )
    return folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root folder of the real data sets (may not exist; use `dataset` to skip cleanly)."""
    return data_root()


@pytest.fixture(scope="session")
def dataset():
    """A function name -> Path of that data set, skipping the test when it is absent."""
    return require_dataset


def jax_cache_env(cache: str | os.PathLike) -> dict:
    """Environment variables that make every JAX process of a workflow use the compilation cache `cache`.

    DNERF_JAX_CACHE reaches the steps that call nerflib.train.enable_compilation_cache
    (train, evaluate, render, localize); JAX_COMPILATION_CACHE_DIR, which
    enable_compilation_cache keeps, any other JAX process too. A minimum compile time of 0 caches
    the many small programs each job compiles (PRNG, sharding, metrics: about 5 s of every
    job's start on 2 CPU cores) besides the training step and the render function. A cached
    executable computes what a fresh compile does (test_kill_resume checks a resumed model
    bitwise against one trained without interruption).
    """
    return {"DNERF_JAX_CACHE": str(cache), "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="session")
def session_jax_cache(tmp_path_factory) -> Path:
    """The JAX compilation cache of the workflow runs of a test session (test_kill_resume, test_slurm,
    test_workflow_run): one temporary folder for the session, so that the runs share what they
    compile (the same reduced demo's evaluate and render programs) while a test session never reads
    or writes the user's own cache (~/.cache/dnerf/jax), and a killed write cannot outlive it.
    """
    return tmp_path_factory.mktemp("jax_cache")
