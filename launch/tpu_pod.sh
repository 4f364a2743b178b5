#!/usr/bin/env bash
# Cloud TPU pod slice: set up every worker, then start the same training command on all of them.
# Usage: launch/tpu_pod.sh [--dry-run] --name TPU --zone ZONE [--project P] [--repo URL]
#          [--ref BRANCH] [--jax-tpu SPEC] [--skip-setup] -- <train arguments>
# Step 1 (unless --skip-setup), on every worker: clone (or update) --repo at --ref into
#   ~/attnrl-jax, create ~/attnrl-jax/.venv, pip install -e . and jax with TPU support
#   (default: the package's `tpu` extra, pinned in setup.py; --jax-tpu SPEC installs SPEC instead).
# Step 2, on every worker: run the trainer with distributed.mode=tpu (worker id and worker list
#   from the VM metadata; process 0 = worker 0 is the coordinator). Use a gs:// or shared
#   workdir that every worker can write (checkpoints are written by all of them together).
set -euo pipefail
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" PROJECT="" REPO="" REF=main SETUP=1 JAX_TPU=''
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --repo) REPO=$2; shift 2 ;;
    --ref) REF=$2; shift 2 ;;
    --jax-tpu) JAX_TPU=$2; shift 2 ;;
    --skip-setup) SETUP=0; shift ;;
    --) shift; break ;;
    *) die "unknown option $1 (train arguments go after --)" ;;
  esac
done
[[ -n "$NAME" && -n "$ZONE" ]] || die "--name and --zone are required"
gcloud_ssh=(gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all)
if [[ -n "$PROJECT" ]]; then gcloud_ssh+=(--project "$PROJECT"); fi
DIR='~/attnrl-jax'
if [[ "$SETUP" == 1 ]]; then
  [[ -n "$REPO" ]] || die "--repo URL is required to set up the workers (or --skip-setup)"
  if [[ -n "$JAX_TPU" ]]; then INSTALL="-e . $(printf '%q' "$JAX_TPU")"; else INSTALL="-e '.[tpu]'"; fi
  setup="set -e; if [ -d $DIR/.git ]; then git -C $DIR fetch -q origin && git -C $DIR checkout -q $(printf '%q' "$REF") && git -C $DIR pull -q --ff-only; else git clone -q -b $(printf '%q' "$REF") $(printf '%q' "$REPO") $DIR; fi; cd $DIR; python3 -m venv .venv; .venv/bin/pip install -q -U pip; .venv/bin/pip install -q $INSTALL"
  run "${gcloud_ssh[@]}" --command "$setup"
fi
train="cd $DIR && .venv/bin/python -m attnrl_jax.train $(quote "$@") --config.distributed.mode=tpu"
run "${gcloud_ssh[@]}" --command "$train"
