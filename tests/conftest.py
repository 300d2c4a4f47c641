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


_JAX_CACHE = pytest.StashKey[Path]()


def _session_jax_cache(config) -> Path:
    if _JAX_CACHE not in config.stash:
        config.stash[_JAX_CACHE] = config._tmp_path_factory.mktemp("jax_cache")
    return config.stash[_JAX_CACHE]


@pytest.fixture(scope="session")
def session_jax_cache(request) -> Path:
    """The JAX compilation cache of the workflow runs of a test session (test_kill_resume, test_slurm,
    test_workflow_run): one temporary folder for the session, so that the runs share what they
    compile (the same reduced demo's evaluate and render programs) while a test session never reads
    or writes the user's own cache (~/.cache/dnerf/jax), and a killed write cannot outlive it.
    Never used by two runs at once (its writes are not atomic): see the order below.
    """
    return _session_jax_cache(request.config)


# --------------------------------------------------------------------------- the demo run in the background
#
# test_workflow_run's demo run (the whole workflow with the CI-sized demo config, about 7 minutes
# on 2 cores) mostly trains, which keeps about 1.5 cores busy; most of the suite's other tests use
# one (XLA compiles, NumPy, COLMAP on small scenes). When the demo's tests are collected along with
# other tests, the session therefore runs:
#   1. test_kill_resume and test_slurm (their runs time kills and share the JAX cache),
#   2. every other test, with the demo run started in the background before the first of them
#      (a separate `snakemake` process, its output in files; nothing else uses the JAX cache now),
#   3. test_workflow_run last: its `demo_run` fixture waits for that run and checks it as before.
# Run alone, test_workflow_run starts the demo run itself. The order within each group is kept.
WORKFLOW_RUNS_FIRST = ("test_kill_resume.py", "test_slurm.py")
DEMO_MODULE = "test_workflow_run.py"
_DEMO_IN_BACKGROUND = pytest.StashKey[bool]()
_DEMO = pytest.StashKey[object]()


def _group(item) -> int:
    name = item.path.name
    return 0 if name in WORKFLOW_RUNS_FIRST else 2 if name == DEMO_MODULE else 1


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only what runs counts
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: it may never get the demo's tests
        return
    if any("demo_run" in getattr(item, "fixturenames", ()) for item in items):
        items.sort(key=_group)  # stable
        config.stash[_DEMO_IN_BACKGROUND] = any(_group(item) == 1 for item in items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    config = item.config
    if config.stash.get(_DEMO_IN_BACKGROUND, False) and _DEMO not in config.stash and _group(item) == 1:
        from test_workflow_run import DemoRun

        config.stash[_DEMO] = DemoRun(config._tmp_path_factory, _session_jax_cache(config))


def background_demo(config):
    """The demo run started in the background (test_workflow_run.DemoRun), or None."""
    return config.stash.get(_DEMO, None)


def pytest_sessionfinish(session):
    demo = background_demo(session.config)
    if demo is not None:
        demo.stop()  # only if still running (the session stopped before test_workflow_run)
