"""Exports: the point cloud (PLY) and its filters, transforms.json, COLMAP text.

The geometry of the point cloud is checked on the procedural demo scene, whose surfaces are
known in closed form: its ground-truth depth maps go through the same unprojection, filters
and PLY writer as a model's rendered depth. A trained toy model (this file is also the script
of its subprocess, `python tests/test_export.py driver MODEL_ROOT OUT`) checks the rest
of the chain: rendering the training views, the training normalization undone, the files,
`nerf export` and read-backs with independent readers (plyfile, pycolmap, our transforms.json loader).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
from helpers.surfaces import surface_distance
from helpers.training import compile_cache, subprocess_env

# --------------------------------------------------------------------------- the demo's surfaces


@pytest.fixture(scope="module")
def demo_views():
    """Ground-truth depth and colour of 12 demo orbit views at 64x48: (views, their c2w)."""
    from nerflib import export, synthetic

    camera = synthetic.pinhole(64, 48)
    c2w = synthetic._orbit_c2w(12)
    views = []
    for pose in c2w:
        rgb, depth = synthetic.render_view(camera, pose, seed=0, supersample=1)
        views.append(export.depth_view(camera.params, pose, depth, np.ones(depth.shape), rgb / 255.0))
    return views, c2w


def _fresh(views):
    from nerflib import export

    return [export.depth_view(v.k, v.c2w, v.depth.copy(), v.acc.copy(), v.rgb.copy()) for v in views]


def test_points_of_true_depth_lie_on_the_demo_surfaces(demo_views, tmp_path):
    """Unprojection + every filter + PLY on exact depth: each written point on a surface.

    Tolerance 1e-4 relative to the depth: the depth maps are float32 (relative rounding 6e-8)
    and the PLY stores float32 coordinates (up to 40 m away: 4e-6 m); nothing else is approximate.
    """
    import plyfile

    from nerflib import export

    views, _ = demo_views
    points, colors, counts = export.fuse_views(_fresh(views), export.PointCloudOptions())
    export.write_ply(tmp_path / "points.ply", points, colors)
    ply = plyfile.PlyData.read(str(tmp_path / "points.ply"))
    v = ply["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    # at 64x48 the bands along silhouettes and the horizon are ~30 % of the pixels (edge filter)
    assert len(xyz) == counts["written"] > 0.45 * counts["pixels"], counts
    depth_scale = np.linalg.norm(xyz - np.array([0.0, 0.0, 1.6]), axis=1)  # ~ distance from the orbit
    assert np.all(surface_distance(xyz) <= 1e-4 * np.maximum(depth_scale, 1.0))
    # the colours are the views' colours of those pixels (uint8 in the file)
    assert v["red"].dtype == np.uint8 and np.ptp(np.asarray(v["green"], int)) > 50
    # the objects are there (not only ground and dome): points near the big sphere
    big = np.abs(np.linalg.norm(xyz - np.array([0.0, 0.0, 0.7]), axis=1) - 0.7) < 1e-3
    assert big.sum() > 100


def test_filters_remove_floaters_edges_and_stray_points(demo_views):
    """A floater patch (one view's depth halved), half-transparent pixels and silhouettes are dropped."""
    from nerflib import export

    views = _fresh(demo_views[0])
    v0 = views[0]
    v0.depth[8:24, 16:44] = 1.5  # a flat floater 1.5 m in front of view 0 (16x28 pixels), seen from view 0 only
    v0.acc[30:34, :] = 0.5  # half-transparent rows
    views[0] = export.depth_view(v0.k, v0.c2w, v0.depth, v0.acc, v0.rgb)
    opts = export.PointCloudOptions(std_ratio=0.0)
    points, _, counts = export.fuse_views(views, opts)
    assert np.all(surface_distance(points) <= 1e-4 * np.maximum(np.linalg.norm(points, axis=1), 1.0))
    # without the consistency check the floater survives; without the acc threshold, the rows come back
    loose, _, loose_counts = export.fuse_views(views, export.PointCloudOptions(min_consistent_views=0, std_ratio=0.0))
    assert (surface_distance(loose) > 0.05).sum() >= 200  # the floater's inside (its border is an edge)
    assert loose_counts["opaque"] == counts["opaque"] == counts["pixels"] - 4 * 64
    # the edge filter drops the pixels along depth discontinuities (the floater's border, silhouettes)
    assert counts["not_edge"] < counts["opaque"]


def test_statistical_outlier_removal():
    from nerflib import export

    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(2000, 3)) * 0.1
    strays = np.array([[5.0, 0, 0], [0, -4.0, 1.0], [3.0, 3.0, 3.0]])
    keep = export.statistical_inliers(np.concatenate([cloud, strays]), nb_neighbors=16, std_ratio=2.0)
    assert not keep[-3:].any() and keep[:-3].mean() > 0.95
    assert export.statistical_inliers(strays, nb_neighbors=16, std_ratio=2.0).all()  # too few points: all kept


