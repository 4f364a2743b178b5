#!/usr/bin/env bash
# Calibrates the XLA:CPU memory estimate that `python -m attnrl_jax.plan --topology=cpu:N` gives
# for GPUs: plans the 1.5B paper config's scoring forward and micro-batch gradient for one real
# GPU (--topology=gpu:1 with --hbm_gib = the memory nvidia-smi reports, XLA:GPU). Compare with the
# same command and --topology=cpu:1 on a CPU host. Usage: OUT=dir bash <this>
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_memory}
mkdir -p "$OUT/r1_1p5b"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# this GPU's memory (MiB -> GiB), whatever its kind
HBM_GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 \
  | awk '{printf "%.1f", $1 / 1024}')
python3 -c "import jax; print('jax', jax.__version__)" | tee -a "$OUT/gpu.txt"
# the model's shape: config.json alone (DeepSeek-R1-Distill-Qwen-1.5B's, benchmarks/aot_targets.py)
python3 -c "import json; from benchmarks.aot_targets import MODELS; \
print(json.dumps(MODELS['1.5b'].to_hf()))" > "$OUT/r1_1p5b/config.json"
timeout 400 python3 -m attnrl_jax.plan --config=configs/r1_distill_qwen_1p5b.py \
  --config.model.path="$OUT/r1_1p5b" --config.mesh.data=1 --config.mesh.fsdp=1 \
  --config.mesh.tensor=1 --config.rollout.score_batch_size=1 --config.train.microbatch_rows=1 \
  --topology=gpu:1 --hbm_gib="$HBM_GIB" --phases=score,grad --json "$OUT/plan_gpu1.json" 2>&1 \
  | grep -v Warning | tee "$OUT/plan_gpu1.log"
