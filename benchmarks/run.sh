#!/usr/bin/env bash
# Runs every optlab benchmark and writes benchmarks/results/ (see benchmarks/README.md).
#
#   benchmarks/run.sh                  # step time at 1e6 and 1e7 params, compile time, flatten, main job
#   SIZES=1e6,1e7,5e7 benchmarks/run.sh
#   SWEEP=1 benchmarks/run.sh          # also the digits learning-rate sweep (~5-15 min on 2 cores)
#   LM=1 benchmarks/run.sh             # also the language-model task (~5 min of CPU on 2 cores)
#   LM=1 SWEEP=1 benchmarks/run.sh     # + its learning-rate sweep (~15 min of CPU)
#   MEMORY=1 benchmarks/run.sh         # also memory.py (4e6) and memory_digits.py (~20 min shared)
#   LM=1 MEMORY=1 benchmarks/run.sh    # + the LM rows: memory, replicas, schedules (~30 min shared)
#   benchmarks/run.sh --optimizers adamw,lion   # extra flags go to step_time.py
set -euo pipefail
cd "$(dirname "$0")/.."

# glibc malloc settings for CPU runs of XLA (verified effective with glibc 2.36):
# - MALLOC_MMAP_THRESHOLD_=4 GiB: blocks below 4 GiB come from the heap, not from a fresh
#   mmap. By default glibc mmaps large blocks (threshold 128 KiB, adapting up to 32 MiB),
#   and munmaps them on free, so every step's new output buffers are page-faulted and
#   zero-filled by the kernel again: that can cost as much as the update itself.
# - MALLOC_TRIM_THRESHOLD_=8 GiB: do not hand freed heap memory back to the OS (which
#   would bring the page faults back on the next step).
# - MALLOC_ARENA_MAX=1: one arena shared by XLA's worker threads, so a buffer freed by one
#   thread is reused by another instead of growing a per-thread arena.
export MALLOC_MMAP_THRESHOLD_=4294967296
export MALLOC_TRIM_THRESHOLD_=8589934592
export MALLOC_ARENA_MAX=1
# jaxlib's CPU LAPACK (SVD/QR/eigh: GaLore, online PCA, ...) is scipy's OpenBLAS, whose
# threads spin while waiting: on a busy machine one SVD was 10-50x slower multi-threaded.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

SIZES="${SIZES:-1e6,1e7}"
OUT="${OUT:-benchmarks/results}"
# Compile time at 500 leaves is slow on 2 cores (up to ~1 min per optimizer), so the
# compile-time and flatten tables use a representative subset.
COMPILE_SET="${COMPILE_SET:-sgd,adamw,lion,signum,ademamix,amsgrad,lamb,adafactor,muon,adamp,cautious_adamw,sophia,sam-adamw}"

mkdir -p "$OUT"
python3 benchmarks/step_time.py --sizes "$SIZES" --compile-leaves 50,500 \
  --compile-optimizers "$COMPILE_SET" --flatten --out "$OUT" "$@"
if [[ "${SWEEP:-0}" == "1" ]]; then
  python3 benchmarks/digits_lr_sweep.py --out "$OUT"
fi
python3 -m optlab.bench --out "$OUT/digits_loss.png"
if [[ "${LM:-0}" == "1" ]]; then
  if [[ "${SWEEP:-0}" == "1" ]]; then
    python3 benchmarks/lm_lr_sweep.py --steps 100 --out "$OUT"
  fi
  python3 -m optlab.bench --task lm --out "$OUT/lm_loss.png"
fi
if [[ "${MEMORY:-0}" == "1" ]]; then
  python3 benchmarks/memory.py --sizes 4e6 --steps 3 --repeats 3 --out "$OUT"
  python3 benchmarks/memory_digits.py --out "$OUT"
  if [[ "${LM:-0}" == "1" ]]; then
    python3 benchmarks/memory_digits.py --task lm --size small --steps 100 --out "$OUT"
    python3 benchmarks/replicas.py --task lm --size small --steps 200 --replicas 4 --out "$OUT"
    python3 benchmarks/schedules.py --task lm --size small --steps 200 --out "$OUT"
  fi
fi
