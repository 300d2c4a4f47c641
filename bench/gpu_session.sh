#!/usr/bin/env bash
# One GPU call (nvidia-h100-x2): the multinerf reference on GPU 1 while our presets run on
# GPU 0, then our presets on both GPUs. Results and logs go to $OUT.
# Needs (carried, git-ignored): .whl/ (gin-config, dm-pix, tensorboardX), .peer/multinerf, .bench_data/lego400.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# The persistent compile cache comes back in $OUT/jaxcache; carry it as .jaxcache to start warm.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 DNERF_JAX_CACHE=$OUT/jaxcache XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$DNERF_JAX_CACHE" && { [ -d .jaxcache ] && cp -r .jaxcache/. "$DNERF_JAX_CACHE/" || true; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv
DATA=$PWD/.bench_data/lego400
REF_SECONDS=${REF_SECONDS:-150}
if [ "${SKIP_REF:-0}" = 0 ]; then
  (CUDA_VISIBLE_DEVICES=1 python3 .peer/mn_bench.py --gin_configs=$PWD/.peer/src/configs/blender_256.gin \
     --gin_bindings="Config.data_dir='$DATA'" --gin_bindings="Config.batch_size=16384" \
     --train_seconds=$REF_SECONDS --eval_at_seconds=100000 --final_eval=false --out_json="$OUT/ref.json" \
     > "$OUT/ref.log" 2>&1) &
  REF=$!
fi
[ -n "${ONE_GPU:-}" ] && CUDA_VISIBLE_DEVICES=0 python3 bench/train_bench.py --data "$DATA" $ONE_GPU --out "$OUT/ours_1gpu.json" 2>&1 | tee "$OUT/ours_1gpu.log" | grep -v "^ *\[" 
[ -n "${REF:-}" ] && wait $REF && grep -E "RESULT|steps/s|rays" "$OUT/ref.log" | tail -5
[ -n "${TWO_GPU:-}" ] && python3 bench/train_bench.py --data "$DATA" $TWO_GPU --out "$OUT/ours_2gpu.json" 2>&1 | tee "$OUT/ours_2gpu.log"
exit 0
