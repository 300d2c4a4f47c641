"""The procedural city (nerflib.synthetic_city, issue #26): a tiny one written in the demo's format and
read back by the loaders; its pixels agree with its geometry."""

from __future__ import annotations

import numpy as np

from nerflib import datasets, scene_io, synthetic_city


def test_tiny_city_is_written_in_the_demo_format_and_loads(tmp_path):
    summary = synthetic_city.generate(tmp_path, blocks=2, n_street=3, n_aerial=2, n_heldout=2, width=40, height=30,
                                      supersample=1)
    assert summary["views"] == 5 and summary["buildings"] >= 2
    scene = scene_io.read_scene_json(tmp_path / "gt" / "scene.json")
    held = scene_io.read_scene_json(tmp_path / "gt" / "heldout.json")
    assert len(scene) == 5 and len(held) == 2 and (tmp_path / "gt" / "colmap" / "images.txt").is_file()
    ds = datasets.load_dataset(scene, split="all", normalize=None)
    assert len(ds) == 5 and ds.image(0).shape == (30, 40, 3)
    # Aerial views (the last two) look down on the city: mostly ground and roofs, little sky.
    for i in (3, 4):
        sky = np.all(ds.image(i) > 245, axis=-1).mean()
        assert sky < 0.5, (i, sky)
    # Every camera sits in the open (not inside a building) and above the ground.
    city = synthetic_city.make_city(blocks=2)
    centres = scene.c2w[:, :, 3]
    inside = np.all((centres[:, None] > city.lo) & (centres[:, None] < city.hi), axis=-1)
    assert not inside.any() and np.all(centres[:, 2] > 1.0)


def test_a_pixel_sees_the_surface_the_geometry_predicts():
    city = synthetic_city.make_city(blocks=1, seed=3)
    lo, hi = city.lo[0], city.hi[0]
    # Straight down onto the middle of the first roof: roof colour; straight along a street: ground.
    o = np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), hi[2] + 10.0])
    _, t = synthetic_city._shade(city, o, np.array([[0.0, 0.0, -1.0]]))
    np.testing.assert_allclose(t, [10.0])
    street = city.street_centres()[0]
    _, t = synthetic_city._shade(city, np.array([street, street, 2.0]), np.array([[0.0, 0.6, -0.8]]))
    np.testing.assert_allclose(t, [2.5])  # the ground, 2.5 m along the ray
