"""Exports of a trained scene for other tools: a coloured point cloud, the poses as transforms.json and COLMAP text.

  points.ply       binary little-endian PLY: x, y, z (float32, the scene's original
                   frame: scene.json's, the COLMAP model's), red, green, blue (uint8,
                   the rendered colour). Built from the rendered depth of every
                   training view (`point_cloud`), then filtered (below).
  transforms.json  the poses and cameras for nerfstudio / instant-ngp / 3D Gaussian
                   splatting (scene_io.write_blender: camera-to-world 4x4 with OpenGL
                   camera axes, fl_x/fl_y/cx/cy/w/h, k1..p2 distortion, camera_model,
                   file_path relative to the json, with extension), in the original frame.
  colmap/          the COLMAP model as text (cameras.txt, images.txt, points3D.txt and
                   pycolmap's rigs.txt, frames.txt): the SfM model itself when there is one
                   (keeps its tracks and point colours), else the poses of scene.json.

Point cloud, per training view (every `stride`-th pixel of the training-factor camera,
without lens distortion: the points do not depend on the camera model used to cast
the rays): point = origin + depth * direction, with `depth` the median termination
distance (nerflib directions have camera-frame z == 1, so it is along the optical axis;
nerfstudio's "depth" is the median too) and the colour the rendered one. The expected
depth (`depth="expected"`, volume rendering's) is a mean: a little weight left far
behind the surface pulls it far off (on the demo's tiny model its median error is 49 % of
the distance, the median's 3.4 %). Pixels are dropped where
  * acc < acc_threshold: a half-transparent pixel's depth lies between the surfaces it
    mixes (or is pulled towards the far bound);
  * the termination distances spread over more than `max_spread` of the median (their
    95th - 5th percentile; off by default);
  * near a depth discontinuity (`edge_threshold`: the second difference of inverse depth
    relative to the pixel's, and the 8 neighbours of such pixels): at a silhouette a
    pixel's depth mixes foreground and background ("flying pixels");
  * fewer than `min_consistent_views` other training views agree (multi-view
    consistency): the point is projected into the other views; a view agrees when the
    point is in its image and in front, and the depth it rendered at that pixel
    (nearest sample) is within `consistency_tolerance` (relative) of the point's depth
    in that view. Floaters seen from one view are inconsistent with the rest.
  * statistical outlier removal (Open3D's remove_statistical_outlier): the mean
    distance to the `nb_neighbors` nearest points is more than `std_ratio` standard
    deviations above the mean of all points' (0 turns it off).
At most `max_points` points go into the statistical filter (a random subset, fixed seed).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nerflib import fileio

KINDS = ("ply", "transforms", "colmap")
PLY_NAME = "points.ply"
TRANSFORMS_NAME = "transforms.json"
COLMAP_DIR = "colmap"


@dataclasses.dataclass(frozen=True)
class PointCloudOptions:
    """Settings of the point cloud export (see the module docstring for each filter)."""

    stride: int = 1
    """Every stride-th pixel in x and y of the training-factor camera."""
    depth: str = "median"
    """'median' (the median termination distance) or 'expected' (the mean, volume rendering's depth)."""
    max_spread: float = 0.0
    """Drop pixels whose termination distances spread (95th - 5th percentile) over more than this
    fraction of the median (0 = keep all)."""
    max_views: int = 0
    """At most this many training views, evenly spread (0 = all)."""
    acc_threshold: float = 0.95
    """Minimum accumulated opacity of a pixel."""
    edge_threshold: float = 0.05
    """Maximum second difference of inverse depth, relative to the pixel's (0 turns the edge filter off)."""
    min_consistent_views: int = 1
    """Other training views whose depth must agree with the point (0 turns the check off)."""
    consistency_tolerance: float = 0.02
    """Relative depth difference within which another view agrees."""
    nb_neighbors: int = 16
    """Neighbours of the statistical outlier removal."""
    std_ratio: float = 2.0
    """Standard deviations above the mean neighbour distance that make an outlier (0 = off)."""
    max_points: int = 2_000_000
    """Keep at most this many points (a random subset; 0 = all)."""

    def __post_init__(self):
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")
        if self.depth not in ("median", "expected"):
            raise ValueError(f"depth must be 'median' or 'expected', got {self.depth!r}")
        if not 0.0 <= self.acc_threshold <= 1.0:
            raise ValueError(f"acc_threshold must be in [0, 1], got {self.acc_threshold!r}")
        for name in ("edge_threshold", "consistency_tolerance", "std_ratio", "max_spread"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_views", "min_consistent_views", "nb_neighbors", "max_points"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")


@dataclasses.dataclass
class DepthView:
    """One rendered view: pinhole camera `k` = (fx, fy, cx, cy) of the sampled grid, c2w [3, 4] (OpenCV),
    depth [h, w] float32 along the optical axis, acc [h, w] float32, rgb [h, w, 3] uint8 (11 bytes a
    pixel: every training view is kept for the consistency check; `stride` 2 needs a quarter)."""

    k: tuple[float, float, float, float]
    c2w: np.ndarray
    depth: np.ndarray
    acc: np.ndarray
    rgb: np.ndarray
    spread: np.ndarray | None = None

    def unproject(self) -> np.ndarray:
        """Points [h, w, 3]: pixel (i, j)'s centre (j + 0.5, i + 0.5) at its depth (directions with z == 1)."""
        fx, fy, cx, cy = self.k
        h, w = self.depth.shape
        jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5, indexing="xy")
        dirs_cam = np.stack([(jj - cx) / fx, (ii - cy) / fy, np.ones_like(jj)], axis=-1)
        return self.c2w[:, 3] + (dirs_cam * self.depth[..., None].astype(np.float64)) @ self.c2w[:, :3].T


