"""Micro-benchmark of nerflib.hashgrid.encode: forward and forward+backward.

    python bench/hashgrid_bench.py                      # default sizes, all variants
    python bench/hashgrid_bench.py --n-points 1048576 --variants stacked,stacked_dx

Times on whatever device JAX picks (set JAX_PLATFORMS=cpu to force the CPU) and
prints one table row per (variant, n_points): median milliseconds of the
forward pass and of forward+backward, and million point-encodings per second
of forward+backward. Each timed call takes one of 3 input sets in turn so that
the random gathers do not run from a warm cache of one set.

Variants (all compute the same features; the last two exist for comparison):
  stacked        `encode` (levels stacked, 8 fused per-corner gathers, custom VJP),
                 d/dtables only (the training case)
  stacked_dx     the same, with d/dx too (pose refinement, `localize`)
  stacked_bf16   `encode(..., dtype=bfloat16)`, d/dtables
  autodiff       stacked levels, but one [N, L, 8]-indexed gather and a reduce over
                 corners, differentiated by plain JAX autodiff
  per_level      a Python loop over levels, one gather per level (camp_zipnerf-style)

Measured on one H100 80GB HBM3, jax 0.11.2, L = 16, T = 2^19, F = 2 (ms):
  variant       n_points   fwd   fwd+bwd   M pts/s
  stacked        4194304  5.17    15.93     263
  stacked_dx     4194304  5.24    33.82     124
  stacked_bf16   4194304  4.82    16.22     259
  autodiff       4194304  6.18    16.67     252
  per_level      4194304 20.70    29.17     144
  stacked        1048576  1.47     4.30     244
  stacked         262144  0.51     1.15     229
The backward's scatter-add (atomics, ~0.65 ms per level at 4M points) is about
two thirds of forward+backward.

--scatter-only times that scatter alone (the table gradient from given points and
cotangents), for all levels together and level by level, as XLA emits it and as
bench/pallas_scatter.py's fused Pallas kernel does it (float32 at several block
sizes, and float16 accumulation with a x1024 scale), with corner updates per
second (points x levels x 8 corners / time) and the largest difference from XLA's
gradient. bench/RESULTS.md, call 17, has the H100 table: neither kernel is faster.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nerflib import hashgrid  # noqa: E402

import pallas_scatter  # noqa: E402  (bench/, beside this file)

VARIANTS = ("stacked", "stacked_dx", "stacked_bf16", "autodiff", "per_level")


def _autodiff_encode(x, tables, resolutions, table_size):
    """Stacked levels, one [N, L, 8]-indexed gather + reduce, JAX's own derivative."""
    num_levels, _, f = tables.shape
    cell, frac, _ = hashgrid._cells(x, resolutions)
    ijk = cell[:, :, None, :] + jnp.asarray(hashgrid.CORNER_OFFSETS, jnp.uint32)
    rows = hashgrid._level_rows(ijk, resolutions, table_size)
    w = hashgrid._corner_weights(frac)
    vals = hashgrid._gather(tables.reshape(num_levels * table_size, f), rows)  # [N, L, 8, F]
    return jnp.sum(w[..., None] * vals, axis=-2).reshape(len(x), -1)


def _per_level_encode(x, tables, resolutions, table_size):
    """One gather per level from tables[l], autodiff (the simple baseline)."""
    out = []
    off = jnp.asarray(hashgrid.CORNER_OFFSETS)
    for lvl, n in enumerate(resolutions):
        pos = jnp.clip(x, 0.0, 1.0) * n
        cell = jnp.minimum(jnp.floor(pos), n - 1)
        frac = pos - cell
        ijk = cell.astype(jnp.int32)[:, None, :] + off  # [N, 8, 3]
        rows = hashgrid.hash_indices(ijk, table_size=table_size, level_res=int(n))
        vals = tables[lvl].at[rows].get(mode="promise_in_bounds")  # [N, 8, F]
        w = jnp.prod(jnp.where(off.astype(bool), frac[:, None], 1.0 - frac[:, None]), -1)
        out.append(jnp.sum(w[..., None] * vals, axis=1))
    return jnp.concatenate(out, axis=-1)


