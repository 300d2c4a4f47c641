"""The pipeline steps, each one call: what the Snakemake rules and `nerf` run.

Each function takes plain paths and options, writes its outputs atomically and
raises an error naming the file and the fix when its input is bad. Before it
writes, it deletes the temp files that a killed run (SIGKILL: no handler runs)
left in its output folders (fileio.remove_stale_temps).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nerflib import fileio
from nerflib.layout import SceneLayout


def _remove_stale_temps(folder, *, subfolders: tuple[str, ...] = (), main: bool = True) -> None:
    """Before a step writes into `folder` (and the `subfolders` it owns there): delete the temp files
    that a killed run's atomic writes left there."""
    if not main:
        return  # process 0 writes every file but checkpoints, and cleans up
    for path in fileio.remove_stale_temps(folder, subfolders=subfolders):
        print(f"removed {path}, a temp file of an interrupted run")


def _start_jax_step(folder, *, subfolders: tuple[str, ...] = ()) -> None:
    """What every JAX step does first: join the other processes (jax.distributed, when several),
    remove temps a killed run left in `folder` (main process), and turn on the persistent
    compilation cache so that a rerun does not compile again."""
    import jax

    from nerflib import parallel
    from nerflib.train import enable_compilation_cache

    parallel.initialize_distributed()
    _remove_stale_temps(folder, subfolders=subfolders, main=jax.process_index() == 0)
    enable_compilation_cache()


def synthetic_scene(out_dir, *, views=60, heldout=8, queries=4, width=320, height=240, seed=0) -> dict:
    """The procedural demo scene: photos, held-out views, query photos, ground truth."""
    from nerflib import synthetic

    _remove_stale_temps(out_dir, subfolders=("*", "gt/*"))
    summary = synthetic.generate(out_dir, n_views=views, n_heldout=heldout, n_queries=queries,
                                 width=width, height=height, seed=seed)
    print(f"synthetic scene written to {out_dir}: {summary}")
    return summary


def _link_images(images: Path, scene: SceneLayout) -> None:
    """COLMAP users expect images/ beside sparse/: a symlink to the photos (never a copy)."""
    link = Path(scene.photos_link)
    target = images.resolve()
    if link.is_symlink() or not link.exists():
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                return
            link.unlink()
        link.symlink_to(target, target_is_directory=True)


def poses(images, *, scene_dir, camera_model="OPENCV", matcher="auto", poses="", poses_format="auto",
          single_camera=True, max_image_size=3200, min_registered_fraction=0.5, vocab_tree="",
          sequential_overlap=10, strict=False, mapper="auto", gpu="auto", threads=1) -> dict:
    """Camera poses of the photos in `images`, by SfM or from an existing poses file.

    Writes into scene_dir (nerflib.layout.SceneLayout): sparse/0/ (COLMAP binary), poses/summary.json
    and poses/scene.json (cameras in the COLMAP/world frame; OpenCV axes).
    """
    from nerflib import images as images_mod
    from nerflib import scene_io

    images, layout = Path(images), SceneLayout(scene_dir)
    summary_path = Path(layout.summary_json)
    for folder in (layout.root, layout.poses_dir, layout.sparse):
        _remove_stale_temps(folder)
    start = time.perf_counter()
    if poses:
        scene = scene_io.load_poses_for_photos(poses, poses_format, images)
        images_mod.check_images(images, min_images=3)
        scene_io.write_colmap(scene, layout.sparse)
        summary = {
            "method": "import",
            "poses": str(poses),
            "format": poses_format,
            "registered": len(scene),
            "total": len(images_mod.list_images(images)),
            "seconds": round(time.perf_counter() - start, 3),
        }
        fileio.write_json(summary_path, summary)
    else:
        from nerflib import sfm

        summary = sfm.run_sfm(
            images, scene_dir, camera_model=camera_model, single_camera=single_camera, matcher=matcher,
            vocab_tree=vocab_tree or None, overlap=sequential_overlap, threads=threads,
            max_image_size=max_image_size, min_registered_fraction=min_registered_fraction, strict=strict,
            mapper=mapper, gpu=gpu, summary_path=summary_path,
        )
        scene = scene_io.read_colmap(layout.sparse, image_dir=images)
    scene.image_dir = str(images.resolve())
    scene_io.write_scene_json(scene, layout.scene_json)
    _link_images(images, layout)
    print(f"poses: {len(scene)} cameras written to {scene_dir}")
    return summary