# --------------------------------------------------------------------------- PLY


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray, *, comments=()) -> None:
    """points [N, 3], colors [N, 3] uint8 (or floats in [0, 1]) -> binary little-endian PLY, atomically."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors)
    if colors.dtype != np.uint8:
        colors = np.clip(np.rint(np.asarray(colors, np.float64) * 255.0), 0, 255).astype(np.uint8)
    colors = colors.reshape(-1, 3)
    if len(colors) != len(points):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments),
              f"element vertex {len(points)}", "property float x", "property float y", "property float z",
              "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertex.tobytes())


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """What `write_ply` wrote -> (points [N, 3] float32, colors [N, 3] uint8)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = next(int(line.split()[2]) for line in data[:end].decode("ascii").splitlines()
             if line.startswith("element vertex"))
    vertex = np.frombuffer(data[end:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                             ("red", "u1"), ("green", "u1"), ("blue", "u1")], count=n)
    return (np.stack([vertex["x"], vertex["y"], vertex["z"]], -1),
            np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1))


# --------------------------------------------------------------------------- point cloud (numpy)


def depth_view(k, c2w, depth, acc, rgb, spread=None) -> DepthView:
    """A DepthView of a pinhole camera k = (fx, fy, cx, cy); rgb uint8, or floats in [0, 1]."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(np.asarray(rgb, np.float64) * 255.0), 0, 255).astype(np.uint8)
    return DepthView(tuple(float(v) for v in k), np.asarray(c2w, dtype=np.float64), np.asarray(depth, np.float32),
                     np.asarray(acc, np.float32), rgb, None if spread is None else np.asarray(spread, np.float32))


def _edge_mask(depth: np.ndarray, threshold: float) -> np.ndarray:
    """True away from depth discontinuities.

    Inverse depth is affine in pixel coordinates on a plane, so its second difference along
    rows and columns, relative to the pixel's inverse depth, is ~0 on any smooth surface however
    slanted (the ground towards the horizon) and large across a silhouette. Pixels where it
    exceeds `threshold`, and their 8 neighbours, are dropped (a mixed pixel's neighbours see the
    jump too). Border rows and columns have no second difference and are judged by their neighbours.
    """
    if threshold <= 0:
        return np.ones(depth.shape, bool)
    inv = 1.0 / np.maximum(depth, 1e-12)
    jump = np.zeros(depth.shape, bool)
    second = np.abs(inv[:-2] + inv[2:] - 2.0 * inv[1:-1]) / inv[1:-1]
    jump[1:-1] |= second > threshold
    second = np.abs(inv[:, :-2] + inv[:, 2:] - 2.0 * inv[:, 1:-1]) / inv[:, 1:-1]
    jump[:, 1:-1] |= second > threshold
    near = np.pad(jump, 1)
    h, w = depth.shape
    grown = np.zeros(depth.shape, bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            grown |= near[di:di + h, dj:dj + w]
    return ~grown


def _consistent_views(points: np.ndarray, source: int, views: list[DepthView], tolerance: float) -> np.ndarray:
    """[N] how many views other than `source` see points [N, 3] at the depth they rendered (within tolerance)."""
    count = np.zeros(len(points), np.int32)
    for j, v in enumerate(views):
        if j == source:
            continue
        p_cam = (points - v.c2w[:, 3]) @ v.c2w[:, :3]  # R^T (p - c)
        z = p_cam[:, 2]
        fx, fy, cx, cy = v.k
        safe = np.where(z > 1e-9, z, 1.0)
        col = np.floor(fx * p_cam[:, 0] / safe + cx).astype(np.int64)
        row = np.floor(fy * p_cam[:, 1] / safe + cy).astype(np.int64)
        h, w = v.depth.shape
        inside = (z > 1e-9) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        rendered = v.depth[np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)]
        count += inside & (np.abs(rendered - z) <= tolerance * z)
    return count


def statistical_inliers(points: np.ndarray, *, nb_neighbors: int, std_ratio: float) -> np.ndarray:
    """[N] bool: Open3D's remove_statistical_outlier (mean k-NN distance <= mean + std_ratio * std)."""
    if std_ratio <= 0 or nb_neighbors < 1 or len(points) <= nb_neighbors:
        return np.ones(len(points), bool)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=nb_neighbors + 1)  # the first neighbour is the point itself
    mean = dist[:, 1:].mean(axis=1)
    return mean <= mean.mean() + std_ratio * mean.std()


