"""Splits, image loading and training-ray batches (checked against the pixels they came from)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.training import check_batch
from nerflib import datasets


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return root, datasets.toy_scene(root)


def test_split_indices_every_kth_is_held_out():
    np.testing.assert_array_equal(datasets.split_indices(10, "test", 4), [0, 4, 8])
    np.testing.assert_array_equal(datasets.split_indices(10, "train", 4), [1, 2, 3, 5, 6, 7, 9])
    np.testing.assert_array_equal(datasets.split_indices(5, "all", 4), np.arange(5))
    np.testing.assert_array_equal(datasets.split_indices(5, "train", 0), np.arange(5))
    assert len(datasets.split_indices(5, "test", 0)) == 0
    with pytest.raises(ValueError, match="split"):
        datasets.split_indices(5, "val", 8)


def test_load_dataset_splits_sorted_names_and_cam_idx(toy):
    root, scene = toy
    # shuffle the scene's order: splits must follow sorted names (multinerf's load_alphabetical)
    perm = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    shuffled = datasets.Scene(names=[scene.names[i] for i in perm], c2w=scene.c2w[perm], cameras=scene.cameras,
                              camera_idx=scene.camera_idx[perm], image_dir=scene.image_dir, near=0.5, far=4.0)
    train = datasets.load_dataset(shuffled, split="train", test_every=4, normalize=None)
    test = datasets.load_dataset(shuffled, split="test", test_every=4, normalize=None)
    assert test.names == ["000.png", "004.png"]
    assert train.names == ["001.png", "002.png", "003.png", "005.png", "006.png", "007.png"]
    np.testing.assert_array_equal(train.cam_idx, np.arange(6))
    np.testing.assert_array_equal(test.cam_idx, [0, 0])
    assert train.num_train_images == test.num_train_images == 6
    np.testing.assert_allclose(train.c2w[0], scene.c2w[1], atol=1e-6)
    assert train.image(0).dtype == np.uint8 and train.image(0).shape == (12, 16, 3)
    name, rays, rgb = next(datasets.iterate_test_views(test))
    assert name == "000.png" and rays.origins.shape == (12, 16, 3) and rgb.shape == (12, 16, 3)
    assert rays.near.shape == (12, 16, 1) and float(rays.near[0, 0, 0]) == 0.5


def test_load_dataset_errors_name_the_fix(toy):
    root, scene = toy
    with pytest.raises(ValueError, match="images_2"):
        datasets.load_dataset(scene, factor=2, normalize=None)  # no pyramid built
    with pytest.raises(ValueError, match="expects 8x6"):
        datasets.load_dataset(scene, image_dir=root / "images", factor=2, normalize=None)  # wrong factor folder
    no_bounds = datasets.Scene(names=scene.names, c2w=scene.c2w, cameras=scene.cameras,
                               camera_idx=scene.camera_idx, image_dir=scene.image_dir)
    with pytest.raises(ValueError, match="near= and far="):
        datasets.load_dataset(no_bounds, normalize=None)
    assert datasets.load_dataset(no_bounds, normalize=None, near=0.1, far=9.0, lazy=True).far == 9.0


def test_ray_batcher_samples_pixels_it_claims(toy):
    import jax

    from nerflib import parallel

    _, scene = toy
    ds = datasets.load_dataset(scene, split="train", test_every=4, normalize=None)
    mesh = parallel.make_mesh(jax.devices()[:1])
    batcher = datasets.RayBatcher(ds, batch_size=256, mesh=mesh)
    sample = jax.jit(batcher.sample)
    batch = sample(jax.random.PRNGKey(3), batcher.data)
    assert batch.rgb.shape == (256, 3) and batch.rays.origins.shape == (256, 3)
    idx = check_batch(ds, batch)
    assert set(idx) == set(range(len(ds)))  # 256 rays over 6 images: all are drawn
    again = sample(jax.random.PRNGKey(3), batcher.data)
    np.testing.assert_array_equal(np.asarray(again.rgb), np.asarray(batch.rgb))  # a function of the key alone
    other = sample(jax.random.PRNGKey(4), batcher.data)
    assert not np.array_equal(np.asarray(other.rgb), np.asarray(batch.rgb))


def test_choose_mode():
    ds = datasets.dataset_from_arrays(np.zeros((2, 4, 4, 3)), [datasets.Camera("PINHOLE", 4, 4, (4, 4, 2, 2))],
                                      np.tile(np.eye(3, 4), (2, 1, 1)), near=0.1, far=1.0)
    assert datasets.choose_mode(ds, setting="auto", threshold_mb=1.0) == "replicate"
    assert datasets.choose_mode(ds, setting="auto", threshold_mb=1e-5) == "shard"
    assert datasets.choose_mode(ds, setting="shard", threshold_mb=1.0) == "shard"


def test_load_for_config_bounds_precedence(toy):
    from nerflib import configs

    _, scene = toy
    cfg = configs.tiny(factor=1, normalize=None, test_every=4)
    assert (datasets.load_for_config(cfg, scene, lazy=True).near, datasets.load_for_config(cfg, scene, lazy=True).far) == (0.5, 4.0)
    ds = datasets.load_for_config(configs.tiny(factor=1, normalize=None, near=0.3, far=7.0), scene, split="test", lazy=True)
    assert (ds.near, ds.far, ds.split, len(ds)) == (0.3, 7.0, "test", 1)
    bare = datasets.Scene(names=scene.names, c2w=scene.c2w, cameras=scene.cameras, camera_idx=scene.camera_idx,
                          image_dir=scene.image_dir)
    ds = datasets.load_for_config(cfg, bare, lazy=True)
    assert (ds.near, ds.far) == (cfg.model.near, cfg.model.far)


def test_load_dataset_normalizes_the_whole_scene(toy):
    _, scene = toy
    train = datasets.load_dataset(scene, split="train", test_every=4, normalize="360", lazy=True)
    test = datasets.load_dataset(scene, split="test", test_every=4, normalize="360", lazy=True)
    centres = np.concatenate([train.c2w[:, :, 3], test.c2w[:, :, 3]])
    assert np.linalg.norm(centres, axis=-1).max() == pytest.approx(1.0, abs=1e-5)  # cameras in the unit ball
    assert train.normalization["mode"] == "360"
    s = train.normalization["scale"]
    assert (train.near, train.far) == pytest.approx((0.5 * s, 4.0 * s))
