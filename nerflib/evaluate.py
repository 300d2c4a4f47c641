"""Full-image rendering and held-out evaluation (PSNR, SSIM).

`render_image` flattens an image's rays, pads them to a whole number of
fixed-size chunks (one compiled shape for every image), splits each chunk
over all devices of the mesh ('data' axis) and gathers the result. The chunk
size is rounded up to a multiple of the device count.

`evaluate` renders every held-out view and writes, from process 0 only and
atomically:
  out_dir/metrics.tsv   name, psnr, ssim: one row per view, then a 'mean' row.
                        LPIPS is omitted: it needs pretrained network weights
                        that nerflib does not ship.
  out_dir/views/<name>.png  ground truth | render | |difference| side by side.
Metrics follow multinerf's eval: on 8-bit quantized renders (Config.eval_quantize).
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from nerflib import configs, datasets, fileio, metrics, models, parallel
from nerflib.types import Rays

RENDER_KEYS = ("rgb", "depth", "acc")


def make_render_fn(model, mesh, *, zero_glo: bool = False) -> Callable:
    """jit(params, rays [C]) -> {'rgb' [C, 3], 'depth' [C], 'acc' [C]}, deterministic (rng None).

    rays split over the mesh's 'data' axis; outputs replicated (readable on every process).
    Cached per (model, mesh, zero_glo), so repeated evaluations reuse one compilation.
    """
    return _render_fn(model, mesh, bool(zero_glo))


@functools.lru_cache(maxsize=8)
def _render_fn(model, mesh, zero_glo: bool) -> Callable:
    rep = parallel.replicated_sharding(mesh)
    data = parallel.data_sharding(mesh)
    final = ray_render(model, zero_glo=zero_glo)

    def render(params, rays):
        out = final(params, rays)
        return {k: out[k] for k in RENDER_KEYS if k in out}

    return jax.jit(render, in_shardings=(rep, data), out_shardings=rep)


def ray_render(model, *, zero_glo: bool = False, extras: bool = True) -> Callable:
    """render(params, rays [...]) -> the final round's outputs ('rgb' [..., 3], 'depth', 'acc' [...], ...).

    The one render of a trained field for either model kind: the untiled model (models.NerfModel,
    with compute_extras) or a TiledModel (all tiles here, nerflib.tiled.pipeline.ray_render).
    Deterministic (no sampling jitter), not jitted, differentiable w.r.t. params and rays (pose
    refinement in nerflib.localize differentiates it w.r.t. the camera pose). extras: the untiled
    model's compute_extras (termination-distance percentiles, ...); `model.apply` gets zero_glo and
    compute_extras only when set, so any object with NerfModel's `apply` renders too (tests)."""
    from nerflib.tiled.model import TiledModel

    if isinstance(model, TiledModel):
        from nerflib.tiled import pipeline

        return pipeline.ray_render(model, extras=extras)

    kw = {**({"compute_extras": True} if extras else {}), **({"zero_glo": True} if zero_glo else {})}

    def render(params, rays):
        renderings, _ = model.apply({"params": params}, rays, rng=None, train_frac=1.0, **kw)
        return renderings[-1]

    return render


def field_of(cfg: configs.Config, params, mesh, *, num_images: int = 1):
    """(model, render_fn) of trained `params`: the untiled model (models.make_model, make_render_fn), or
    for cfg.tiles > 1 the tiled one, whose layout travels in its params (nerflib.tiled.pipeline)."""
    if cfg.tiles > 1:
        from nerflib.tiled import pipeline

        model = pipeline.model_of(cfg, params)
        return model, pipeline.make_render_fn(model, mesh)
    model = models.make_model(cfg.model, num_images=num_images_of(params, num_images))
    return model, make_render_fn(model, mesh, zero_glo=cfg.model.num_glo_features > 0)


