#!/usr/bin/env bash
# Two independent lanes of bench/train_bench.py runs on a two-GPU machine, at the same time:
# lane 0 on GPU 0, lane 1 on GPU 1; each lane is a ';'-separated list of train_bench argument
# strings run one after another. Results (JSON + logs) in $OUT.
#   LANE0="--data .bench_data/lego400 --run fast:16384:1:180 ...;--data ... --run ..." \
#   LANE1="..." bash bench/gpu_lanes.sh
# Needs (carried, git-ignored): .whl/ (tensorboardX etc.), .bench_data/ (scenes).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DNERF_JAX_CACHE=/tmp/jaxcache XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv
lane() {  # lane GPU "args1;args2;..."
  local gpu=$1 i=0; IFS=';' read -ra RUNS <<< "$2"
  for a in "${RUNS[@]}"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$gpu timeout -k 5 "${RUN_LIMIT:-400}" python3 bench/train_bench.py $a \
      --out "$OUT/lane${gpu}_$i.json" > "$OUT/lane${gpu}_$i.log" 2>&1
    grep -v "^ *\[" "$OUT/lane${gpu}_$i.log" | tail -4
  done
}
lane 0 "${LANE0:-}" & L0=$!
lane 1 "${LANE1:-}" & L1=$!
wait $L0 $L1
exit 0
