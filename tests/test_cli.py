"""Every step by hand through the `nerf` console entry point, on a small demo scene.

The same functions the Snakemake rules call (nerflib.steps), chained by hand
the way a user debugging one step would: synthetic scene -> poses (imported
ground truth, so no SfM here; SfM has its own tests) -> pyramid -> train ->
eval -> render -> localize.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from nerflib import cli, scene_io

STEPS = ("synthetic", "intake", "poses", "vocab-tree", "pyramid", "train", "eval", "evaluate", "render", "localize",
         "doctor")


def test_help_lists_every_step():
    out = subprocess.run([sys.executable, "-m", "nerflib.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for step in STEPS:
        assert step in out.stdout, (step, out.stdout)
    for step in STEPS:  # and each step has its own --help
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args([step, "--help"])
        assert e.value.code == 0


def test_train_without_factor_keeps_the_presets(tmp_path, monkeypatch):
    """`nerf train` without --factor trains at the preset's factor (it used to pass 1)."""
    from nerflib import configs

    asked = []

    class Stop(Exception):
        pass

    def get_preset(name, **overrides):
        asked.append(overrides)
        raise Stop

    monkeypatch.setattr(configs, "get_preset", get_preset)
    for extra, expected in (([], {}), (["--factor", "2"], {"factor": 2})):
        with pytest.raises(Stop):
            cli.main(["train", "scene.json", "images", str(tmp_path / "model"), "--preset", "tiny", *extra])
        assert asked.pop() == expected


def test_train_argv_parses_back_to_the_same_call():
    """cli.train_argv (how a launcher hands a call to its tasks) is the inverse of the parser's train_call,
    for every JSON value an override can take, and takes exactly steps.train's parameters."""
    import inspect

    from nerflib import steps

    call = {"scene_json": "p/scene.json", "images": "p/images_4", "model_dir": "p/model", "preset": "tiny",
            "factor": 4, "allow_cpu": True, "sparse": "p/sparse/0",
            "overrides": {"max_steps": 40, "lr_init": 1e-3, "near": 0.0, "num_samples": [64, 32], "use_viewdirs": False,
                          "note": "1e3", "spaced": "a b=c", "nested": {"x": None}}}
    for case in (call, {**call, "factor": None, "overrides": None, "allow_cpu": False, "sparse": ""}):
        argv = cli.train_argv(**case)
        parsed = cli.train_call(cli.build_parser().parse_args(argv))
        assert parsed == {**case, "overrides": case["overrides"] or {}}, argv
    assert inspect.signature(cli.train_argv).parameters.keys() == inspect.signature(steps.train).parameters.keys()


def test_localize_settings_reach_the_step(monkeypatch):
    """`nerf localize` passes every declared setting (defaults from the declaration) and --set options."""
    from nerflib import localize, steps

    seen = {}
    monkeypatch.setattr(steps, "localize", lambda *a, **kw: seen.update(kw))
    cli.main(["localize", "s.json", "img", "model", "q", "out", "--pixels", "64", "--set", "loss=mse"])
    settings = {s.name: s.default for s in localize.workflow_settings()}
    assert {k: seen[k] for k in settings} == {**settings, "n_pixels": 64}
    assert seen["options"] == {"loss": "mse"}
    step_kw = localize.step_settings({k: seen[k] for k in settings}, seen["options"])
    assert step_kw["n_pixels"] == 64 and step_kw["loss"] == "mse" and step_kw["perturb_rot_deg"] == 10.0
    with pytest.raises(ValueError, match="unknown setting"):
        localize.step_settings({"iter": 3})