def chunk_size_for(chunk_size: int, num_devices: int) -> int:
    """`chunk_size` rounded up to a multiple of `num_devices`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return math.ceil(chunk_size / num_devices) * num_devices


def render_image(model, params, rays: Rays, *, chunk_size: int, mesh, zero_glo: bool = False,
                 render_fn: Callable | None = None) -> dict[str, np.ndarray]:
    """Render rays of any batch shape [...] -> {'rgb' [..., 3], 'depth' [...], 'acc' [...]} (numpy).

    Every process must call this with the same rays (they are built on each host).
    """
    fn = render_fn or make_render_fn(model, mesh, zero_glo=zero_glo)
    shape = np.shape(rays.origins)[:-1]
    flat = jax.tree_util.tree_map(lambda x: np.asarray(x).reshape(-1, np.shape(x)[-1]), rays)
    n = flat.origins.shape[0]
    chunk = chunk_size_for(chunk_size, mesh.devices.size)
    n_chunks = max(1, math.ceil(n / chunk))
    pad = n_chunks * chunk - n
    if pad:  # repeat the last ray: padded rays are valid inputs, their outputs are dropped
        flat = jax.tree_util.tree_map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, 0)]), flat)
    sharding = parallel.data_sharding(mesh)
    pieces: dict[str, list[np.ndarray]] = {}
    pending = []  # dispatch ahead (asynchronously) and fetch behind, at most `depth` chunks in flight
    depth = 4
    for c in range(n_chunks + depth):
        if c < n_chunks:
            part = jax.tree_util.tree_map(
                lambda x: parallel.global_array(x[c * chunk : (c + 1) * chunk], sharding), flat)
            pending.append(fn(params, part))
        if c >= depth:
            for k, v in parallel.fetch(pending.pop(0)).items():
                pieces.setdefault(k, []).append(v)
    return {k: np.concatenate(v)[:n].reshape(shape + np.shape(v[0])[1:]) for k, v in pieces.items()}


def side_by_side(gt: np.ndarray, render: np.ndarray) -> np.ndarray:
    """uint8 [H, 3W, 3]: ground truth | render | absolute difference."""
    gt = np.clip(gt, 0, 1)
    render = np.clip(render, 0, 1)
    panel = np.concatenate([gt, render, np.abs(gt - render)], axis=1)
    return np.clip(np.rint(panel * 255), 0, 255).astype(np.uint8)


def num_images_of(params, default: int = 1) -> int:
    """The appearance-table size a model was trained with (`default` without GLO: it is unused then)."""
    glo = params.get("glo") if hasattr(params, "get") else None
    if glo is not None and "embedding" in glo:
        return int(glo["embedding"].shape[0])
    return default


def evaluate(cfg: configs.Config, dataset: datasets.Dataset, params, out_dir: str | os.PathLike, *,
             mesh=None, log: Callable[[str], None] | None = None, write_views: bool = True) -> dict:
    """PSNR/SSIM of every view of `dataset` (the held-out split); writes metrics.tsv and views/.

    Returns {'views': [{'name', 'psnr', 'ssim'}], 'psnr': mean, 'ssim': mean, 'seconds': ...}.
    """
    out_dir = Path(out_dir)
    main = jax.process_index() == 0
    log = log or (lambda msg: print(msg, flush=True))
    if not main:
        log = lambda msg: None  # noqa: E731
    if len(dataset) == 0:
        raise ValueError("no held-out views to evaluate (test_every = 0, or too few images)")
    mesh = parallel.make_mesh() if mesh is None else mesh
    model, fn = field_of(cfg, params, mesh, num_images=dataset.num_train_images)
    start = time.perf_counter()
    rows = []
    for name, rays, gt in dataset.iterate_views():
        out = render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh, render_fn=fn)
        rgb = np.clip(out["rgb"], 0.0, 1.0)
        if cfg.eval_quantize:
            rgb = np.asarray(metrics.quantize(rgb))
            gt = np.asarray(metrics.quantize(gt))
        row = {"name": name, "psnr": float(metrics.psnr(rgb, gt)), "ssim": float(metrics.ssim(rgb, gt))}
        rows.append(row)
        log(f"{name}: psnr {row['psnr']:.2f} ssim {row['ssim']:.4f}")
        if write_views and main:
            fileio.write_image(out_dir / "views" / (Path(name).stem + ".png"), side_by_side(gt, rgb))
    mean = {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows]))}
    if main:
        table = [("name", "psnr", "ssim")] + [(r["name"], f"{r['psnr']:.4f}", f"{r['ssim']:.5f}") for r in rows]
        table.append(("mean", f"{mean['psnr']:.4f}", f"{mean['ssim']:.5f}"))
        fileio.write_tsv(out_dir / "metrics.tsv", table)
    seconds = time.perf_counter() - start
    log(f"mean over {len(rows)} views: psnr {mean['psnr']:.2f} ssim {mean['ssim']:.4f} ({seconds:.1f} s)")
    return {"views": rows, **mean, "seconds": seconds}
