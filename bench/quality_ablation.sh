#!/usr/bin/env bash
# Issue #21, one GPU call: what each of the `quality` preset's pieces buys on a real capture, in a
# fixed time. `fast` on a 10k-step schedule with one piece added at a time, each run capped at
# $SECONDS_EACH of training (first step and compile included), all held-out views evaluated.
#   DATA=.bench_data/bonsai OUT=... bash bench/quality_ablation.sh
# DATA: a project bench/train_bench.py reads (scene.json + images/). Results: $OUT/ablation.{json,log}.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DNERF_JAX_CACHE=${DNERF_JAX_CACHE:-/tmp/jaxcache} XLA_PYTHON_CLIENT_PREALLOCATE=false
S=${SECONDS_EACH:-75}
GRID="model.hashgrid_options=(('num_levels',16),('features_per_level',2),('log2_table_size',21),('base_resolution',16),('max_resolution',8192),('dtype','bfloat16'))"
python3 bench/train_bench.py --data "${DATA:-.bench_data/bonsai}" --max-steps "${MAX_STEPS:-10000}" \
  --eval-views 37 --final-eval --chunk 65536 \
  --run "fast:16384:1:$S" \
  --run "fast:16384:1:$S:model.refine_poses=True" \
  --run "fast:16384:1:$S:$GRID" \
  --run "fast:16384:1:$S:model.multisamples=1;model.prop_multisamples=1" \
  --run "fast:16384:1:$S:model.multisamples=6;model.prop_multisamples=1" \
  --out "$OUT/ablation.json" 2>&1 | tee "$OUT/ablation.log" | grep -v "^ *\["
