#!/usr/bin/env bash
# One GPU call on a two-GPU machine (nvidia-h100-x2), results and logs in $OUT:
#   phase 1, side by side: the multinerf reference on GPU 1 ($REF_GIN + $REF_BIND, for
#            $REF_SECONDS of training) while bench/train_bench.py $ONE_GPU runs on GPU 0;
#   phase 2: bench/train_bench.py $TWO_GPU on both GPUs (its runs name 1 or 2 devices).
# Needs (carried, git-ignored): .whl/ (gin-config, dm-pix, tensorboardX), .peer/ (multinerf),
# .bench_data/lego400 (made by .peer/make_data.py). SKIP_REF=1 skips the reference;
# PHASE1_LIMIT caps phase 1's wall time (seconds) so that phase 2 always runs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 DNERF_JAX_CACHE=/tmp/jaxcache XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv
DATA=$PWD/.bench_data/lego400
LIMIT=${PHASE1_LIMIT:-560}
if [ "${SKIP_REF:-0}" = 0 ]; then
  BIND=(--gin_bindings="Config.data_dir='$DATA'" --gin_bindings="Config.batch_size=16384")
  IFS=';' read -ra EXTRA <<< "${REF_BIND:-}"
  for b in "${EXTRA[@]}"; do [ -n "$b" ] && BIND+=(--gin_bindings="$b"); done
  (CUDA_VISIBLE_DEVICES=1 timeout -k 5 "$LIMIT" python3 .peer/mn_bench.py \
     --gin_configs="$PWD/.peer/src/configs/${REF_GIN:-blender_256.gin}" "${BIND[@]}" \
     --train_seconds="${REF_SECONDS:-150}" --eval_at_seconds=100000 --final_eval=false --out_json="$OUT/ref.json" \
     > "$OUT/ref.log" 2>&1) &
  REF=$!
fi
[ -n "${ONE_GPU:-}" ] && CUDA_VISIBLE_DEVICES=0 timeout -k 5 "$LIMIT" python3 bench/train_bench.py --data "$DATA" \
  $ONE_GPU --out "$OUT/ours_1gpu.json" 2>&1 | tee "$OUT/ours_1gpu.log" | grep -v "^ *\["
[ -n "${REF:-}" ] && wait $REF; grep -E "TRAIN done|RESULT" "$OUT/ref.log" | tail -2 | cut -c1-600
[ -n "${TWO_GPU:-}" ] && python3 bench/train_bench.py --data "$DATA" $TWO_GPU --out "$OUT/ours_2gpu.json" 2>&1 \
  | tee "$OUT/ours_2gpu.log" | grep -v "^ *\["
exit 0
