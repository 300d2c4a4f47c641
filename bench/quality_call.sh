#!/usr/bin/env bash
# Issue #21, one GPU call per capture: today's `fast` beside `quality`, side by side, time to quality on
# all held-out views (every 8th photo), with wall-clock marks in $OUT/<capture>.log.
#   bash bench/quality_call.sh bonsai|cup|fern|bonsai9      (results: $OUT/<capture>.{json,log})
# Data (git-ignored, carried with `carry: [".bench_data/<capture>"]`), made on the development machine:
#   bonsai  .bench_data/bonsai: scene.json from `nerf poses` on $DNERF_DATA/mipnerf360_bonsai_800/images
#           (OPENCV, sequential; see bench/RESULTS.md call 22) + images/ (the 292 photos)
#   cup     .bench_data/cup: scene.json from $DNERF_DATA/real_cup_colmap/sparse/0 + images/ (800x600)
#   fern    .bench_data/fern: scene.json from $DNERF_DATA/llff_fern/poses_bounds.npy + images/ (images_4)
#   (nerflib.scene_io.read_colmap / read_llff, then write_scene_json; bench/train_bench.py loads them.)
# Each capture should fit one 10-minute call: `fast` ends its 25k-step schedule in about 2.7 min,
# `quality` its 26k steps in about 4.8 min (capped at 5 min of training, first step included).
# Evaluations are outside that clock but inside the call's: in call 25 one evaluation of bonsai's
# 37 views took about 48 s (undoing the lens distortion then cost ~1 s per view on the host; since
# then a camera's rays are made once, nerflib.cameras), so only two marks per run besides the end.
# bonsai9: `quality` alone on a 9-minute schedule (the issue's 33.5 dB goal).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DNERF_JAX_CACHE=${DNERF_JAX_CACHE:-/tmp/jaxcache} XLA_PYTHON_CLIENT_PREALLOCATE=false
CAPTURE=${1:?usage: quality_call.sh bonsai|cup|fern|bonsai9}
DATA=.bench_data/${CAPTURE%9}
COMMON=(--data "$DATA" --eval-views 1000 --final-eval --chunk 65536)
case "$CAPTURE" in
  bonsai|cup|fern) RUNS=(--eval-at 60 120 --run "fast:16384:1:300" --run "quality:16384:1:300") ;;
  bonsai9) RUNS=(--eval-at 120 300 --run "quality:16384:1:540:max_steps=48000") ;;
  *) echo "unknown capture $CAPTURE" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 bench/train_bench.py "${COMMON[@]}" "${RUNS[@]}" --out "$OUT/$CAPTURE.json" 2>&1 | tee "$OUT/$CAPTURE.log" \
  | grep -E "wall|held-out|^\||^\{'date"
