#!/usr/bin/env bash
# Runs one jaxdistill process on every worker (host) of a Cloud TPU VM pod slice, all with
# the same command, through `gcloud compute tpus tpu-vm ssh --worker=all`. Each process
# joins the run with --distributed=auto (JAX reads the pod's topology from the TPU VM
# metadata: coordinator = worker 0, process id = worker index).
#
# Usage, from a machine where gcloud is authenticated (see launch/README.md):
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/shared/runs/cifar100_kd \
#     launch/tpu_pod.sh --config=configs/cifar100_kd.py --config.batch_size=1024
#
# Every argument goes to `python -m jaxdistill.main` on every worker, after
# --distributed=auto and --workdir="$WORKDIR".
#
# Environment:
#   TPU_NAME   required  the TPU VM pod slice
#   ZONE       required  its zone
#   WORKDIR    required  run directory that every worker sees at the same path (a Filestore
#                        NFS or gcsfuse mount); checkpoints are written by all workers
#   PROJECT    optional  GCP project (default: gcloud's configured project)
#   REPO_DIR   optional  the jaxdistill checkout on each worker (default: ~/jaxdistill)
#   PYTHON     optional  interpreter on the workers with jaxdistill and jax[tpu] installed
#                        (default: python3)
#   WORKER_ENV optional  extra environment for the processes, e.g. "JAXDISTILL_DATA_DIR=/mnt/data"
#   DRY_RUN=1  optional  print the gcloud command instead of running it
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
[[ $# -gt 0 && ( $1 == -h || $1 == --help ) ]] && usage
: "${TPU_NAME:?set TPU_NAME (see launch/tpu_pod.sh --help)}"
: "${ZONE:?set ZONE (see launch/tpu_pod.sh --help)}"
: "${WORKDIR:?set WORKDIR to a directory every worker mounts at the same path}"
case "$WORKDIR" in
  *://*) echo "tpu_pod.sh: WORKDIR=$WORKDIR: URLs are not supported yet; mount the bucket" \
              "(gcsfuse) or a Filestore share at the same path on every worker" >&2; exit 2;;
esac
REPO_DIR=${REPO_DIR:-'~/jaxdistill'}   # expanded by the worker's shell
PYTHON=${PYTHON:-python3}
WORKER_ENV=${WORKER_ENV:-}

# The remote command, quoted once for the workers' shell.
args=(-u -m jaxdistill.main --distributed=auto "--workdir=$WORKDIR" "$@")
remote="cd $REPO_DIR && env $WORKER_ENV $(printf '%q' "$PYTHON")$(printf ' %q' "${args[@]}")"

cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE" --worker=all
     "--command=$remote")
[[ -n ${PROJECT:-} ]] && cmd+=("--project=$PROJECT")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
