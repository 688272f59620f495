#!/usr/bin/env bash
# The throughput table on one GPU, in bfloat16: the lm pair (decoder LMs lm_base ~110M -> lm_20m
# ~22M at V = 32,768 and L = 1,024, batch 8 x 1024 tokens, modes student, teacher_forward and
# kd_online in both loss forms, chunked and naive, with each program's compiled peak memory),
# then the resnet (resnet32x4 -> resnet8x4) and vit (vit_small -> vit_tiny) pairs at batch 2048,
# which fills an H200 (batch 256 leaves the ViT steps launch-bound: benchmarks/RESULTS.md).
# Installs nothing (the environment must already have jaxdistill's dependencies and a CUDA jax).
#
# Time: the benchmark stops at LIMIT_S (450 s), so the script ends within 8 minutes. Expected on
# an H200, not yet measured for lm: lm about 2-2.5 minutes (six programs, two loss forms; nearly
# all of it compiling and setting up: the KD steps compile a 12-layer and a 6-layer decoder, while
# every step runs in milliseconds: ~1-2 TFLOP per step, 145 calls each); resnet and vit about 3
# minutes each (five programs, most of it compilation, the resnet student's alone 49 s of cuDNN
# autotuning). That is about 8-8.5 minutes in all, over the limit: lm runs first because it is
# the pair without H200 figures yet, and the limit cuts the last group (vit; its H200 figures are
# in RESULTS.md). PAIRS=resnet,vit is the previous run, PAIRS=lm the LM pair alone (~2.5 min).
#
#   benchmarks/gpu.sh OUTDIR
#
# Writes OUTDIR/throughput.json (rewritten after each pair, batch size and loss form, so a run
# cut short keeps what it measured), OUTDIR/throughput.log (progress and table) and OUTDIR/env.txt
# (versions, device), and prints the table last. Environment overrides: PYTHON, PAIRS,
# BATCH_SIZES (N for every pair, PAIR:N for one), DTYPE, STEPS, REPEATS, WARMUP, PEAK_SIZE, and
# LIMIT_S (the benchmark's time limit, default 450 s; a run over it prints the table of what it
# finished and exits 124).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute, before moving to the repository root
cd "$(dirname "$0")/.."
source benchmarks/run_env.sh  # PY, and OUT/env.txt

rm -f "$OUT/throughput.json"
timeout --signal=TERM --kill-after=15 "${LIMIT_S:-450}" "$PY" -m benchmarks.throughput \
  --pairs="${PAIRS:-lm,resnet,vit}" --batch_sizes="${BATCH_SIZES:-2048,lm:8}" \
  --dtype="${DTYPE:-bfloat16}" --warmup="${WARMUP:-5}" --steps="${STEPS:-20}" \
  --repeats="${REPEATS:-7}" --peak_size="${PEAK_SIZE:-0}" --out="$OUT" \
  2>&1 | tee "$OUT/throughput.log"
rc=${PIPESTATUS[0]}

if [[ $rc -ne 0 ]]; then
  echo "benchmark exited with status $rc (124: over LIMIT_S); the table of what it measured:"
  if [[ -s "$OUT/throughput.json" ]]; then
    "$PY" -m benchmarks.throughput --table_from="$OUT/throughput.json" 2>/dev/null
  else
    echo "(nothing was measured; see $OUT/throughput.log)"
  fi
fi
exit "$rc"
