"""Where the pipeline splits a tiled field (issue #26): at the scene's SfM points when its COLMAP model has
them (steps.train's `sparse`, the train rule's sparse/0 for tiles > 1), else at the camera centres; the
fingerprint changes with those points, so checkpoints of another layout are never resumed."""

from __future__ import annotations

import dataclasses

import numpy as np


def _tiled(tmp_path, sparse):
    from nerflib import configs, datasets
    from nerflib import train as train_mod
    from nerflib.tiled import pipeline

    scene = datasets.toy_scene(tmp_path / "data")  # 8 cameras on a circle of radius 2 (7 train)
    cfg = configs.override(configs.get_preset("tiny"), tiles=2, factor=1)
    scene = pipeline.scene_with_points(scene, sparse)
    ds = datasets.load_for_config(configs.for_scene(cfg, scene), scene, image_dir=tmp_path / "data" / "images")
    trainer = train_mod.make_trainer(cfg, ds, train_mod.training_mesh(cfg))
    return cfg, ds, trainer


def test_tiles_split_at_the_sfm_points_when_the_model_has_them(tmp_path):
    from nerflib import datasets, fingerprint, scene_io

    # SfM points off-centre: x in [0.4, 1.6] (the cameras' centres straddle x = 0)
    points = np.random.default_rng(0).uniform([0.4, -0.3, 0.0], [1.6, 0.3, 0.3], (300, 3))
    scene = datasets.toy_scene(tmp_path / "colmap")
    scene_io.write_colmap(dataclasses.replace(scene, points=points), tmp_path / "sparse" / "0")
    cfg, ds, trainer = _tiled(tmp_path, str(tmp_path / "sparse" / "0"))
    assert "300 SfM points" in trainer.description, trainer.description
    # The dataset's normalization moved the points with the cameras: T applied to the SfM points.
    T = ds.normalization["T"]
    moved = points @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(ds.scene.points, moved, atol=1e-9)
    # One cut, at the median of the normalized points along their longest side.
    layout = trainer.model.layout
    axis = int(np.argmax(np.ptp(moved, axis=0)))
    cut = np.median(moved[:, axis])
    assert np.isfinite(layout.hi[0][axis]) and layout.hi[0][axis] == layout.lo[1][axis]
    np.testing.assert_allclose(layout.hi[0][axis], cut, rtol=1e-6)
    assert np.isinf(np.delete(layout.hi[0], axis)).all() and np.isinf(layout.lo[0]).all()

    # Without a model (or '' for tiles 1 rows), the cameras' centres.
    _, ds_cams, cams = _tiled(tmp_path, "")
    assert f"{len(ds_cams)} camera centres" in cams.description, cams.description
    centres = np.asarray(ds_cams.c2w[:, :, 3], np.float64)
    axis_c = int(np.argmax(np.ptp(centres, axis=0)))
    np.testing.assert_allclose(cams.model.layout.hi[0][axis_c], np.median(centres[:, axis_c]), rtol=1e-5, atol=1e-6)

    # The fingerprint tells the two layouts apart, in words.
    fp_points, fp_cams = fingerprint.of_training(cfg, ds), fingerprint.of_training(cfg, ds_cams)
    assert fp_points["tile_points"] != fp_cams["tile_points"]
    assert any("tiles are split at changed" in r for r in fingerprint.differences(fp_cams, fp_points))
    assert fingerprint.differences(fp_points, fingerprint.of_training(cfg, ds)) == []
