#!/usr/bin/env bash
# Everything this project checks on a lent GPU, in one call that fits a 10-minute lease:
#   build the CUDA extension in place; the CUDA tests; compute-sanitizer (memcheck, racecheck)
#   over every kernel; the op micro-benchmarks; the detector fine-tuning stage of
#   scripts/train_default.sh (ft-det, a fixed wall-clock time); the end-to-end FPS table.
# Fine-tuning runs beside the correctness checks (they share the GPU but need no clean
# timings); the benchmarks run last, on an otherwise idle GPU.
#
#   OUT=gpu_out bash scripts/device_check.sh      (python3 must hold torch with CUDA)
#
# Logs and tables land in $OUT (few files: the device tool returns at most 8); the fine-tuned
# detector comes back as an fp16 state dict in weights.tar, split into 15 MB parts.
set -u
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
PY="${PY:-python3}"
DET_MINUTES="${DET_MINUTES:-2.5}"
WORK="${WORK:-/tmp/ancis_train}"
T0=$(date +%s)
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/main.log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/main.log" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())" >>"$OUT/main.log" 2>&1

# --- detector fine-tuning (starts at once: it needs no extension; the ops fall back to torch) --
FT_DEVICE=cuda FT_DET_MINUTES="$DET_MINUTES" PY="$PY" bash scripts/train_default.sh "$WORK" ft-det >"$OUT/train.log" 2>&1 &
TRAIN=$!
log "detector fine-tuning started (${DET_MINUTES} min)"

# --- build ---------------------------------------------------------------------------------
native_cuda() { "$PY" -c 'from ancis_fast.ops import _native as n; raise SystemExit(not n.has_cuda())' 2>/dev/null; }
MAX_JOBS=6 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . >/tmp/build.log 2>&1
native_cuda || MAX_JOBS=6 "$PY" setup.py build_ext --inplace >>/tmp/build.log 2>&1
tail -5 /tmp/build.log >>"$OUT/main.log"
log "build done; native: $("$PY" -c 'from ancis_fast.ops import _native as n; print(n.available(), n.has_cuda(), n.reason())' 2>&1 | tail -1)"

# --- correctness: CUDA tests, ops tests, sanitizer ------------------------------------------
{
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ -rs 2>&1 | tail -15
  echo "cuda tests exit ${PIPESTATUS[0]}"
  timeout 120 "$PY" -X faulthandler -m pytest -q -p no:cacheprovider tests/test_ops_*.py tests/test_fast_pipeline.py 2>&1 | tail -30
  echo "ops tests exit ${PIPESTATUS[0]}"
} >"$OUT/tests.log" 2>&1 &
TESTS=$!
{
  SAN="compute-sanitizer --error-exitcode 99"
  timeout 150 $SAN --tool memcheck "$PY" scripts/sanitize_ops.py 2>&1 | tail -40
  echo "memcheck exit ${PIPESTATUS[0]}"
  timeout 90 $SAN --tool racecheck "$PY" scripts/sanitize_ops.py --small 2>&1 | tail -15
  echo "racecheck exit ${PIPESTATUS[0]}"
} >"$OUT/sanitizer.log" 2>&1 &
SANITIZER=$!
wait $TESTS; log "tests done: $(grep -h 'exit' "$OUT/tests.log" | tr '\n' ' ')"
wait $SANITIZER; log "sanitizer done: $(grep -h 'exit' "$OUT/sanitizer.log" | tr '\n' ' ')"
wait $TRAIN; log "fine-tuning exit $?: $(grep -h '^done' "$OUT/train.log")"

# --- the fine-tuned detector back as fp16, in parts under the tool's 16 MB file limit ---------
"$PY" -c "from ancis_fast.train.checkpoint import export_half as e; e('$WORK/det_ft/detector_best.pt', '$WORK/detector_fp16.pt')" \
  >>"$OUT/main.log" 2>&1
(cd "$WORK" && tar cf - detector_fp16.pt det_ft/log.jsonl) | split -b 15m - "$OUT/weights.tar."
log "weights packed: $(ls "$OUT" | grep -c weights.tar) part(s)"

# --- a native op's C++ error (ValueError) once crashed torch 2.11 on a GPU machine: where? ---
{
  BAD="import torch, ancis_fast.ops; torch.ops.ancis.decode(torch.zeros(2, 5, 4), torch.zeros(6, 4))"
  for init in "" "torch.zeros(1, device='cuda'); "; do
    "$PY" -X faulthandler -c "${BAD/ancis_fast.ops; /ancis_fast.ops; $init}" 2>&1 | tail -3
    echo "native error, cuda init '${init}': exit ${PIPESTATUS[0]}"
  done
  gcc --version | head -1
  timeout 60 cuda-gdb -batch -ex run -ex bt --args "$PY" -c "$BAD" 2>&1 | grep -E "^#|signal" | head -25
} >>"$OUT/tests.log" 2>&1
log "native error check done: $(grep -h 'native error' "$OUT/tests.log" | tr '\n' ' ')"

# --- benchmarks on the idle GPU ----------------------------------------------------------------
{
  timeout 60 "$PY" benchmarks/bench_ops.py --device cuda -k "not fallback and not reference" \
      --benchmark-max-time=0.3 2>&1 | tail -30
  echo "bench_ops exit ${PIPESTATUS[0]}"
} >>"$OUT/bench.log" 2>&1
log "bench_ops done"
{
  timeout 60 "$PY" benchmarks/bench_mask_stage.py --device cuda 2>&1 | tail -10
  echo "bench_mask_stage exit ${PIPESTATUS[0]}"
} >>"$OUT/bench.log" 2>&1
log "bench_mask_stage done"
{
  timeout 120 "$PY" benchmarks/bench_static_pipeline.py --device cuda --precision fp16 --batch 1,8 2>&1 | tail -14
  echo "bench_static_pipeline exit ${PIPESTATUS[0]}"
} >>"$OUT/bench.log" 2>&1
log "bench_static_pipeline done"
{
  timeout 90 "$PY" benchmarks/fps.py --device cuda --backends reference,eager,torchscript --batch 1,8 \
      --precision fp32,fp16 --warmup 2 --iters 8 --no-sweep --out /tmp/fps 2>&1 | tail -25
  echo "fps exit ${PIPESTATUS[0]}"
  ANCIS_COMPILE_MODE="${ANCIS_COMPILE_MODE:-reduce-overhead}" timeout 90 "$PY" benchmarks/fps.py --device cuda \
      --backends compile --batch 1,8 --precision fp16 --warmup 2 --iters 8 --no-sweep --out /tmp/fps_compile 2>&1 | tail -12
  echo "fps compile exit ${PIPESTATUS[0]}"
} >>"$OUT/bench.log" 2>&1
log "all done"
