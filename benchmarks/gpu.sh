#!/usr/bin/env bash
# The full step-time table, the memory benchmark and the main job on the first GPU (or
# any accelerator jax.devices() returns first), in under ~8 minutes on one H100/H200-class
# GPU. Results go to benchmarks/results/<device kind>/ (e.g. results/nvidia-h200/), each
# file tagged with the device kind; nothing is compared against the CPU numbers.
#
#   benchmarks/gpu.sh                    # 1e6,1e7,5e7 params, compile at 50/500 leaves
#   SIZES=1e7 benchmarks/gpu.sh          # faster
#   benchmarks/gpu.sh --optimizers adamw,lion   # extra flags go to step_time.py
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"   # the first GPU only
# Host allocator settings as for CPU runs (harmless on GPU, keep host copies cheap).
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592 MALLOC_ARENA_MAX=1
# Do not grab 75% of the GPU up front: the memory benchmark reads the allocator's peak.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

KIND=$(python3 -c 'import jax; d = jax.devices()[0]; print(d.platform, d.device_kind)')
echo "device: $KIND"
if [[ "$KIND" == cpu* && "${ALLOW_CPU:-0}" != "1" ]]; then
  echo "no accelerator visible to jax (set ALLOW_CPU=1 to run this on the CPU anyway)" >&2
  exit 2
fi
TAG=$(echo "${KIND#* }" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
OUT="${OUT:-benchmarks/results/$TAG}"
mkdir -p "$OUT"
SIZES="${SIZES:-1e6,1e7,5e7}"
start=$(date +%s)
# Step time: every named optimizer; short repeats suffice on an unshared device.
timeout 240 python3 benchmarks/step_time.py --sizes "$SIZES" --repeats 7 --target-ms 20 \
  --compile-leaves "" --skip-at "" --out "$OUT" "$@" 2>&1 | tee "$OUT/step_time.log" \
  || echo "step time: timed out or failed (see log)"
echo "step time: $(( $(date +%s) - start )) s"
# Compile time at 50 and 500 leaves (its own folder: that run has no step-time rows).
timeout 120 python3 benchmarks/step_time.py --sizes "" --compile-leaves 50,500 \
  --out "$OUT/compile" "$@" 2>&1 | tee "$OUT/compile_time.log" \
  || echo "compile time: timed out or failed (see log)"
timeout 120 python3 benchmarks/memory.py --sizes 1e7 --steps 3 --repeats 3 --out "$OUT" \
  2>&1 | tee "$OUT/memory.log" || echo "memory benchmark: timed out or failed (see log)"
echo "memory: $(( $(date +%s) - start )) s"
timeout 90 python3 -m optlab.bench --out "$OUT/digits_loss.png" 2>&1 | tee "$OUT/digits.log" \
  || echo "main job: timed out or failed (see log)"
echo "total: $(( $(date +%s) - start )) s; results in $OUT"
