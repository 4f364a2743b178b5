#!/usr/bin/env bash
# Step breakdown with the split-device overlap and the paper-step projection on a lent GPU/TPU
# machine (benchmarks/step_breakdown.py; BENCHMARKS.md "Overlapped rollout and training").
# A random model of the Qwen2.5-0.5B body (preset gpu_0p5b), bf16, responses up to 1,024
# tokens: one-step off-policy and on-policy on all devices (their phase shares feed the
# projection), plus the split mode when there are 2+ devices (half of them sampling).
# Expected: about 3-4 min per mode, most of it compiling. Usage: OUT=dir bash benchmarks/run_gpu_overlap.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
OUT=${OUT:-/tmp/overlap_bench}
mkdir -p "$OUT"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true) \
  | tee "$OUT/machine.txt"
date -u | tee -a "$OUT/machine.txt"
DEVICES=$(python3 -c "import jax; print(jax.device_count())")
MODES=off_policy,on_policy
if [ "$DEVICES" -ge 2 ]; then MODES=$MODES,split; fi
echo "devices: $DEVICES, modes: $MODES" | tee -a "$OUT/machine.txt"
timeout 580 python3 benchmarks/step_breakdown.py --preset gpu_0p5b --steps 4 --modes "$MODES" \
  --json "$OUT/step_overlap_gpu.json" 2>&1 | grep -v Warning | tee "$OUT/step_overlap_gpu.log"
