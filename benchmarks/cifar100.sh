#!/usr/bin/env bash
# The CIFAR-100 accuracy table (CRD / DKD benchmark pair) on one accelerator: trains the
# resnet32x4 teacher of configs/cifar100_teacher.py once (seed 0), then the resnet8x4 student
# from scratch and with each method of configs/cifar100_methods.py (KD, FitNet, AT, SP, RKD,
# PKT, CRD, DKD), and prints the table with the published top-1 beside each row (teacher
# 79.42, student 72.50, KD 73.33, FitNet 73.50, AT 73.44, SP 72.94, RKD 71.90, PKT 73.64,
# CRD 75.51, DKD 76.32). It is `python -m benchmarks.accuracy --suite=cifar100`.
#
#   benchmarks/cifar100.sh TFDS_DATA_DIR OUTDIR
#   TFDS_DIR=/data/tensorflow_datasets benchmarks/cifar100.sh OUTDIR
#
# TFDS_DATA_DIR (or $TFDS_DIR) must hold `cifar100` already prepared (nothing is downloaded;
# for the default grain reader: `tfds build cifar100 --data_dir=DIR --file_format=array_record`
# on a machine with network). Every run is the papers' full recipe: 240 epochs at batch 64
# (187,500 steps), so each of the 1 + SEEDS x 9 runs takes hours on one GPU; rerunning the same
# command resumes every unfinished run from its newest checkpoint and re-measures finished ones.
#
# Writes OUTDIR/accuracy.json, accuracy.md, the plots, OUTDIR/cifar100.log (progress and table),
# OUTDIR/env.txt (versions, device) and the runs under OUTDIR/runs/cifar100/. Environment
# overrides: PYTHON, SEEDS (default 1), METHODS (comma-separated, default the eight above),
# STEPS_SCALE (default 1.0; e.g. 0.01 for a smoke test of the whole pipeline), TEACHER (the
# workdir of a finished resnet32x4 teacher run to reuse instead of training one),
# THROUGHPUT_JSON (a benchmarks/throughput.py output to plot beside), ALLOW_CPU=1 (run without
# an accelerator: only sensible with a tiny STEPS_SCALE). Exit status: 0 done, 75 stopped by a
# preemption notice (SIGTERM; rerun to resume), 2 bad arguments or no accelerator, else failed.
set -uo pipefail

usage="usage: benchmarks/cifar100.sh TFDS_DATA_DIR OUTDIR   (or TFDS_DIR=... benchmarks/cifar100.sh OUTDIR)"
if [[ $# -eq 2 ]]; then
  DATA=$1 OUT=$2
elif [[ $# -eq 1 ]]; then
  DATA=${TFDS_DIR:-} OUT=$1
else
  echo "$usage" >&2; exit 2
fi
if [[ -z "$DATA" ]]; then
  echo "no TFDS data dir: pass it as the first argument or set TFDS_DIR" >&2
  echo "$usage" >&2; exit 2
fi
if [[ ! -d "$DATA" ]]; then
  echo "TFDS data dir '$DATA' does not exist" >&2; exit 2
fi
DATA=$(cd "$DATA" && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute, before moving to the repository root
cd "$(dirname "$0")/.."
source benchmarks/run_env.sh  # PY, and OUT/env.txt

backend=$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)
if [[ "$backend" == "cpu" && "${ALLOW_CPU:-0}" != "1" ]]; then
  echo "no accelerator (jax backend: cpu): these runs take weeks on CPU; set ALLOW_CPU=1 to run" \
       "anyway (with e.g. STEPS_SCALE=0.001 for a smoke test)" >&2
  exit 2
fi

args=(--suite=cifar100 --data_dir="$DATA" --out="$OUT" --seeds="${SEEDS:-1}"
      --steps_scale="${STEPS_SCALE:-1.0}")
[[ -n "${METHODS:-}" ]] && args+=(--methods="$METHODS")
[[ -n "${TEACHER:-}" ]] && args+=(--teacher_checkpoint="$TEACHER")
[[ -n "${THROUGHPUT_JSON:-}" ]] && args+=(--throughput_json="$THROUGHPUT_JSON")

"$PY" -m benchmarks.accuracy "${args[@]}" 2>&1 | tee "$OUT/cifar100.log"
rc=${PIPESTATUS[0]}
if [[ $rc -eq 0 ]] && grep -q "^stopped during" "$OUT/cifar100.log"; then
  # a preemption notice (SIGTERM): the run in progress saved a checkpoint and the benchmark
  # stopped; exit 75 (EX_TEMPFAIL) so that a scheduler or a loop reruns the same command
  echo "stopped by a preemption notice: rerun the same command to resume"
  rc=75
fi
if [[ $rc -ne 0 ]]; then
  echo "benchmark exited with status $rc; see $OUT/cifar100.log"
  if [[ -s "$OUT/accuracy.md" ]]; then
    echo "the table of the runs it finished ($OUT/accuracy.md):"
    cat "$OUT/accuracy.md"
  fi
fi
exit "$rc"
