"""Shared fixtures: where the real data sets are, and skipping cleanly without them.

The real data sets (see /work/shared/data/SOURCES.md) are found through the
environment variable DNERF_DATA; by default `../shared/data` relative to the
repository root. Tests that need one ask the `dataset` fixture for it:

    def test_fern(dataset):
        fern = dataset("llff_fern")   # a Path, or the test is skipped with the reason
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["helpers.toymodel"]  # the `toy_model` session fixture

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


_JAX_CACHE = pytest.StashKey[Path]()


def _session_jax_cache(config) -> Path:
    if _JAX_CACHE not in config.stash:
        config.stash[_JAX_CACHE] = config._tmp_path_factory.mktemp("jax_cache")
    return config.stash[_JAX_CACHE]


@pytest.fixture
def workdir(tmp_path):
    """A temporary working directory with the repository's config/ (the workflow tests run Snakemake there)."""
    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    return tmp_path


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
        from helpers.workflow import DemoRun

        config.stash[_DEMO] = DemoRun(config._tmp_path_factory, _session_jax_cache(config))


@pytest.fixture(scope="session")
def background_demo(request):
    """The demo run started in the background (helpers.workflow.DemoRun), or None (then the test starts it)."""
    return request.config.stash.get(_DEMO, None)


def pytest_sessionfinish(session):
    demo = session.config.stash.get(_DEMO, None)
    if demo is not None:
        demo.stop()  # only if still running (the session stopped before test_workflow_run)