def test_vocab_tree_by_hand(tmp_path, capsys):
    """`nerf vocab-tree PHOTOS TREE`: SIFT from the photos -> a tree file that the vocab_tree matcher loads."""
    import cv2
    import numpy as np

    from nerflib import vocab_tree

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):  # smooth noise: plenty of SIFT features (~900 a photo), fast
        noise = rng.integers(0, 256, size=(60, 80, 3)).astype(np.uint8)
        assert cv2.imwrite(str(photos / f"{i}.png"), cv2.resize(noise, (320, 240), interpolation=cv2.INTER_CUBIC))
    tree = tmp_path / "trees" / "tree.bin"
    assert cli.main(["vocab-tree", str(photos), str(tree), "--threads", "1", "--max-features", "512",
                     "--words", "32", "--iterations", "5"]) == 0
    assert vocab_tree.check_vocab_tree(tree)["num_visual_words"] == 32
    assert sorted(p.name for p in tree.parent.iterdir()) == ["tree.bin"]
    assert "[vocab-tree] wrote" in capsys.readouterr().out


def test_every_step_by_hand_on_the_demo(tmp_path, capsys):
    demo, scene_dir, model, log = tmp_path / "demo", tmp_path / "scene", tmp_path / "model", tmp_path / "steps.log"

    def nerf(*args):
        assert cli.main(["--log", str(log), *map(str, args)]) == 0

    nerf("synthetic", demo, "--views", 16, "--heldout", 0, "--queries", 1, "--width", 96, "--height", 72)
    nerf("poses", demo / "images", scene_dir, "--poses", demo / "gt" / "scene.json", "--threads", 1)
    assert len(scene_io.read_scene_json(scene_dir / "poses" / "scene.json")) == 16
    assert (scene_dir / "sparse" / "0").is_dir() and (scene_dir / "images").is_symlink()
    nerf("pyramid", demo / "images", scene_dir / "images_2", "--factor", 2, "--threads", 1)
    assert len(list((scene_dir / "images_2").glob("*.jpg"))) == 16
    # no --preset: auto, which is tiny on the CPU (the log says so)
    nerf("train", scene_dir / "poses" / "scene.json", scene_dir / "images_2", model,
         "--factor", 2, "--set", "max_steps=20", "--set", "checkpoint_every=20", "--set", "batch_size=256",
         "--set", "test_every=4")
    final = json.loads((model / "final.json").read_text())
    assert final["preset"] == "tiny" and (model / "config.json").is_file() and (model / "train.tsv").is_file()
    nerf("eval", scene_dir / "poses" / "scene.json", scene_dir / "images_2", model, tmp_path / "eval")
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.tsv").open(), delimiter="\t"))
    assert rows[-1]["name"] == "mean" and len(rows) == 1 + 4  # every 4th of 16 held out
    nerf("render", scene_dir / "poses" / "scene.json", scene_dir / "images_2", model, tmp_path / "render",
         "--frames", 2, "--fps", 2)
    assert all((tmp_path / "render" / f"{k}.mp4").stat().st_size > 0 for k in ("color", "depth", "acc"))
    # --n-eval 4096 (every pixel of the 48x36 photo): with the default's 1024 the 20-step field's noisy
    # calibration flags this query converged (found when the defaults were settled; issue #24).
    nerf("localize", scene_dir / "poses" / "scene.json", scene_dir / "images_2", model, demo / "queries",
         tmp_path / "loc", "--gt-poses", demo / "gt" / "queries.json", "--start", "perturbed",
         "--iters", 4, "--restarts", 1, "--pixels", 32, "--n-eval", 4096)
    found = scene_io.read_scene_json(tmp_path / "loc" / "poses.json")
    assert found.names == ["q000.jpg"] and (tmp_path / "loc" / "errors.tsv").is_file()
    # A 20-step field cannot confirm a pose: the query is not flagged converged.
    frames = json.loads((tmp_path / "loc" / "poses.json").read_text())["frames"]
    assert [f["converged"] for f in frames] == [False]
    printed = capsys.readouterr()
    text = printed.out + printed.err + (log.read_text() if log.exists() else "")
    assert "cameras written to" in text and "evaluated step 20" in text
    assert "[train] preset auto -> tiny (no GPU" in text
    assert "[train] JAX" in text and "[render] JAX" in text and "backend cpu" in text