def test_edge_mask_and_options():
    from nerflib import export

    depth = np.ones((4, 6))
    depth[:, 3:] = 2.0
    ok = export._edge_mask(depth, 0.05)
    assert ok[:, [0, 5]].all() and not ok[:, 1:5].any()  # the two pixels at the step and their neighbours
    assert export._edge_mask(depth, 0.0).all()
    # a steeply slanted plane (inverse depth affine in the pixel coordinates) has no edge
    jj, ii = np.meshgrid(np.arange(40), np.arange(30))
    assert export._edge_mask(1.0 / (0.02 + 0.05 * jj + 0.01 * ii), 0.05).all()
    for bad in ({"stride": 0}, {"acc_threshold": 1.5}, {"std_ratio": -1.0}, {"max_points": -1}):
        with pytest.raises(ValueError):
            export.PointCloudOptions(**bad)


def test_ply_writer_round_trip_and_max_points(tmp_path):
    import plyfile

    from nerflib import export

    rng = np.random.default_rng(1)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    cols = rng.uniform(size=(50, 3))
    export.write_ply(tmp_path / "a.ply", pts, cols, comments=["hello"])
    ply = plyfile.PlyData.read(str(tmp_path / "a.ply"))
    assert ply.text is False and ply.byte_order == "<" and "hello" in ply.comments
    v = ply["vertex"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), pts)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), np.rint(cols * 255).astype(np.uint8))
    back, back_cols = export.read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(back, pts)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- a trained toy model (subprocess)


def _driver(root: Path, out: Path) -> None:
    from nerflib import cameras as cam_lib
    from nerflib import checkpoint, cli, evaluate, models, parallel, scene_io, video

    scene_json, model_dir = out / "data" / "scene.json", root / "model"  # the scene copied beside the exports
    scene = scene_io.read_scene_json(scene_json)
    # A COLMAP binary model of the scene with a few points, for the colmap export from a sparse model.
    scene.points = np.array([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.25]])
    scene_io.write_colmap(scene, out / "sparse" / "0")
    assert cli.main(["export", str(scene_json), str(out / "export"), "--model", str(model_dir),
                     "--sparse", str(out / "sparse" / "0"), "--set", "max_points=500"]) == 0
    # Every filter off: the PLY holds every pixel of every training view (stride 2), for an exact check
    # (with the expected depth: the depth that evaluate.render_image returns by hand below).
    assert cli.main(["export", str(scene_json), str(out / "raw"), "--what", "ply", "--model", str(model_dir),
                     "--set", "depth=expected", "--set", "acc_threshold=0", "--set", "edge_threshold=0", "--set", "min_consistent_views=0",
                     "--set", "std_ratio=0", "--set", "stride=2"]) == 0
    # The poses alone, without a model, from scene.json (no sparse model).
    assert cli.main(["export", str(scene_json), str(out / "poses_only"), "--what", "transforms,colmap"]) == 0
    # An independent render of the training views at stride 2, unprojected by hand in the original frame.
    mesh = parallel.make_mesh()
    cfg, params, _ = checkpoint.restore_params(model_dir, mesh)
    frame = video.training_frame(cfg, scene_json)
    model = models.make_model(cfg.model, num_images=evaluate.num_images_of(params, frame.dataset.num_train_images))
    pts, cols = [], []
    for i in frame.train:
        camera = frame.cameras[i]
        rays = cam_lib.generate_rays(camera, frame.c2w[i], pixels=cam_lib.pixel_grid(camera.width, camera.height)[::2, ::2],
                                     near=frame.near, far=frame.far)
        r = evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh)
        p = rays.origins + rays.directions * r["depth"][..., None]
        t_inv = np.asarray(frame.normalization["T_inv"])  # x_original = T_inv x_training
        pts.append(np.asarray(p, np.float64).reshape(-1, 3) @ t_inv[:3, :3].T + t_inv[:3, 3])
        cols.append(np.clip(r["rgb"], 0, 1).reshape(-1, 3))
    np.savez(out / "by_hand.npz", points=np.concatenate(pts), colors=np.concatenate(cols))


