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
