#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one run (about 8 minutes on one H200):
# versions, cuDNN-vs-xla numerics, bench_core with full and dots recompute (bf16, cuDNN),
# and bench_long's gpu-0.5b preset. Each step has its own time limit and writes to OUT
# as it goes, so a step that fails or runs long still leaves the others' results.
#   OUT=runs/gpu_bench bash scripts/gpu_bench.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, output to OUT/NAME.txt
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) $(date +%T)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name rc=${PIPESTATUS[0]} in $((SECONDS - t0))s"
}
step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c 'import jax, flax, optax; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, jax.devices())'"
step attention_check 90 $PY scripts/gpu_attention_check.py
CORE="--dtype bfloat16 --hidden 2048 --intermediate 5632 --layers 8 --heads 16 --chunk 2048 --global-size 512 --budget 2048 --tokens 32768 --memory-at 32768"
step core_full 110 $PY -m eval.bench_core $CORE --remat full
step core_dots 110 $PY -m eval.bench_core $CORE --remat dots
step long 200 $PY -m eval.bench_long --preset gpu-0.5b --lengths 8k,32k,128k,1M --full-limit-s 30 --out "$OUT/long"
