"""Tiled field (issue #26) on the procedural city: quality against K tiles at a fixed per-tile table.

    python bench/tiles_bench.py --out /tmp/tiles_bench             # one GPU: K = 1, 2, 4, 8, all tiles on it
    python bench/tiles_bench.py --out /tmp/tiles_bench --smoke     # CPU, tiny sizes, end to end (~2 min)
    python bench/tiles_bench.py --scaling --out /tmp/tiles_scaling # several GPUs: tiles over devices

Quality mode. Writes the city (nerflib.synthetic_city, views rendered by all CPU cores)
under --out unless it is there, scales the world so the blocks span [-1, 1]^2, splits
it into K tiles by median splits of the training cameras' centres, and for each K trains
a TiledModel (nerflib.tiled) for --seconds wall-clock seconds, in its own process (so
that peak memory is per K): Adam, lr 1e-2 -> 1e-3 over the time budget, --batch random
rays of all training images per step. Reports per K: held-out PSNR (all --heldout views,
full images), steps/s and rays/s, parameter + Adam bytes per tile, the device's peak
memory, and the exchange a `data x tile` mesh would need (bytes per ray and tile per
step, nerflib.tiled.exchange_bytes), with a projection of the efficiency of K tiles on K
GPUs, one tile each: compute per step ~ (this K's step time) / K (the tiles run one after
another here); the exchange of a step, R rays x (K - 1) tiles x bytes, over the link's
bandwidth, plus a latency per collective; efficiency = compute / (compute + exchange),
without overlap (an upper bound on the cost).

Scaling mode (--scaling; needs several devices, or XLA_FLAGS=--xla_force_host_platform_device_count
on CPU): meshes 1 x T for T = 1, 2, 4, ... up to the devices there, K = T * --tiles-per-device
(weak scaling: each device holds the same tiles' worth of parameters), on the same scene;
reports step time, rays/s, the per-device peak memory and the per-device parameter bytes.
Results go to --out/results.json (and stdout, one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Links for the projection: (name, bytes/s per GPU for an all-gather, seconds of latency per collective).
LINKS = (("NVLink 4 (H100 SXM, 8 GPUs)", 350e9, 15e-6), ("400 Gb/s InfiniBand per GPU", 45e9, 30e-6),
         ("100 Gb/s Ethernet per GPU", 11e9, 60e-6))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the results (and the city, without --data)")
    ap.add_argument("--data", default=None, help="folder for the city (default OUT/city)")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="tile counts (powers of two)")
    ap.add_argument("--seconds", type=float, default=40.0, help="training time per K")
    ap.add_argument("--batch", type=int, default=8192, help="rays per step")
    ap.add_argument("--log2-table", type=int, default=16, help="hash table rows per level, per tile (log2)")
    ap.add_argument("--levels", type=int, default=16, help="hash-grid levels")
    ap.add_argument("--max-res", type=int, default=1024, help="finest hash level's resolution over a tile's box")
    ap.add_argument("--blocks", type=int, default=4, help="city blocks along each side")
    ap.add_argument("--views", type=int, nargs=2, default=[150, 50], metavar=("STREET", "AERIAL"))
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[200, 150], metavar=("W", "H"))
    ap.add_argument("--smoke", action="store_true", help="tiny everything, for a CPU check of the whole path")
    ap.add_argument("--scaling", action="store_true", help="multi-device scaling run (see the docstring)")
    ap.add_argument("--tiles-per-device", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per mesh (--scaling)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: train one K, print JSON
    a = ap.parse_args(argv)
    if a.smoke:
        a.k = [k for k in a.k if k <= 2] or [1, 2]
        a.seconds, a.batch, a.log2_table, a.levels, a.max_res = min(a.seconds, 6.0), 256, 10, 4, 64
        a.blocks, a.views, a.heldout, a.size, a.steps = 1, [6, 2], 1, [32, 24], 2
    return a


# --------------------------------------------------------------------------- data


def city_dir(a) -> Path:
    return Path(a.data) if a.data else Path(a.out) / "city"


def make_data(a) -> Path:
    from nerflib import synthetic_city

    out = city_dir(a)
    if not (out / "gt" / "meta.json").is_file():
        summary = synthetic_city.generate(out, blocks=a.blocks, n_street=a.views[0], n_aerial=a.views[1],
                                          n_heldout=a.heldout, width=a.size[0], height=a.size[1],
                                          supersample=1 if a.smoke else 2, workers=os.cpu_count() or 1)
        print(json.dumps({"city": summary}), flush=True)
    return out


def load(city: Path):
    """(train rays, train rgb, held-out views [(rays, rgb)], camera centres, scale), world scaled to [-1, 1]^2."""
    import dataclasses

    import numpy as np

    from nerflib import datasets, scene_io

    meta = json.loads((city / "gt" / "meta.json").read_text())
    s = 1.0 / meta["half_extent"]

    def scaled(path):
        scene = scene_io.read_scene_json(path)
        c2w = scene.c2w.copy()
        c2w[:, :, 3] *= s
        return dataclasses.replace(scene, c2w=c2w, near=scene.near * s, far=scene.far * s)

    train = datasets.load_dataset(scaled(city / "gt" / "scene.json"), split="all", normalize=None)
    held = datasets.load_dataset(scaled(city / "gt" / "heldout.json"), split="all", normalize=None)

    def flat(ds):
        rays = [ds.rays(i) for i in range(len(ds))]
        cat = {f: np.concatenate([getattr(r, f).reshape(-1, getattr(r, f).shape[-1]) for r in rays])
               for f in ("origins", "directions", "viewdirs", "radii", "near", "far", "cam_idx")}
        rgb = np.concatenate([ds.image_float(i).reshape(-1, 3) for i in range(len(ds))])
        return cat, rgb

    views = [({f: getattr(r, f).reshape(-1, getattr(r, f).shape[-1]) for f in
               ("origins", "directions", "viewdirs", "radii", "near", "far", "cam_idx")},
              held.image_float(i).reshape(-1, 3)) for i, r in enumerate(held.rays(j) for j in range(len(held)))]
    rays, rgb = flat(train)
    return rays, rgb, views, train.c2w[:, :, 3]


def model_for(a, k: int, centres):
    from nerflib import models, tiled

    hashgrid = (("num_levels", a.levels), ("features_per_level", 2), ("log2_table_size", a.log2_table),
                ("base_resolution", 16), ("max_resolution", a.max_res))
    prop = (("num_levels", 5), ("features_per_level", 2), ("log2_table_size", min(a.log2_table, 14)),
            ("base_resolution", 16), ("max_resolution", 128))
    cfg = models.model_mipnerf360(field="hashgrid", num_prop_samples=(48,), num_nerf_samples=24, num_levels=2,
                                  prop_net_depth=1, prop_net_width=32, nerf_net_depth=1, nerf_net_width=64,
                                  bottleneck_width=15, net_depth_viewdirs=2, net_width_viewdirs=64, skip_layer=0,
                                  hashgrid_options=hashgrid, prop_hashgrid_options=prop, opaque_background=False,
                                  background="white", near=0.01, far=10.0,
                                  dilate_on_grid=True)  # configs.fast's sampler (no sorts: faster on GPU)
    return tiled.TiledModel(cfg, tiled.layout_from_points(centres, k))


def _rays(d):
    import jax.numpy as jnp

    from nerflib.types import Rays

    return Rays(**{f: jnp.asarray(v) for f, v in d.items()})


# --------------------------------------------------------------------------- one K (own process)


def train_one(a, k: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from nerflib import math as nmath
    from nerflib import tiled

    rays_np, rgb_np, views, centres = load(city_dir(a))
    model = model_for(a, k, centres)
    lr_init, lr_final = 1e-2, 1e-3
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr_init, b1=0.9, b2=0.99, eps=1e-15)
    step = tiled.make_train_step(model, opt, None, donate=False)
    rays, rgb = _rays(rays_np), jnp.asarray(rgb_np)
    n = rgb.shape[0]

    @jax.jit
    def train_step(state, key, frac, rays, rgb):  # all rays as arguments (never baked into the program)
        lr = lr_init * (lr_final / lr_init) ** frac
        state = state.replace(opt_state=state.opt_state._replace(
            hyperparams={**state.opt_state.hyperparams, "learning_rate": lr}))
        idx = jax.random.randint(jax.random.fold_in(key, 1), (a.batch,), 0, n)
        return step(state, jax.tree.map(lambda x: x[idx], rays), rgb[idx], key, frac)

    state = tiled.init_state(model, opt, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    state, stats = train_step(state, jax.random.fold_in(key, 0), 0.0, rays, rgb)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    steps, t0 = 1, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < a.seconds:
        state, stats = train_step(state, jax.random.fold_in(key, steps), min(1.0, elapsed / a.seconds), rays, rgb)
        steps += 1
        if steps % 50 == 0:
            jax.block_until_ready(stats)
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0

    render = jax.jit(lambda p, r: model.render(p, r)[0]["rgb"])
    chunk = 4096 if a.smoke else 16384
    mses = []
    for vr, vrgb in views:
        m = len(vrgb)
        pad = (-m) % chunk
        out = []
        for i in range(0, m + pad, chunk):
            sl = {f: np.concatenate([v, np.repeat(v[-1:], pad, 0)])[i:i + chunk] for f, v in vr.items()}
            out.append(np.asarray(render(state.params, _rays(sl))))
        pred = np.concatenate(out)[:m]
        mses.append(float(np.mean((pred - vrgb) ** 2)))
    psnr = float(np.mean([nmath.psnr_from_mse(m) for m in mses]))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    stats_mem = jax.devices()[0].memory_stats() or {}
    ex = tiled.exchange_bytes(model)
    return {"k": k, "psnr_heldout": round(psnr, 3), "train_psnr_last": round(float(stats["psnr"]), 3),
            "steps": steps, "train_s": round(train_s, 2), "compile_s": round(compile_s, 2),
            "steps_per_s": round(steps / train_s, 2), "rays_per_s": round(steps * a.batch / train_s),
            "param_bytes_per_tile": 4 * n_params // k, "param_adam_bytes_per_tile": 12 * n_params // k,
            "peak_bytes": stats_mem.get("peak_bytes_in_use"),
            "peak_bytes_per_tile": None if "peak_bytes_in_use" not in stats_mem else stats_mem["peak_bytes_in_use"] // k,
            "exchange_bytes_per_ray_tile_step": ex["step"],
            "collectives_per_step": ex["collectives"], "device": str(jax.devices()[0].device_kind)}


def projection(rows: list[dict], batch: int) -> list[dict]:
    """Projected efficiency of K tiles on K GPUs (one tile each) over each link, from the K rows."""
    out = []
    for r in rows:
        k = r["k"]
        if k < 2:
            continue
        compute = 1.0 / r["steps_per_s"] / k  # one tile's share of this K's step
        volume = batch * (k - 1) * r["exchange_bytes_per_ray_tile_step"]  # received per GPU per step
        for name, bw, lat in LINKS:
            comm = volume / bw + r["collectives_per_step"] * lat
            out.append({"k": k, "gpus": k, "link": name, "exchange_bytes_per_gpu_step": volume,
                        "compute_ms": round(1e3 * compute, 3), "exchange_ms": round(1e3 * comm, 3),
                        "efficiency": round(compute / (compute + comm), 3)})
    return out


# --------------------------------------------------------------------------- scaling (several devices)


def scaling(a) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from nerflib import tiled

    rays_np, rgb_np, _, centres = load(city_dir(a))
    n_dev = jax.device_count()
    rows = []
    t = 1
    while t <= n_dev:
        k = t * a.tiles_per_device
        model = model_for(a, k, centres)
        opt = tiled.make_optimizer(max_steps=10_000)
        mesh = tiled.make_mesh(1, t)
        step = tiled.make_train_step(model, opt, mesh)
        state = tiled.init_state(model, opt, jax.random.PRNGKey(0), mesh)
        idx = np.random.default_rng(0).integers(0, len(rgb_np), a.batch)
        shard = NamedSharding(mesh, P("data"))
        rays = jax.device_put(_rays({f: v[idx] for f, v in rays_np.items()}), shard)
        rgb = jax.device_put(jnp.asarray(rgb_np[idx]), shard)
        key = jax.random.PRNGKey(1)
        state, _ = step(state, rays, rgb, key, 0.5)  # compile
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            state, _ = step(state, rays, rgb, key, 0.5)
        jax.block_until_ready(state)
        dt = (time.perf_counter() - t0) / a.steps
        per_dev = [d.memory_stats() or {} for d in mesh.devices.ravel()]
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        row = {"mesh": f"1x{t}", "k": k, "step_ms": round(1e3 * dt, 3), "rays_per_s": round(a.batch / dt),
               "param_bytes_per_device": 4 * n_params // t,
               "peak_bytes_per_device": [m.get("peak_bytes_in_use") for m in per_dev],
               "exchange_bytes_per_ray_tile_step": tiled.exchange_bytes(model)["step"],
               "device": str(jax.devices()[0].device_kind)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        t *= 2
    return rows


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    a = parse(argv)
    if a.one:
        print("RESULT " + json.dumps(train_one(a, a.one)), flush=True)
        return 0
    Path(a.out).mkdir(parents=True, exist_ok=True)
    make_data(a)
    if a.scaling:
        rows = scaling(a)
        (Path(a.out) / "results.json").write_text(json.dumps({"scaling": rows}, indent=1))
        return 0
    rows = []
    for k in a.k:
        argv_k = [arg for arg in (argv if argv is not None else sys.argv[1:])] + ["--one", str(k)]
        proc = subprocess.run([sys.executable, __file__, *argv_k], capture_output=True, text=True, check=False)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"K={k} failed (exit {proc.returncode})")
        rows.append(json.loads(line[0][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
        (Path(a.out) / "results.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    proj = projection(rows, a.batch)
    for p in proj:
        print(json.dumps(p), flush=True)
    (Path(a.out) / "results.json").write_text(json.dumps({"args": vars(a), "rows": rows, "projection": proj},
                                                          indent=1))
    print(f"{'K':>3} {'PSNR':>7} {'steps/s':>8} {'MB/tile':>8} {'peak MB':>8} {'B/ray/tile':>10}")
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        print(f"{r['k']:>3} {r['psnr_heldout']:>7.2f} {r['steps_per_s']:>8.2f} "
              f"{r['param_adam_bytes_per_tile'] / 2**20:>8.1f} {peak:>8} {r['exchange_bytes_per_ray_tile_step']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
