"""Training throughput and time-to-quality of nerflib presets on a Blender or COLMAP scene.

Prints a table (and writes JSON with --out): for each run, steady-state
steps/s and rays/s (after `--warmup` steps, host-synced windows), the first
step's time (XLA compile included, persistent cache as configured), peak GPU
memory, and held-out PSNR at wall-clock marks of training time (evaluation time
excluded from the clock).

    python bench/train_bench.py --data .bench_data/lego400 \
        --run fast:16384:1 --run mipnerf360:16384:1 --seconds 60 --eval-at 60 --eval-views 5

A run is preset:batch[:devices[:seconds[:overrides]]]; devices = how many of the local devices form
the mesh (1..N), so 1- and 2-GPU figures come from one process on one machine; overrides are
this run's own NAME=VALUE settings separated by ';' (after --set's), e.g.
    --run "quality:16384:1:300:model.multisamples=1;max_steps=30000"
Needs only jax/flax/optax/numpy/opencv (no snakemake, pycolmap or mediapy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerflib import configs, datasets, evaluate, metrics, parallel, scene_io  # noqa: E402
from nerflib import train as train_lib  # noqa: E402
from nerflib.layout import SceneLayout  # noqa: E402


def load_blender(root: Path, split: str, *, max_views: int | None = None) -> datasets.Dataset:
    scene = scene_io.read_blender(root / f"transforms_{split}.json")
    ds = datasets.load_dataset(scene, image_dir=scene.image_dir, factor=1, split="all",
                               normalize=None, near=2.0, far=6.0, white_background=True)
    return ds


def load_colmap(root: Path, split: str, *, factor: int = 1, test_every: int = 8) -> datasets.Dataset:
    """A COLMAP project (root/sparse/0, or root/scene.json written from it by nerflib, + root/images or
    root/images_{factor}) as the workflow loads it:
    normalized as configs.for_scene says for the `fast` preset (360 or forward), every 8th view held out."""
    project = SceneLayout(root)  # a COLMAP project has the results layout's shape
    if (root / "scene.json").is_file():  # the model as nerflib's scene.json: no pycolmap needed (GPU machine)
        scene = scene_io.read_scene_json(root / "scene.json")
    else:
        scene = scene_io.read_colmap(project.sparse, image_dir=project.images(1))
    cfg = configs.for_scene(configs.get_preset("fast", factor=factor, test_every=test_every), scene)
    return datasets.load_for_config(cfg, scene, image_dir=project.images(factor), split=split)


def load_scene(root: Path, split: str, *, factor: int = 1) -> datasets.Dataset:
    """Blender (transforms_{split}.json) or COLMAP (sparse/0 or its scene.json) scene folder."""
    if (root / f"transforms_{split}.json").is_file():
        return load_blender(root, split)
    if Path(SceneLayout(root).sparse).is_dir() or (root / "scene.json").is_file():
        return load_colmap(root, split, factor=factor)
    raise SystemExit(f"{root}: neither a Blender scene (transforms_train.json) nor a COLMAP project "
                     "(sparse/0, or its scene.json)")


def peak_memory_gb() -> float | None:
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30
    except Exception:  # noqa: BLE001 - CPU backends have no memory stats
        return None


def held_out_quality(cfg, model, params, test: datasets.Dataset, mesh, n_views: int) -> tuple[float, float]:
    """Mean (PSNR, SSIM) over the first `n_views` test views."""
    fn = evaluate.make_render_fn(model, mesh)
    psnrs, ssims = [], []
    for i, (name, rays, gt) in enumerate(test.iterate_views()):
        if i >= n_views:
            break
        out = evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh, render_fn=fn)
        rgb = np.clip(out["rgb"], 0, 1)
        psnrs.append(float(metrics.psnr(rgb, gt)))
        ssims.append(float(metrics.ssim(rgb, gt)))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def run_meta(**extra) -> dict:
    """Date, device, JAX version, commit ($DNERF_COMMIT, else git; the GPU machine's copy may
    carry a stale .git), host and command line of this run, plus `extra`."""
    commit = os.environ.get("DNERF_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
        except OSError:
            commit = "?"
    return {"date": datetime.date.today().isoformat(), "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(), "processes": jax.process_count(), "jax": jax.__version__,
            "commit": commit or "?",
            "host": platform.node(), "command": " ".join(sys.argv), **extra}


def parse_overrides(items) -> dict:
    """['model.nerf_net_width=128', 'grad_max_norm=0'] -> {name: value} (values as Python literals)."""
    import ast

    out = {}
    for item in items or ():
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[name.strip()] = value.strip()
    return out


def render_speed(cfg, model, params, test: datasets.Dataset, mesh, n_views: int) -> dict:
    """Full-image rendering rays/s over `n_views` held-out views after one untimed (compiling) view."""
    fn = evaluate.make_render_fn(model, mesh)
    views = [rays for _, (_, rays, _) in zip(range(n_views + 1), test.iterate_views())]
    t0 = time.perf_counter()
    evaluate.render_image(model, params, views[0], chunk_size=cfg.render_chunk_size, mesh=mesh, render_fn=fn)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_rays = 0
    for rays in views[1:]:
        evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh, render_fn=fn)
        n_rays += int(np.prod(np.shape(rays.origins)[:-1]))
    dt = time.perf_counter() - t0
    return {"render_first_view_s": round(first, 1), "render_rays_per_s": round(n_rays / dt) if n_rays else 0}


def setup(preset: str, batch: int, n_dev: int, args, train_ds, run_set=()) -> types.SimpleNamespace:
    """Config (the preset adapted to the scene as the workflow does, then --set), model, state, step fn."""
    devices = jax.devices()[:n_dev]
    mesh = parallel.make_mesh(devices)
    overrides = dict(batch_size=batch, max_steps=args.max_steps or configs.get_preset(preset).max_steps)
    if args.chunk:
        overrides["render_chunk_size"] = args.chunk
    if args.blender_settings:  # multinerf's configs/blender_*.gin (configs.for_scene does it for RGBA scenes)
        overrides.update({"model.opaque_background": False, "model.data_loss_type": "mse"})
    overrides.update(parse_overrides(args.set))
    overrides.update(parse_overrides(run_set))
    cfg = configs.override(configs.for_scene(configs.get_preset(preset), train_ds.scene), **overrides)
    model = train_lib.make_model(cfg, train_ds.num_train_images)
    batcher = datasets.RayBatcher(train_ds, batch_size=cfg.batch_size, mesh=mesh,
                                  mode=datasets.choose_mode(train_ds, setting=cfg.image_sharding,
                                                            threshold_mb=cfg.shard_threshold_mb))
    key = jax.random.PRNGKey(0)
    state = train_lib.init_state(cfg, train_ds, key, mesh, model=model)
    step = train_lib.make_train_step(cfg, model, mesh, batcher=batcher)
    return types.SimpleNamespace(cfg=cfg, model=model, mesh=mesh, state=state, step=step, data=batcher.data,
                                 key=parallel.replicate(np.asarray(jax.device_get(key)), mesh))


T_START = time.perf_counter()


def wall(msg: str) -> None:
    """Print msg with the wall-clock seconds since the start (to see where a call's time went)."""
    print(f"  [wall {time.perf_counter() - T_START:6.1f} s] {msg}", flush=True)


def run_one(preset: str, batch: int, n_dev: int, args, train_ds, test_ds, seconds: float, run_set=()) -> dict:
    wall(f"{preset} {' '.join(run_set)}: setting up")
    run = setup(preset, batch, n_dev, args, train_ds, run_set)
    wall("set up; first step (compiles)")
    cfg, model, mesh, state, step, data, key = run.cfg, run.model, run.mesh, run.state, run.step, run.data, run.key
    marks = sorted(float(s) for s in args.eval_at)
    evals = []
    t0 = time.perf_counter()
    state, stats = step(state, data, key)
    jax.block_until_ready(stats["loss"])
    first_step_s = time.perf_counter() - t0
    wall(f"first step done in {first_step_s:.1f} s")
    clock = first_step_s  # training wall-clock, evaluation excluded
    n = 1
    window_start, rates = time.perf_counter(), []
    fits_sum, fits_n = 0.0, 0  # empty-space skipping: the rays in the loss, over the whole run
    while clock < seconds and n < cfg.max_steps:
        for _ in range(args.sync_every):
            state, stats = step(state, data, key)
            if "fits" in stats:
                fits_sum, fits_n = fits_sum + stats["fits"], fits_n + 1  # stays on the device
        jax.block_until_ready(stats["loss"])
        now = time.perf_counter()
        dt = now - window_start
        clock += dt
        n += args.sync_every
        if n > args.warmup:
            rates.append(args.sync_every / dt)
        window_start = now
        while marks and clock >= marks[0]:
            marks.pop(0)
            wall(f"evaluating at {clock:.0f} s of training")
            psnr, ssim = held_out_quality(cfg, model, state.params, test_ds, mesh, args.eval_views)
            evals.append({"train_s": round(clock, 1), "step": n, "psnr": round(psnr, 3), "ssim": round(ssim, 4)})
            print(f"  [{preset} b{batch} x{n_dev}] {clock:.0f}s step {n}: held-out PSNR {psnr:.2f} SSIM {ssim:.3f}",
                  flush=True)
            window_start = time.perf_counter()
    if args.final_eval and (not evals or evals[-1]["step"] != n):
        psnr, ssim = held_out_quality(cfg, model, state.params, test_ds, mesh, args.eval_views)
        evals.append({"train_s": round(clock, 1), "step": n, "psnr": round(psnr, 3), "ssim": round(ssim, 4)})
    steps_s = float(np.median(rates)) if rates else float("nan")
    render = render_speed(cfg, model, state.params, test_ds, mesh, args.render_views) if args.render_views else {}
    return {**render,
        "preset": preset + "".join(f" {o}" for o in run_set), "batch": batch, "devices": n_dev, "steps": n, "train_s": round(clock, 1),
        "first_step_s": round(first_step_s, 1), "steps_per_s": round(steps_s, 2),
        "rays_per_s": round(steps_s * batch) if np.isfinite(steps_s) else 0, "peak_mem_gb": peak_memory_gb(),
        "loss": float(stats["loss"]), "train_psnr": float(stats["psnr"]), "evals": evals,
        # With empty-space skipping and a sample budget, rays that do not fit are left out of the
        # loss: rays_in_loss_mean is their share over the run, trained_rays_per_s counts only those.
        **({"live_samples": round(float(stats["live"]), 4), "rays_in_loss": round(float(stats["fits"]), 4),
            "rays_in_loss_mean": round(float(fits_sum) / max(fits_n, 1), 4),
            "trained_rays_per_s": round(steps_s * batch * float(fits_sum) / max(fits_n, 1))
            if np.isfinite(steps_s) else 0}
           if "live" in stats else {}),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="Blender scene folder (transforms_{train,test}.json) or COLMAP project "
                        "(sparse/0 or scene.json, + images/)")
    p.add_argument("--factor", type=int, default=1, help="COLMAP project: train on images_{factor}/")
    p.add_argument("--run", action="append", required=True,
                   help="preset:batch[:devices[:seconds[:NAME=VALUE;...]]]")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-steps", type=int, default=0, help="schedule length (0 = the preset's)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--sync-every", type=int, default=25)
    p.add_argument("--eval-at", nargs="*", default=[])
    p.add_argument("--eval-views", type=int, default=5)
    p.add_argument("--final-eval", action="store_true")
    p.add_argument("--chunk", type=int, default=0)
    p.add_argument("--blender-settings", action="store_true",
                   help="opaque_background=False and MSE loss, as multinerf's blender configs (white background)")
    p.add_argument("--set", action="append", default=[], help="config override NAME=VALUE (repeatable; model.x too)")
    p.add_argument("--render-views", type=int, default=0, help="time full-image rendering of this many test views")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--distributed", action="store_true",
                   help="one of several processes (jax.distributed from DNERF_COORDINATOR, DNERF_NUM_PROCESSES, "
                        "DNERF_PROCESS_ID, or SLURM): a run's devices count over all processes; no held-out evals")
    args = p.parse_args(argv)
    if args.distributed:
        parallel.initialize_distributed()  # before any other JAX call
        if jax.process_count() > 1:
            args.eval_at, args.final_eval, args.render_views = [], False, 0
        if not parallel.is_main_process():  # the others train in step, silently
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            args.out = None
    train_lib.enable_compilation_cache()
    root = Path(args.data)
    train_ds = load_scene(root, "train", factor=args.factor)
    test_ds = load_scene(root, "test", factor=args.factor)
    print(f"{root}: {len(train_ds.names)} training views, {len(test_ds.names)} held out", flush=True)
    print(f"devices: {jax.devices()} in {jax.process_count()} process(es)  jax {jax.__version__}", flush=True)
    results = []
    for spec in args.run:
        preset, batch, *rest = spec.split(":", 4)
        dev = rest[:1]
        seconds = float(rest[1]) if len(rest) > 1 and rest[1] else args.seconds
        run_set = [o for o in rest[2].split(";") if o.strip()] if len(rest) > 2 else []
        try:
            res = run_one(preset, int(batch), int(dev[0]) if dev else 1, args, train_ds, test_ds, seconds, run_set)
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
            import traceback

            traceback.print_exc()
            res = {"preset": preset, "batch": int(batch), "devices": int(dev[0]) if dev else 1,
                   "error": f"{type(e).__name__}: {e}"[:500]}
        results.append(res)
        print(json.dumps(res), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"results": results}, indent=1))
    meta = run_meta()
    print(f"\n{meta}")
    print("| preset | batch | GPUs | steps/s | rays/s | first step (s) | peak mem (GiB) | steps | held-out PSNR/SSIM @ train s "
          "| render rays/s | first render view (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['preset']} | {r['batch']} | {r['devices']} | failed: {r['error'][:80]} |")
            continue
        ev = ", ".join(f"{e['psnr']:.2f}/{e['ssim']:.3f}@{e['train_s']:.0f}s" for e in r["evals"]) or "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        print(f"| {r['preset']} | {r['batch']} | {r['devices']} | {r['steps_per_s']} | {r['rays_per_s']:,} | "
              f"{r['first_step_s']} | {mem} | {r['steps']} | {ev} | {r.get('render_rays_per_s', 0):,} "
              f"| {r.get('render_first_view_s', '-')} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
