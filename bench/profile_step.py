"""Where one training step's GPU time goes, kernel by kernel, from a JAX profiler trace.

Trains a preset for --warmup steps (compile and warm-up excluded), traces --steps
steps with jax.profiler (a Perfetto trace, no viewer needed), then sums the device
kernels' time per step and prints two tables: by part of the model (the JAX name
stack of the HLO op each kernel runs, read from the compiled program's metadata)
and the top kernels.

    python bench/profile_step.py --data .bench_data/lego400 --preset fast --batch 16384 \
        --set model.num_nerf_samples=32 --keep $OUT/trace

The parts: "proposal ..." / "final ..." = the proposal fields' and the final
field's ops, split into the hash grid, the MLPs and the rest of the field, each
forward ("fwd") or backward ("bwd", under a transpose); "optimizer" = Adam and
the parameter update; "losses"; "sampling + rendering" = the model's own ops
outside the fields. Needs only jax/flax/optax/numpy/opencv.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

# Name-stack patterns -> part, first match wins (flax module paths as models.py names them).
PARTS = [
    (r"optax|adam|apply_updates|scale_by|clip_by", "optimizer"),
    (r"distortion|interlevel|lossfun|loss", "losses"),
]
COMPONENTS = [(r"hash_encoding|_encode_flat|hashgrid", "hash grid"), (r"Dense|mlp|MLP|dense", "MLP")]
def hlo_metadata(compiled_text: str) -> dict[str, str]:
    """Instruction name -> op_name metadata, from the optimized HLO text."""
    out = {}
    pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*op_name=\"([^\"]*)\"")
    for line in compiled_text.splitlines():
        m = pat.match(line)
        if m:  # kernels are named after their fusion, '.' written as '_' (fusion.12 -> fusion_12)
            out[m.group(1)] = out[m.group(1).replace(".", "_")] = m.group(2)
    return out


def part_of(op_name: str) -> str:
    """'proposal hash grid bwd', 'final MLP fwd', 'optimizer', ... from an op's JAX name stack."""
    if not op_name:
        return "(no metadata)"
    for pattern, part in PARTS:
        if re.search(pattern, op_name):
            return part
    direction = "bwd" if "transpose(" in op_name else "fwd"
    field = "proposal" if "prop_field" in op_name else "final" if "nerf_field" in op_name else ""
    if not field:
        return "sampling + rendering " + direction
    component = next((c for pattern, c in COMPONENTS if re.search(pattern, op_name)), "field other")
    return f"{field} {component} {direction}"


def device_kernels(trace_dir: Path) -> list[dict]:
    """X events of the device (GPU) tracks of the newest perfetto trace under trace_dir."""
    files = sorted(trace_dir.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no perfetto_trace.json.gz under {trace_dir}")
    data = json.load(gzip.open(files[-1]))
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in procs.items() if "GPU" in name or "/device:" in name}
    if not device_pids:  # CPU backend: ops run on host threads
        device_pids = set(procs)
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids and "dur" in e]


def summarize(kernels: list[dict], meta: dict[str, str], n_steps: int):
    by_part, by_kernel = collections.Counter(), collections.Counter()
    stack_of = {}
    for e in kernels:
        args = e.get("args") or {}
        # Inside CUDA graphs hlo_op names the command buffer; the kernel's own name is its fusion's.
        op_name = meta.get(e["name"]) or meta.get(args.get("hlo_op", ""), "")
        part = part_of(op_name)
        by_part[part] += e["dur"]
        by_kernel[e["name"]] += e["dur"]
        stack_of.setdefault(e["name"], (part, op_name))
    total = sum(by_part.values())
    return by_part, by_kernel, stack_of, total / max(n_steps, 1) / 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--factor", type=int, default=1)
    p.add_argument("--preset", default="fast")
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--keep", help="copy the Perfetto trace (.json.gz, for ui.perfetto.dev) to this file")
    p.add_argument("--hlo", help="write the compiled step's optimized HLO text to this file")
    p.add_argument("--pallas-scatter", action="store_true",
                   help="the hash grids' table gradients from bench/pallas_scatter.py's kernel (an experiment)")
    args = p.parse_args(argv)
    if args.pallas_scatter:
        import pallas_scatter

        pallas_scatter.patch_encode()
    ns = argparse.Namespace(max_steps=0, chunk=0, blender_settings=False, set=args.set)
    train_ds = train_bench.load_scene(Path(args.data), "train", factor=args.factor)
    run = train_bench.setup(args.preset, args.batch, 1, ns, train_ds)
    state = run.state
    for _ in range(args.warmup):
        state, stats = run.step(state, run.data, run.key)
    jax.block_until_ready(stats["loss"])
    try:
        hlo_text = run.step.lower(state, run.data, run.key).compile().as_text()
        meta = hlo_metadata(hlo_text)
        if args.hlo:
            Path(args.hlo).write_text(hlo_text)
    except Exception as exc:  # noqa: BLE001 - the tables still come out, without parts
        print(f"(no HLO metadata: {exc})")
        meta = {}
    tmp = Path(tempfile.mkdtemp(prefix="dnerf-prof-"))
    t0 = time.perf_counter()
    with jax.profiler.trace(str(tmp), create_perfetto_trace=True):
        for _ in range(args.steps):
            state, stats = run.step(state, run.data, run.key)
        jax.block_until_ready(stats["loss"])
    wall_ms = (time.perf_counter() - t0) / args.steps * 1e3
    by_part, by_kernel, stack_of, kernel_ms = summarize(device_kernels(tmp), meta, args.steps)
    meta_row = train_bench.run_meta(preset=args.preset, batch=args.batch)
    print(f"\n{meta_row['device']}, jax {meta_row['jax']}, commit {meta_row['commit']}: `{args.preset}` "
          f"batch {args.batch}, {args.steps} traced steps; wall {wall_ms:.2f} ms/step "
          f"(traced, so a little slow), device kernels {kernel_ms:.2f} ms/step")
    print("\n| part | ms/step | share |\n|---|---|---|")
    for part, us in by_part.most_common():
        print(f"| {part} | {us / args.steps / 1e3:.3f} | {us / args.steps / 1e3 / kernel_ms:.1%} |")
    print("\n| kernel | part | ms/step | share | name stack (abridged) |\n|---|---|---|---|---|")
    for name, us in by_kernel.most_common(args.top):
        part, op_name = stack_of[name]
        print(f"| `{name[:60]}` | {part} | {us / args.steps / 1e3:.3f} | "
              f"{us / args.steps / 1e3 / kernel_ms:.1%} | {op_name[-90:]} |")
    if args.keep:
        shutil.copy(sorted(tmp.rglob("perfetto_trace.json.gz"))[-1], args.keep)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