if __name__ == "__main__":
    {"driver": _driver}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
    sys.exit(0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, toy_model):
    """The exports of the session's toy model (tests/helpers/toymodel.py), written by `nerf export` in a subprocess
    (test_train's XLA flags), beside a copy of its scene (data/) and an independent render (by_hand.npz)."""
    out = tmp_path_factory.mktemp("export_runs")
    shutil.copytree(toy_model / "data", out / "data")
    proc = subprocess.run([sys.executable, str(HERE), "driver", str(toy_model), str(out)],
                          env=subprocess_env(compile_cache(tmp_path_factory)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_model_point_cloud_is_its_rendered_depth_in_the_scene_frame(exported):
    """Filters off: the PLY is every sampled pixel of every training view, unprojected through the model's
    depth and mapped back from the training normalization (an independent render and unprojection)."""
    import plyfile

    v = plyfile.PlyData.read(str(exported / "raw" / "points.ply"))["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    with np.load(exported / "by_hand.npz") as z:
        want, want_rgb = z["points"], z["colors"]
    assert xyz.shape == want.shape == (6 * 6 * 8, 3)  # 6 training views of 16x12 at stride 2
    np.testing.assert_allclose(xyz, want, rtol=1e-4, atol=1e-4)
    assert np.abs(rgb.astype(int) - np.rint(want_rgb * 255)).max() <= 1


def test_model_export_files(exported):
    import plyfile

    ply = plyfile.PlyData.read(str(exported / "export" / "points.ply"))
    n = len(ply["vertex"])
    assert 0 < n <= 500 and any("model step 12" in c for c in ply.comments)
    assert sorted(p.name for p in (exported / "export").iterdir()) == ["colmap", "points.ply", "transforms.json"]
    assert not [p for p in (exported / "export").rglob(".*")], "temp files left"


@pytest.mark.parametrize("folder", ["export", "poses_only"])
def test_transforms_json_reads_back_as_the_scene(exported, folder):
    from nerflib import scene_io

    scene = scene_io.read_scene_json(exported / "data" / "scene.json")
    path = exported / folder / "transforms.json"
    d = json.loads(path.read_text())
    assert d["camera_model"] == "PINHOLE" and d["w"] == 16 and d["h"] == 12
    assert d["frames"][0]["file_path"] == "../data/images/000.png"  # relative to the json, with the extension
    # OpenGL axes: the camera looks along -z, so -z of every transform points at the toy scene's centre
    m = np.array(d["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(-m[:3, 2], -m[:3, 3] / np.linalg.norm(m[:3, 3]), atol=1e-6)
    back = scene_io.read_blender(path)
    assert back.names == scene.names and back.cameras == scene.cameras
    np.testing.assert_allclose(back.c2w, scene.c2w, atol=1e-12)
    assert Path(back.image_dir).resolve() == Path(scene.image_dir).resolve()


def test_colmap_text_round_trip_through_pycolmap(exported):
    import pycolmap

    from nerflib import scene_io

    scene = scene_io.read_scene_json(exported / "data" / "scene.json")
    for folder, n_points in (("export", 2), ("poses_only", 0)):
        text = exported / folder / "colmap"
        assert (text / "cameras.txt").is_file() and not list(text.glob("*.bin"))
        rec = pycolmap.Reconstruction(str(text))
        assert rec.num_reg_images() == len(scene) and rec.num_points3D() == n_points
        back = scene_io.read_colmap(text, check_images=False)
        assert back.names == scene.names and back.cameras == scene.cameras
        np.testing.assert_allclose(back.c2w, scene.c2w, atol=1e-9)
    binary = pycolmap.Reconstruction(str(exported / "sparse" / "0"))
    text = pycolmap.Reconstruction(str(exported / "export" / "colmap"))
    assert sorted(p.xyz.tolist() for p in binary.points3D.values()) == sorted(p.xyz.tolist() for p in text.points3D.values())
