#!/usr/bin/env bash
# One GPU call: `fast` on lego400 with and without empty-space skipping (model.skip_threshold /
# model.sample_budget), one run after another on one GPU; logs and JSON in $OUT.
# VARIANTS: '|'-separated lists of NAME=VALUE overrides; '-' (or an empty entry) = the preset as is.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DNERF_JAX_CACHE=/tmp/jaxcache XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
DATA=${DATA:-.bench_data/lego400}
COMMON=${COMMON:---run fast:16384:1:60 --max-steps 8000 --eval-at 30 60 --eval-views 5 --final-eval --chunk 32768}
i=0
IFS='|' read -ra VARIANTS <<< "${VARIANTS:-}"
for v in "${VARIANTS[@]}"; do
  i=$((i+1))
  SETS=()
  [ "$v" = "-" ] && v=""
  for s in $v; do SETS+=(--set "$s"); done
  echo "=== variant $i: ${v:-preset as is}"
  python3 bench/train_bench.py --data "$DATA" $COMMON "${SETS[@]}" --out "$OUT/v$i.json" 2>&1 \
    | tee "$OUT/v$i.log" | grep -E "held-out|^\| fast|rays_per_s" | cut -c1-400
done
exit 0
