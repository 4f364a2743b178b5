#!/usr/bin/env bash
# N training processes on this machine over 127.0.0.1 (for testing multi-host code paths).
# Usage: launch/local_multiprocess.sh [--dry-run] [--num-processes N] [--devices-per-process D]
#          [--port P] [--timeout S] -- <train arguments, e.g. --config=configs/demo.py ...>
# Each process forces D CPU devices (XLA_FLAGS) and gets process id i; all run under
# `timeout S` and the script waits for all, exiting non-zero if any failed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
N=2 DEVICES=2 PORT=12355 TIMEOUT=3600 PYTHON=${PYTHON:-python}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --num-processes) N=$2; shift 2 ;;
    --devices-per-process) DEVICES=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1 (train arguments go after --)" ;;
  esac
done
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "--num-processes must be a positive integer, got $N"
pids=()
for ((i = 0; i < N; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES" JAX_PLATFORMS=cpu
    timeout "$TIMEOUT" "$PYTHON" -m attnrl_jax.train "$@"
    "--config.distributed.coordinator_address=127.0.0.1:$PORT"
    "--config.distributed.num_processes=$N" "--config.distributed.process_id=$i")
  quote "${cmd[@]}"
  if [[ "$DRY_RUN" != 1 ]]; then "${cmd[@]}" & pids+=($!); fi
done
wait_all "${pids[@]}"
