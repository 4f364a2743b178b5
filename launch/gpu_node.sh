#!/usr/bin/env bash
# Training on the GPUs of one node.
# Usage: launch/gpu_node.sh [--dry-run] [--per-gpu] [--gpus N] [--port P]
#          -- <train arguments>
# Default: ONE process drives all local GPUs (no jax.distributed; set a mesh over them, e.g.
# --config.mesh.fsdp=-1). --per-gpu: one process per GPU (CUDA_VISIBLE_DEVICES=i), joined
# with jax.distributed over 127.0.0.1, as on a multi-node job.
set -euo pipefail
source "$(dirname "$0")/common.sh"
PER_GPU=0 GPUS="" PORT=12355 PYTHON=${PYTHON:-python}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --per-gpu) PER_GPU=1; shift ;;
    --gpus) GPUS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1 (train arguments go after --)" ;;
  esac
done
if [[ "$PER_GPU" != 1 ]]; then
  run "$PYTHON" -m attnrl_jax.train "$@" --config.distributed.mode=off
  exit
fi
if [[ -z "$GPUS" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then die "--dry-run with --per-gpu needs --gpus N"; fi
  GPUS=$(nvidia-smi --list-gpus | wc -l)
fi
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got $GPUS"
pids=()
for ((i = 0; i < GPUS; i++)); do
  cmd=(env "CUDA_VISIBLE_DEVICES=$i" "$PYTHON" -m attnrl_jax.train "$@"
    "--config.distributed.coordinator_address=127.0.0.1:$PORT"
    "--config.distributed.num_processes=$GPUS" "--config.distributed.process_id=$i")
  quote "${cmd[@]}"
  if [[ "$DRY_RUN" != 1 ]]; then "${cmd[@]}" & pids+=($!); fi
done
wait_all "${pids[@]}"
