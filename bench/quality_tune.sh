#!/usr/bin/env bash
# Issue #21, one GPU call: candidate changes to `quality`, each alone, on a real capture in a fixed time
# (10k-step schedule, each run capped at $SECONDS_EACH of training, first step and compile included;
# all held-out views evaluated at the end). Results: $OUT/tune.{json,log}.
#   DATA=.bench_data/bonsai OUT=... bash bench/quality_tune.sh
# Candidates (Zip-NeRF's choices where ours differ, and our speed-ups' cost at high PSNR):
#   heads256  Zip-NeRF's colour head: bottleneck 256, view-direction MLP 2 x 256 (ours: 15, 2 x 64)
#   float32   grid interpolation and hidden layers in float32 (ours: bfloat16, measured on lego only)
#   blur      Zip-NeRF's anti-aliased interlevel loss (blur 0.03, 0.003 in s; mult 0.01)
#   ms6       Zip-NeRF's 6 hexagonal multisamples with level weights in the NeRF field
# In order of priority: a call that runs out of time loses the last.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DNERF_JAX_CACHE=${DNERF_JAX_CACHE:-/tmp/jaxcache} XLA_PYTHON_CLIENT_PREALLOCATE=false
S=${SECONDS_EACH:-60}
F32="model.mlp_dtype='float32';model.hashgrid_options=(('num_levels',16),('features_per_level',2),('log2_table_size',21),('base_resolution',16),('max_resolution',8192),('dtype','float32'))"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 bench/train_bench.py --data "${DATA:-.bench_data/bonsai}" --max-steps "${MAX_STEPS:-10000}" \
  --eval-views 1000 --final-eval --chunk 65536 \
  --run "quality:16384:1:$S" \
  --run "quality:16384:1:$S:model.bottleneck_width=256;model.net_width_viewdirs=256" \
  --run "quality:16384:1:$S:$F32" \
  --run "quality:16384:1:$S:model.interlevel_blur=(0.03,0.003);model.interlevel_loss_mult=0.01" \
  --run "quality:16384:1:$S:model.multisamples=6;model.prop_multisamples=1" \
  --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" | grep -E "wall|held-out|^\||^\{'date"
