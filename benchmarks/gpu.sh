#!/usr/bin/env bash
# The throughput table on one GPU, in bfloat16, for the resnet (resnet32x4 -> resnet8x4) and vit
# (vit_small -> vit_tiny) pairs at batch 2048, which fills an H200 (batch 256 leaves the ViT steps
# launch-bound: benchmarks/RESULTS.md). Finishes in under 8 minutes (on an H200 each pair takes
# about 3 minutes, most of it compiling and setting up five programs); BATCH_SIZES=256,2048
# takes about twice as long. Installs nothing (the environment must already have jaxdistill's
# dependencies and a CUDA jax).
#
#   benchmarks/gpu.sh OUTDIR
#
# Writes OUTDIR/throughput.json (rewritten after each pair and batch size, so a run cut short
# keeps what it measured), OUTDIR/throughput.log (progress and table) and OUTDIR/env.txt
# (versions, device), and prints the table last. Environment overrides: PYTHON, PAIRS,
# BATCH_SIZES, DTYPE, STEPS, REPEATS, WARMUP, PEAK_SIZE, and LIMIT_S (the benchmark's time
# limit, default 450 s; a run over it prints the table of what it finished and exits 124).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute, before moving to the repository root
cd "$(dirname "$0")/.."
source benchmarks/run_env.sh  # PY, and OUT/env.txt

rm -f "$OUT/throughput.json"
timeout --signal=TERM --kill-after=15 "${LIMIT_S:-450}" "$PY" -m benchmarks.throughput \
  --pairs="${PAIRS:-resnet,vit}" --batch_sizes="${BATCH_SIZES:-2048}" \
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
