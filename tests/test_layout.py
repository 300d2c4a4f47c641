"""nerflib.layout: the one owner of results/{scene}/... paths."""

from __future__ import annotations

import os

from nerflib.layout import SceneLayout


def test_paths_of_a_scene_and_the_rules_patterns():
    scene = SceneLayout.of("demo")
    assert (scene.sparse, scene.database, scene.scene_json) == (
        "results/demo/sparse/0", "results/demo/database.db", "results/demo/poses/scene.json")
    assert (scene.images(4), scene.images(1), scene.final_json) == (
        "results/demo/images_4", "results/demo/images", "results/demo/model/final.json")
    assert scene.export("ply") == "results/demo/export/points.ply"
    pattern = SceneLayout("results/{scene}")
    assert pattern.images("{factor}") == "results/{scene}/images_{factor}"
    assert pattern.report("cameras.png") == "results/{scene}/report/cameras.png"
    assert SceneLayout("results/demo/").root == "results/demo"


def test_containing_finds_only_paths_where_the_layout_puts_them(tmp_path):
    scene = SceneLayout(str(tmp_path / "demo"))
    assert SceneLayout.containing(scene.sparse, "sparse") == scene
    assert SceneLayout.containing(scene.model, "model") == scene
    assert SceneLayout.containing(tmp_path / "demo" / "other" / "0", "sparse") is None
    assert SceneLayout.containing(tmp_path / "elsewhere", "model") is None
    # relative paths and symlinks: the link's own place counts, not its target
    photos = tmp_path / "photos"
    photos.mkdir()
    (tmp_path / "demo").mkdir()
    os.symlink(photos, scene.photos_link)
    assert SceneLayout.containing(scene.photos_link, "photos_link") == scene
    assert SceneLayout.containing("/", "sparse") is None
