"""Localization success rate against the size of the initial pose error, on a Blender scene.

Trains a field (default: the `fast` preset for --train-seconds), then localizes
every held-out test view from its ground-truth pose perturbed by R degrees
about a random axis and moved by T % of the scene radius (the largest camera
distance from the origin, which the Blender sets look at), for each R/T pair
of --perturb, and prints a table: success rate (rotation error < 5 deg and
position error < 5 % of the radius, the issue's criterion), median errors,
the share that `localize` flags as converged, and how often that flag is right.

    python bench/localize_bench.py --data .bench_data/lego400 --train-seconds 60 \
        --perturb 5:5 10:10 20:20 30:30 --out loc.json

Needs only jax/flax/optax/numpy/opencv (no snakemake, pycolmap or mediapy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_bench  # noqa: E402

from nerflib import localize, rigid  # noqa: E402
from nerflib import train as train_lib  # noqa: E402


def train_field(args, train_ds):
    """(cfg, model, params) after --train-seconds of the preset (training clock, first step included)."""
    ns = argparse.Namespace(max_steps=args.max_steps, chunk=0, blender_settings=False, set=args.set)
    run = train_bench.setup(args.preset, args.batch, jax.device_count(), ns, train_ds)
    state, t0, n = run.state, time.perf_counter(), 0
    while time.perf_counter() - t0 < args.train_seconds and n < run.cfg.max_steps:
        for _ in range(25):
            state, stats = run.step(state, run.data, run.key)
        jax.block_until_ready(stats["loss"])
        n += 25
    print(f"trained {args.preset}: {n} steps in {time.perf_counter() - t0:.0f} s, train PSNR {float(stats['psnr']):.2f}",
          flush=True)
    return run.cfg, run.model, state.params, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Blender scene folder (transforms_{train,test}.json)")
    p.add_argument("--preset", default="fast")
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--train-seconds", type=float, default=60)
    p.add_argument("--max-steps", type=int, default=8000)
    p.add_argument("--set", action="append", default=[], help="config override NAME=VALUE")
    p.add_argument("--perturb", nargs="+", default=["5:5", "10:10", "20:20", "30:30"],
                   help="ROT_DEG:TRANS_PERCENT pairs")
    p.add_argument("--queries", type=int, default=0, help="use the first N test views (0 = all)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[],
                   help="NAME;option=value;... : localize.Options overrides compared on the same field and the "
                        "same starts (repeatable; default: one variant with the defaults)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    train_lib.enable_compilation_cache()
    root = Path(args.data)
    train_ds = train_bench.load_blender(root, "train")
    test_ds = train_bench.load_blender(root, "test")
    cfg, model, params, steps = train_field(args, train_ds)
    psnr, ssim = train_bench.held_out_quality(cfg, model, params, test_ds, train_bench.parallel.make_mesh(), 5)
    print(f"field: held-out PSNR {psnr:.2f} dB, SSIM {ssim:.3f} (5 views)", flush=True)
    radius = float(np.linalg.norm(train_ds.c2w[:, :, 3], axis=-1).max())
    n_q = len(test_ds) if args.queries <= 0 else min(args.queries, len(test_ds))
    variants = [("defaults", {})]
    if args.variant:
        variants = []
        for spec in args.variant:
            name, *items = spec.split(";")
            variants.append((name, train_bench.parse_overrides(items)))
    rows = []
    for name, options in variants:
        rng = np.random.default_rng(args.seed)  # the same starts for every variant
        for spec in args.perturb:
            rot, trans_pct = (float(x) for x in spec.split(":"))
            queries, gts = [], []
            for i in range(n_q):
                gt = np.asarray(test_ds.c2w[i], np.float64)
                start = localize.perturb_pose(gt, rng, rot_deg=rot, trans=trans_pct / 100 * radius)
                queries.append((test_ds.names[i], test_ds.image_float(i), test_ds.cameras[i], start))
                gts.append(gt)
            t0 = time.perf_counter()
            kw = {"iters": args.iters, "restarts": args.restarts, "seed": args.seed, **options}
            out = localize.localize(model, params, cfg, queries, near=test_ds.near, far=test_ds.far, factor=1,
                                    progress=False, **kw)
            seconds = time.perf_counter() - t0
            rot_err = np.array([rigid.rotation_error_deg(r["c2w"][:3, :3], g[:3, :3]) for r, g in zip(out, gts)])
            pos_err = np.array([np.linalg.norm(r["c2w"][:3, 3] - g[:3, 3]) / radius * 100 for r, g in zip(out, gts)])
            ok = (rot_err < 5) & (pos_err < 5)
            conv = np.array([bool(r["converged"]) for r in out])
            row = {"variant": name, "options": kw, "rot_deg": rot, "trans_pct": trans_pct, "queries": n_q,
                   "success": float(ok.mean()), "median_rot_err_deg": float(np.median(rot_err)),
                   "median_pos_err_pct": float(np.median(pos_err)), "converged": float(conv.mean()),
                   "flag_right": float((conv == ok).mean()), "seconds": round(seconds, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = train_bench.run_meta(field={"preset": args.preset, "steps": steps, "held_out_psnr": round(psnr, 2),
                                       "held_out_ssim": round(ssim, 4)})
    print(f"\n{meta}")
    print("| variant | start error (rot deg / pos % radius) | queries | success (<5 deg, <5 %) | median rot err (deg) "
          "| median pos err (% radius) | flagged converged | flag right | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['rot_deg']:g} / {r['trans_pct']:g} | {r['queries']} | {100 * r['success']:.0f}% "
              f"| {r['median_rot_err_deg']:.2f} | {r['median_pos_err_pct']:.2f} | {100 * r['converged']:.0f}% "
              f"| {100 * r['flag_right']:.0f}% | {r['seconds']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
