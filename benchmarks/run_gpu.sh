#!/usr/bin/env bash
# The one-shot GPU check recorded in BENCHMARKS.md: sampler throughput on a random model of the
# DeepSeek-R1-Distill-Qwen-1.5B shape (bf16, against transformers on the same GPU), then the
# scoring forward with/without FCI. Usage: OUT=dir bash benchmarks/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
timeout 300 python3 benchmarks/sampler.py --models 1.5b --dtype bfloat16 --batches 1,16,64 \
  --prompt_len 64 --new_tokens 256 --repeats 2 --json "$OUT/sampler_gpu.json" 2>&1 \
  | grep -v Warning | tee "$OUT/sampler_gpu.log"
timeout 200 python3 benchmarks/scoring.py --lengths 1024,4096,8192 --repeats 3 \
  --real-shape-timing --json "$OUT/scoring_gpu.json" 2>&1 | tee "$OUT/scoring_gpu.log"
# FCI inside the sampler against the scoring forward it replaces (benchmarks/sampler_fci.py):
# the 1.5B shape's width, heads and vocabulary with 8 of its 28 layers, so that both sampler
# programs and both scoring programs compile within the budget (about 60-80 s expected; the
# FCI costs are per layer, so extra_s scales with the layer count). max_steps 512 is what the
# trainer uses for long budgets (pipeline.RolloutConfig.sampler_fci).
timeout 120 python3 benchmarks/sampler_fci.py --models 1.5b --layers 8 --dtype bfloat16 \
  --batch 64 --prompt_len 64 --new_tokens 512 --max_steps 512 --repeats 2 \
  --json "$OUT/sampler_fci_gpu.json" 2>&1 | grep -v Warning | tee "$OUT/sampler_fci_gpu.log"
