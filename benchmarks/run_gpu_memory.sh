#!/usr/bin/env bash
# Calibrates the XLA:CPU memory estimate used for GPUs in the memory plan: compiles the 1.5B
# scoring forward and micro-batch gradient (one row of 9216 tokens, remat) for one real GPU.
# Compare with the same command and --target cpu1 on a CPU host. Usage: OUT=dir bash <this>
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_memory}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__)" | tee -a "$OUT/gpu.txt"
timeout 400 python3 benchmarks/memory_plan.py --model 1.5b --target gpu1 --mesh 1x1x1 --remat \
  --phases score,grad --score-rows 1 --train-rows 1 --json "$OUT/memory_plan_gpu1.json" 2>&1 \
  | grep -v Warning | tee "$OUT/memory_plan_gpu1.log"