def _make_fns(variant, resolutions, table_size):
    res = tuple(int(r) for r in resolutions)
    if variant in ("stacked", "stacked_dx"):
        enc = lambda x, t: hashgrid.encode(x, t, resolutions=res, table_size=table_size)
    elif variant == "stacked_bf16":
        enc = lambda x, t: hashgrid.encode(
            x, t, resolutions=res, table_size=table_size, dtype=jnp.bfloat16
        )
    elif variant == "autodiff":
        enc = lambda x, t: _autodiff_encode(x, t, res, table_size)
    elif variant == "per_level":
        enc = lambda x, t: _per_level_encode(x, t, res, table_size)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")

    def loss(x, t, cot):
        return jnp.sum(enc(x, t).astype(jnp.float32) * cot)

    argnums = (0, 1) if variant == "stacked_dx" else 1
    fwd = jax.jit(lambda x, t: enc(x, t))
    # value_and_grad: the loss value keeps the forward gather alive, as a network
    # on top of the features does in training (the table gradient alone would not
    # need the forward values: d/dtables is linear in the cotangent).
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=argnums))
    return fwd, fwd_bwd


def _median_ms(fn, arg_sets, repeats):
    jax.block_until_ready(fn(*arg_sets[0]))  # compile + warm up
    jax.block_until_ready(fn(*arg_sets[1]))
    times = []
    for r in range(repeats):
        args = arg_sets[r % len(arg_sets)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def bench_encode(
    n_points,
    *,
    num_levels=16,
    features_per_level=2,
    log2_table_size=19,
    base_resolution=16,
    max_resolution=2048,
    variants=VARIANTS,
    repeats=20,
    seed=0,
):
    """Time forward and forward+backward of each variant at n_points; returns table rows (dicts)."""
    res = hashgrid.level_resolutions(
        num_levels=num_levels, base_resolution=base_resolution, max_resolution=max_resolution
    )
    t = 2**log2_table_size
    key = jax.random.PRNGKey(seed)
    tables = jax.random.uniform(key, (num_levels, t, features_per_level), jnp.float32, -1.0, 1.0)
    sets = []
    for i in range(3):
        kx, kc = jax.random.split(jax.random.fold_in(key, i + 1))
        x = jax.random.uniform(kx, (n_points, 3))
        cot = jax.random.normal(kc, (n_points, num_levels * features_per_level))
        sets.append((x, tables, cot))
    rows = []
    for variant in variants:
        fwd, fwd_bwd = _make_fns(variant, res, t)
        ms_fwd = _median_ms(fwd, [s[:2] for s in sets], repeats)
        ms_all = _median_ms(fwd_bwd, sets, repeats)
        rows.append(
            dict(
                variant=variant,
                n_points=n_points,
                fwd_ms=ms_fwd,
                fwd_bwd_ms=ms_all,
                mpts_per_s=n_points / ms_all / 1e3,
            )
        )
    return rows


def check_variants_agree(n_points=4096, log2_table_size=19):
    """All variants give the same features and table gradients (max abs difference)."""
    res = hashgrid.level_resolutions(num_levels=16, base_resolution=16, max_resolution=2048)
    t = 2**log2_table_size
    key = jax.random.PRNGKey(1)
    tables = jax.random.uniform(key, (16, t, 2), jnp.float32, -1.0, 1.0)
    x = jax.random.uniform(jax.random.fold_in(key, 1), (n_points, 3))
    cot = jax.random.normal(jax.random.fold_in(key, 2), (n_points, 32))
    ref_f, ref_g = None, None
    worst = 0.0
    for variant in ("stacked", "autodiff", "per_level"):
        fwd, fwd_bwd = _make_fns(variant, res, t)
        f, (_, g) = fwd(x, tables), fwd_bwd(x, tables, cot)
        if ref_f is None:
            ref_f, ref_g = f, g
        worst = max(worst, float(jnp.abs(f - ref_f).max()), float(jnp.abs(g - ref_g).max()))
    return worst


def bench_scatter(n_points, *, levels="all", log2_table_size=19, blocks=(64, 128, 256), repeats=30):
    """Time the table-gradient scatter alone: XLA against the Pallas kernel; table rows (dicts)."""
    full = tuple(int(r) for r in hashgrid.level_resolutions(num_levels=16, base_resolution=16, max_resolution=2048))
    t = 2**log2_table_size
    dense = hashgrid._max_dense_stride(t)
    key = jax.random.PRNGKey(0)
    x = jax.random.uniform(key, (n_points, 3))
    cases = [("all 16 levels", full)] + [
        (f"level {i} (n={r})", (r,)) for i, r in enumerate(full) if levels == "each" or i in (0, 8, 15)
    ]
    rows = []
    for name, res in cases:
        g = jax.random.normal(jax.random.fold_in(key, 1), (n_points, len(res), 2))

        def xla(x, g, res=res):
            cell, frac, _ = hashgrid._cells(x, res)
            corners = cell[:, :, None, :] + jnp.asarray(hashgrid.CORNER_OFFSETS, jnp.uint32)
            rows_ = hashgrid._level_rows(corners, res, t)
            w = hashgrid._corner_weights(frac)
            upd = w[..., None] * g[:, :, None, :]
            return jnp.zeros((len(res) * t, 2)).at[rows_].add(upd, mode="promise_in_bounds")

        def pallas(x, g, res=res, block=None, acc=jnp.float32, scale=1.0):
            d = pallas_scatter.table_gradient(x, g * scale, resolutions=res, table_size=t, max_dense_stride=dense,
                                              block=block, accumulate=acc)
            return d.astype(jnp.float32) / scale

        fns = {"xla": jax.jit(xla)}
        fns |= {f"pallas f32 block {b}": jax.jit(functools.partial(pallas, block=b)) for b in blocks}
        fns["pallas f16 (x1024) block 128"] = jax.jit(
            functools.partial(pallas, block=128, acc=jnp.float16, scale=1024.0))
        ref = fns["xla"](x, g)
        for label, fn in fns.items():
            ms = _median_ms(fn, [(x, g)] * 2, repeats)
            diff = float(jnp.abs(fn(x, g) - ref).max())
            rows.append(dict(case=name, scatter=label, n_points=n_points, ms=ms,
                             g_updates_per_s=n_points * len(res) * 8 / ms / 1e6, max_diff=diff))
    return rows


def dump_hlo(out_dir, variants, n_points, log2_table_size):
    """Optimized HLO of forward+backward per variant, and a count of its fusions."""
    os.makedirs(out_dir, exist_ok=True)
    res = hashgrid.level_resolutions(num_levels=16, base_resolution=16, max_resolution=2048)
    t = 2**log2_table_size
    x = jax.ShapeDtypeStruct((n_points, 3), jnp.float32)
    tables = jax.ShapeDtypeStruct((16, t, 2), jnp.float32)
    cot = jax.ShapeDtypeStruct((n_points, 32), jnp.float32)
    for variant in variants:
        _, fwd_bwd = _make_fns(variant, res, t)
        text = fwd_bwd.lower(x, tables, cot).compile().as_text()
        with open(os.path.join(out_dir, f"{variant}.hlo.txt"), "w") as f:
            f.write(text)
        kernels = sum(1 for ln in text.splitlines() if " fusion(" in ln or "custom-call(" in ln)
        print(f"{variant}: ~{kernels} fusions/custom calls in forward+backward")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-points", type=int, nargs="+", default=[2**16, 2**18, 2**20, 2**22])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--num-levels", type=int, default=16)
    p.add_argument("--features-per-level", type=int, default=2)
    p.add_argument("--log2-table-size", type=int, default=19)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dump-hlo", metavar="DIR", help="write optimized HLO of each variant here")
    p.add_argument("--scatter-only", action="store_true",
                   help="time the table-gradient scatter alone, XLA vs the Pallas kernel (GPU)")
    p.add_argument("--levels", choices=["all", "each"], default="all",
                   help="--scatter-only: levels 0, 8, 15 alone ('all') or every level alone ('each')")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    if args.scatter_only:
        print("| case | scatter | points | ms | G corner updates/s | max abs diff from XLA |")
        print("|---|---|---|---|---|---|")
        for n in args.n_points:
            for r in bench_scatter(n, levels=args.levels, log2_table_size=args.log2_table_size,
                                   repeats=args.repeats):
                print(f"| {r['case']} | {r['scatter']} | {r['n_points']} | {r['ms']:.3f} | "
                      f"{r['g_updates_per_s']:.1f} | {r['max_diff']:.1e} |", flush=True)
        return
    if args.dump_hlo:
        dump_hlo(args.dump_hlo, args.variants.split(","), args.n_points[0], args.log2_table_size)
    print(f"variants agree to {check_variants_agree():.2e} (max abs, features and d/dtables)")
    header = f"{'variant':<14}{'n_points':>10}{'fwd ms':>10}{'fwd+bwd ms':>12}{'M pts/s':>10}"
    print(header)
    print("-" * len(header))
    for n in args.n_points:
        for row in bench_encode(
            n,
            num_levels=args.num_levels,
            features_per_level=args.features_per_level,
            log2_table_size=args.log2_table_size,
            variants=args.variants.split(","),
            repeats=args.repeats,
        ):
            print(
                f"{row['variant']:<14}{row['n_points']:>10}{row['fwd_ms']:>10.3f}"
                f"{row['fwd_bwd_ms']:>12.3f}{row['mpts_per_s']:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
