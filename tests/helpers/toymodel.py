"""A trained toy model for the tests that need one but not its training (test_export, test_viewer).

`toy_model` (session fixture; import it into a test module) trains test_video's toy model once per
session in a subprocess (`python -m helpers.toymodel OUT`, tests/ on PYTHONPATH), with
test_train's fast-compile XLA flags and the session's compilation cache (the same compiled step as
test_video's and test_train's), and returns OUT: OUT/data/scene.json, OUT/data/images/, OUT/model/.
Tests must not write into OUT/data or OUT/model (they are shared); they write beside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.training import compile_cache, subprocess_env, toy_config

TESTS = Path(__file__).resolve().parents[1]


def train_toy(out: Path) -> None:
    from nerflib import datasets, train

    scene = datasets.toy_scene(out / "data")
    cfg = toy_config(normalize="360", test_every=4, max_steps=12, checkpoint_every=12)  # test_video's
    train.train(cfg, datasets.load_for_config(cfg, scene, split="train"), out / "model", progress=False, tb=False)


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_model")
    env = subprocess_env(compile_cache(tmp_path_factory))
    env["PYTHONPATH"] = str(TESTS) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run([sys.executable, "-m", "helpers.toymodel", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


if __name__ == "__main__":
    train_toy(Path(sys.argv[1]))
