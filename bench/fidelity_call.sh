#!/usr/bin/env bash
# Issue #21, fidelity of `mipnerf360`: ours and the reference (multinerf's configs/360.gin) on bonsai,
# same images, poses, held-out split (every 8th photo, all 37 views), batch and number of steps; held-out
# PSNR/SSIM at that step. One GPU call; both run at once on the one GPU (the comparison is at equal
# steps, not equal time). Results and logs: $OUT/{ours,ref}.{json,log}.
#   bash bench/fidelity_call.sh            (STEPS=2000 BATCH=4096 LIMIT=560 by default)
# Carried (git-ignored): .bench_data/bonsai (see bench/quality_call.sh), .peer/ (a copy of
# ../shared/peers/multinerf), .whl/ref/ (gin_config 0.5.0 and dm_pix 0.4.5 wheels, pure Python).
# bench/fidelity_data.py gives both readers the same data: our normalization, a centred pinhole camera
# (distortion dropped for both: the reference's Blender reader has none), RGBA PNGs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DNERF_JAX_CACHE=/tmp/jaxcache XLA_PYTHON_CLIENT_PREALLOCATE=false
STEPS=${STEPS:-2000}; BATCH=${BATCH:-4096}; LIMIT=${LIMIT:-560}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --target /tmp/site-ref .whl/ref/*.whl
python3 bench/fidelity_data.py .bench_data/bonsai /tmp/fid | tee "$OUT/data.json"
(PYTHONPATH=/tmp/site-ref timeout -k 5 "$LIMIT" python3 .peer/mn_bench.py \
   --gin_configs="$PWD/.peer/src/configs/360.gin" --gin_bindings="Config.data_dir='/tmp/fid'" \
   --gin_bindings="Config.dataset_loader='blender'" --gin_bindings="Config.factor=0" \
   --gin_bindings="Config.batch_size=$BATCH" --gin_bindings="Config.max_steps=$STEPS" \
   --gin_bindings="Config.render_chunk_size=16384" \
   --train_seconds=100000 --eval_at_seconds=100000 --final_eval=true --out_json="$OUT/ref.json" \
   > "$OUT/ref.log" 2>&1) &
REF=$!
timeout -k 5 "$LIMIT" python3 bench/train_bench.py --data /tmp/fid --eval-views 1000 --final-eval --chunk 16384 \
  --run "mipnerf360:$BATCH:1:100000:max_steps=$STEPS" --out "$OUT/ours.json" > "$OUT/ours.log" 2>&1
wait $REF
grep -E "wall|held-out|^\|" "$OUT/ours.log" | tail -8
grep -E "TRAIN done|RESULT|psnr|Traceback|Error" "$OUT/ref.log" | tail -6 | cut -c1-600
exit 0
