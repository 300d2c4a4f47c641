"""Where the training step's time goes, by ablation: steady steps/s of a preset with one part changed.

A profile without a profiler viewer (the GPU machine has none): each row
trains the preset for --seconds with one override set and reports its
steady-state step time; the difference to the baseline is what that part
costs. Prints a table.

    python bench/ablate.py --data .bench_data/lego400 --preset fast --seconds 12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

HASH = "(('num_levels', {L}), ('features_per_level', 2), ('log2_table_size', {T}), ('base_resolution', 16), " \
       "('max_resolution', 2048))"
VARIANTS = {
    "baseline": [],
    "half the samples (32+32+16)": ["model.num_prop_samples=(32, 32)", "model.num_nerf_samples=16"],
    "one proposal round (64+32)": ["model.num_prop_samples=(64,)", "model.num_levels=2"],
    "hash grid: 8 levels, not 16": ["model.hashgrid_options=" + HASH.format(L=8, T=19)],
    "hash grid: 2^15 table, not 2^19": ["model.hashgrid_options=" + HASH.format(L=16, T=15)],
    "no distortion loss": ["model.distortion_loss_mult=0.0"],
    "no view-direction MLP layers": ["model.net_depth_viewdirs=0"],
    "NeRF MLP width 512 (mipnerf360: 1024)": ["model.nerf_net_width=512"],
    "NeRF MLP depth 4 (mipnerf360: 8)": ["model.nerf_net_depth=4"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="fast")
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = p.parse_args(argv)
    train_bench.train_lib.enable_compilation_cache()
    train_ds = train_bench.load_blender(Path(args.data), "train")
    rows = []
    for name, sets in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        ns = argparse.Namespace(max_steps=25000, chunk=0, blender_settings=False, set=sets, eval_at=[],
                                warmup=50, sync_every=25, eval_views=0, final_eval=False, render_views=0)
        try:
            r = train_bench.run_one(args.preset, args.batch, 1, ns, train_ds, None, args.seconds)
            rows.append((name, r["steps_per_s"], r["peak_mem_gb"]))
        except Exception as e:  # noqa: BLE001 - one failed variant must not lose the others
            rows.append((name, float("nan"), None))
            print(f"{name}: {type(e).__name__}: {e}", flush=True)
        print(rows[-1], flush=True)
    base = rows[0][1] if rows and rows[0][0] == "baseline" else float("nan")
    print(f"\n{args.preset}, batch {args.batch}, {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| variant | steps/s | step (ms) | vs baseline (ms) | rays/s | peak mem (GiB) |")
    print("|---|---|---|---|---|---|")
    for name, sps, mem in rows:
        ms = 1000 / sps if sps == sps and sps > 0 else float("nan")
        delta = ms - 1000 / base if base == base and base > 0 else float("nan")
        mem_s = f"{mem:.1f}" if mem is not None else "-"
        print(f"| {name} | {sps:.1f} | {ms:.2f} | {delta:+.2f} | {sps * args.batch:,.0f} | {mem_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