def pyramid(images, out_dir, *, factor, threads=1) -> dict:
    """images_{factor}/: area-downsampled copies of the photos."""
    from nerflib import pyramid as pyramid_mod

    _remove_stale_temps(out_dir)
    result = pyramid_mod.make_pyramid(images, out_dir, factor, threads=max(1, int(threads)))
    print(f"pyramid x{factor}: {len(result['written'])} written, {len(result['skipped'])} up to date")
    return result


def _load_split(cfg, scene_json, images, *, split: str):
    """A split of the scene at cfg.factor, normalized as configs.for_scene says."""
    from nerflib import configs, datasets, scene_io

    scene = scene_io.read_scene_json(scene_json)
    return datasets.load_for_config(configs.for_scene(cfg, scene), scene, image_dir=images, split=split)


def train(scene_json, images, *, model_dir, preset="tiny", factor=None, overrides=None, allow_cpu=False,
          sparse="") -> dict:
    """Train (or resume) the radiance field of a scene; writes model_dir/final.json last.

    Resumes only checkpoints of the same inputs and settings (nerflib.fingerprint); others are
    moved to model_dir/checkpoints.old/ and training starts over. Holds model_dir/.lock while
    it runs, so that two trainings never write one model folder. preset `auto`: picked by the
    backend found here (configs.resolve_preset); a GPU preset on a CPU-only JAX stops with the
    fix unless `allow_cpu` (backend.check_preset). factor None: the preset's; `images` must be
    the folder at that factor. sparse: the scene's COLMAP model (the poses step's sparse/0, in
    scene.json's frame) whose points split a tiled model's space (Config.tiles > 1; without it, or
    for tiles 1, unused: the training cameras' centres split it).
    """
    import jax

    from nerflib import backend, configs, datasets, fingerprint, scene_io
    from nerflib import train as train_mod
    from nerflib.logs import tell

    _start_jax_step(model_dir)
    info = backend.announce("train")
    preset, why = configs.resolve_preset(preset, accelerator=backend.has_accelerator(info))
    if jax.process_index() == 0:
        tell(f"[train] {why}")
    backend.check_preset(preset, allow_cpu=allow_cpu, info=info)
    # The capture's kind adapts the preset first; the user's overrides win over both.
    preset_cfg = configs.get_preset(preset) if factor is None else configs.get_preset(preset, factor=int(factor))
    scene = scene_io.read_scene_json(scene_json)
    base = configs.for_scene(preset_cfg, scene)
    cfg = configs.override(base, **dict(overrides or {}))
    if cfg.tiles > 1:
        from nerflib.tiled.pipeline import scene_with_points

        scene = scene_with_points(scene, sparse)
    dataset = datasets.load_for_config(configs.for_scene(cfg, scene), scene, image_dir=images, split="train")
    with fileio.folder_lock(model_dir, what="training", main=jax.process_index() == 0):
        summary = train_mod.train(cfg, dataset, model_dir, fingerprint=fingerprint.of_training(cfg, dataset))
        if jax.process_index() == 0:
            fileio.write_json(Path(model_dir) / "final.json", {"preset": preset, **summary})
    return summary


def evaluate(scene_json, images, *, model_dir, out_dir) -> dict:
    """PSNR/SSIM of the held-out views: out_dir/metrics.tsv and out_dir/views/."""
    from nerflib import checkpoint, parallel
    from nerflib import evaluate as eval_mod

    _start_jax_step(out_dir, subfolders=("views",))
    mesh = parallel.make_mesh()
    cfg, params, step = checkpoint.restore_params(model_dir, mesh)
    dataset = _load_split(cfg, scene_json, images, split="test")
    result = eval_mod.evaluate(cfg, dataset, params, out_dir, mesh=mesh)
    print(f"evaluated step {step}: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}")
    return result


def render(scene_json, images, *, model_dir, out_dir, path="auto", keyframes=(), n_frames=480, fps=60,
           factor=None) -> dict:
    """Videos along a camera path: out_dir/{color,depth,acc}.mp4 and path.json (frames/ kept for resuming)."""
    from nerflib import backend, video

    _start_jax_step(out_dir, subfolders=("frames", "frames/*"))
    backend.announce("render")
    return video.render_path(model_dir, scene_json, out_dir, images=images, path=path, keyframes=list(keyframes),
                             n_frames=int(n_frames), fps=fps, factor=factor)