def fuse_views(views: list[DepthView], options: PointCloudOptions = PointCloudOptions(), *,
               log: Callable[[str], None] = lambda m: None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Filtered points [N, 3] and colours [N, 3] uint8 of rendered views, plus counts of what each filter kept."""
    pts, cols = [], []
    counts = {"pixels": 0, "opaque": 0, "not_edge": 0, "consistent": 0}
    for i, v in enumerate(views):
        keep = (v.acc >= options.acc_threshold) & np.isfinite(v.depth) & (v.depth > 0)
        if options.max_spread > 0 and v.spread is not None:
            keep &= v.spread <= options.max_spread
        counts["pixels"] += keep.size
        counts["opaque"] += int(keep.sum())
        keep &= _edge_mask(v.depth, options.edge_threshold)
        counts["not_edge"] += int(keep.sum())
        p, c = v.unproject()[keep], v.rgb[keep]
        if options.min_consistent_views > 0 and len(views) > 1:
            ok = _consistent_views(p, i, views, options.consistency_tolerance) >= options.min_consistent_views
            p, c = p[ok], c[ok]
        counts["consistent"] += len(p)
        pts.append(p)
        cols.append(c)
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    colors = np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8)
    if options.max_points and len(points) > options.max_points:  # before the k-NN search: it bounds its time
        pick = np.sort(np.random.default_rng(0).choice(len(points), options.max_points, replace=False))
        points, colors = points[pick], colors[pick]
    ok = statistical_inliers(points, nb_neighbors=options.nb_neighbors, std_ratio=options.std_ratio)
    points, colors = points[ok], colors[ok]
    counts["written"] = len(points)
    log("export: points kept by each filter: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return points, colors, counts


def transform_points(points: np.ndarray, T) -> np.ndarray:
    """Points [N, 3] through the 4x4 similarity T (e.g. a normalization's 'T_inv')."""
    T = np.asarray(T, dtype=np.float64)
    return np.asarray(points, np.float64) @ T[:3, :3].T + T[:3, 3]


# --------------------------------------------------------------------------- from a trained model

DEPTH_KEYS = ("rgb", "acc", "depth", "distance_median", "distance_percentile_5", "distance_percentile_95")


@functools.lru_cache(maxsize=4)
def _depth_render_fn(model, mesh, zero_glo: bool):
    """evaluate.make_render_fn's function, returning the termination-distance percentiles too (either model
    kind: evaluate.ray_render; a tiled model renders all its tiles on every device)."""
    import jax

    from nerflib import evaluate, parallel

    final = evaluate.ray_render(model, zero_glo=zero_glo, extras=True)

    def render(params, rays):
        out = final(params, rays)
        return {k: out[k] for k in DEPTH_KEYS}

    return jax.jit(render, in_shardings=(parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)),
                   out_shardings=parallel.replicated_sharding(mesh))


def render_depth_views(model_dir, scene_json, *, images=None, options: PointCloudOptions = PointCloudOptions(),
                       mesh=None, log: Callable[[str], None] = print) -> tuple[list[DepthView], dict | None, int]:
    """Render every training view (or `options.max_views` of them) of the model in model_dir.

    Returns (views in the training frame, the training normalization (None: none), the model's step).
    """
    from nerflib import cameras as cam_lib
    from nerflib import checkpoint, evaluate, parallel, video

    mesh = parallel.make_mesh() if mesh is None else mesh
    cfg, params, step = checkpoint.restore_params(model_dir, mesh)  # a tiled field's params replicated too
    frame = video.training_frame(cfg, scene_json, images=images)
    model, _ = evaluate.field_of(cfg, params, mesh, num_images=frame.dataset.num_train_images)  # untiled or tiled
    fn = _depth_render_fn(model, mesh, cfg.model.num_glo_features > 0)
    which = np.asarray(frame.train)
    if options.max_views and len(which) > options.max_views:
        which = which[np.unique(np.linspace(0, len(which) - 1, options.max_views).round().astype(int))]
    views = []
    s = options.stride
    for n, i in enumerate(which):
        camera = video.render_camera(frame.cameras[i], factor=cfg.factor, pinhole=True)
        grid = cam_lib.pixel_grid(camera.width, camera.height)[::s, ::s]
        # A strided grid is the camera with focal lengths / s and pixel centres s j + 0.5 -> (j + 0.5) / s.
        fx, fy, cx, cy = (float(p) for p in camera.params)
        k = (fx / s, fy / s, (cx - 0.5) / s + 0.5, (cy - 0.5) / s + 0.5)
        rays = cam_lib.generate_rays(camera, frame.c2w[i], pixels=grid, near=frame.near, far=frame.far)
        out = evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh, render_fn=fn)
        median = out["distance_median"]
        spread = (out["distance_percentile_95"] - out["distance_percentile_5"]) / np.maximum(median, 1e-12)
        depth = median if options.depth == "median" else out["depth"]
        views.append(depth_view(k, frame.c2w[i], depth, out["acc"], np.clip(out["rgb"], 0.0, 1.0), spread))
        if (n + 1) % max(1, len(which) // 5) == 0 or n + 1 == len(which):
            log(f"export: rendered {n + 1}/{len(which)} training views ({grid.shape[1]}x{grid.shape[0]})")
    return views, frame.normalization, int(step)


def point_cloud(model_dir, scene_json, out_ply, *, images=None, options: PointCloudOptions = PointCloudOptions(),
                mesh=None, log: Callable[[str], None] = print) -> dict:
    """points.ply of the model in model_dir, in scene.json's frame; returns the filter counts and timing."""
    start = time.perf_counter()
    views, normalization, step = render_depth_views(model_dir, scene_json, images=images, options=options,
                                                    mesh=mesh, log=log)
    points, colors, counts = fuse_views(views, options, log=log)
    if normalization is not None:
        points = transform_points(points, normalization["T_inv"])
    write_ply(out_ply, points, colors,
              comments=[f"nerflib export: {len(views)} training views, model step {step}",
                        "frame: scene.json (the COLMAP model's), OpenCV camera axes"])
    seconds = time.perf_counter() - start
    log(f"export: {len(points)} points -> {out_ply} ({seconds:.1f} s)")
    return {**counts, "views": len(views), "model_step": step, "seconds": seconds}


# --------------------------------------------------------------------------- poses


def transforms_json(scene_json, out_json) -> None:
    """The poses and cameras of scene.json as a nerfstudio / instant-ngp / 3DGS transforms.json."""
    from nerflib import scene_io

    scene = scene_io.read_scene_json(scene_json)
    scene_io.write_blender(scene, out_json)


def colmap_text(scene_json, out_dir, *, sparse_dir=None) -> None:
    """The COLMAP model as text in out_dir: the SfM model in sparse_dir if given, else scene.json's poses.

    Each file is replaced atomically; every other file in out_dir (another run's, a killed run's temps) is removed.
    """
    import pycolmap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".colmap."))
    try:
        if sparse_dir:
            pycolmap.Reconstruction(str(sparse_dir)).write_text(str(tmp))
        else:
            from nerflib import scene_io

            scene_io.write_colmap(scene_io.read_scene_json(scene_json), tmp, text=True)
        written = sorted(p.name for p in tmp.iterdir())
        for name in written:
            with fileio.atomic_path(out_dir / name) as dst:
                shutil.copyfile(tmp / name, dst)
        for p in out_dir.iterdir():  # another run's files (binary, older text) and a killed run's temps
            if p == tmp or p.name in written:
                continue
            if p.is_dir() and p.name.startswith(".colmap."):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file():
                p.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(out_dir, *, scene_json, what=KINDS, model_dir=None, images=None, sparse_dir=None,
           options: PointCloudOptions | dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Write the exports `what` (a subset of KINDS) into out_dir: points.ply, transforms.json, colmap/."""
    what = [what] if isinstance(what, str) else list(what)
    bad = [w for w in what if w not in KINDS]
    if bad or not what:
        raise ValueError(f"exports must be some of {', '.join(KINDS)}, got {what!r}")
    out_dir = Path(out_dir)
    result: dict = {}
    if "transforms" in what:
        transforms_json(scene_json, out_dir / TRANSFORMS_NAME)
        log(f"export: poses -> {out_dir / TRANSFORMS_NAME}")
        result["transforms"] = str(out_dir / TRANSFORMS_NAME)
    if "colmap" in what:
        colmap_text(scene_json, out_dir / COLMAP_DIR, sparse_dir=sparse_dir)
        log(f"export: COLMAP text model -> {out_dir / COLMAP_DIR}" + (f" (from {sparse_dir})" if sparse_dir else ""))
        result["colmap"] = str(out_dir / COLMAP_DIR)
    if "ply" in what:
        if model_dir is None:
            raise ValueError("the point cloud export (ply) needs the trained model's folder")
        if isinstance(options, dict):
            options = PointCloudOptions(**options)
        result["ply"] = point_cloud(model_dir, scene_json, out_dir / PLY_NAME, images=images,
                                    options=options or PointCloudOptions(), log=log)
    return result