def localize(scene_json, images, *, model_dir, queries, out_dir, query_poses="", gt_poses="", gt_reference="",
             sparse_dir="", database="", write_errors=True, options=None, **settings) -> dict:
    """Poses of the photos in `queries` against the trained field: out_dir/poses.json, views/ (and errors.tsv).

    settings: localize.workflow_settings() (start, perturb_rot_deg, perturb_radius_fraction,
    iters, restarts, n_pixels, n_eval; each defaults to its declaration), `options` any other
    nerflib.localize.Options field. With gt_poses (and write_errors) also errors.tsv;
    start='perturbed' is the evaluation mode that starts from the ground truth moved by
    perturb_rot_deg / perturb_radius_fraction (nerflib.localize.step).
    """
    from nerflib import images as images_mod
    from nerflib import localize as localize_mod

    images_mod.check_images(queries, min_images=1)  # a truncated photo or a decompression bomb fails here, named
    _start_jax_step(out_dir, subfolders=("views",))
    return localize_mod.localize_step(
        model_dir, scene_json, queries, out_dir, images=images, query_poses=query_poses or None,
        gt_poses=gt_poses or None, gt_reference=gt_reference or None, sparse_dir=sparse_dir or None,
        database=database or None, write_errors=write_errors, progress=False,
        **localize_mod.step_settings(settings, options))


def localize_errors(poses_json, scene_json, *, model_dir, out, gt_poses, gt_reference="") -> dict:
    """errors.tsv of a finished localization (poses.json) against ground-truth poses."""
    from nerflib import localize as localize_mod

    return localize_mod.localize_errors(poses_json, scene_json, model_dir, gt_poses, out,
                                         gt_reference=gt_reference or None)


def report_figures(scene_json, *, model_dir, out_dir, summary_json="", sparse_dir="") -> dict:
    """The report's per-scene figures: out_dir/cameras.png, training.png and settings.tsv.

    sparse_dir: a COLMAP model whose points cameras.png draws ('' = none).
    """
    import json

    from nerflib import figures, fingerprint, scene_io

    out_dir, model_dir = Path(out_dir), Path(model_dir)
    _remove_stale_temps(out_dir)
    summary = json.loads(Path(summary_json).read_text()) if summary_json else None
    sparse = Path(sparse_dir) if sparse_dir else None
    scene = scene_io.read_scene_json(scene_json)
    if sparse is not None and sparse.is_dir():  # the sparse points, when SfM (or an imported model) left some
        try:
            scene.points = scene_io.read_colmap(sparse, check_images=False).points
        except Exception as e:  # noqa: BLE001 - the figure is still useful without points
            print(f"report: sparse points not read from {sparse} ({type(e).__name__}: {e})")
    figures.camera_figure(scene, out_dir / "cameras.png", summary=summary)
    figures.training_figure(model_dir / "train.tsv", out_dir / "training.png")
    settings = json.loads((model_dir / "config.json").read_text())
    final = json.loads((model_dir / "final.json").read_text()) if (model_dir / "final.json").is_file() else {}
    trained = fingerprint.read(model_dir)
    if trained is not None:  # what these settings were trained on, and why training started over if it did
        settings["trained_from"] = {"fingerprint": fingerprint.digest(trained), "images": len(trained["images"]),
                                    "start_step": final.get("start_step"), "final_step": final.get("final_step"),
                                    "fresh_start": "; ".join(final.get("fresh_start", [])) or "no"}
    figures.settings_table(settings, out_dir / "settings.tsv")
    return {"out_dir": str(out_dir)}


def report_overview(out_html, *, scene, metrics_tsv, videos=None, figures=None) -> dict:
    """The scene's overview page of the report (nerflib.report_page.write_overview)."""
    from nerflib import report_page

    _remove_stale_temps(Path(out_html).parent)  # a killed run's temp page (issue #11)
    return report_page.write_overview(out_html, scene=scene, metrics_tsv=metrics_tsv, videos=videos, figures=figures)


def export(scene_json, *, out_dir, what=("ply", "transforms", "colmap"), model_dir=None, images=None,
           sparse_dir=None, options=None) -> dict:
    """Exports for other tools in out_dir: points.ply (needs the model), transforms.json, colmap/ (nerflib.export)."""
    from nerflib import export as export_mod

    what = [what] if isinstance(what, str) else list(what)
    if "ply" in what:
        _start_jax_step(out_dir)
    else:
        _remove_stale_temps(out_dir)  # colmap/ cleans up after itself (export.colmap_text)
    return export_mod.export(out_dir, scene_json=scene_json, what=what, model_dir=model_dir, images=images,
                             sparse_dir=sparse_dir or None, options=options)
