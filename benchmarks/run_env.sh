# Sourced by the benchmark scripts (gpu.sh, cifar100.sh) from the repository root, with OUT set:
# sets PY (PYTHON, else .venv/bin/python if present, else python) and writes OUT/env.txt (date,
# commit, GPU, jax and flax versions, devices), printing it too.
PY=${PYTHON:-python}
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi

{
  date -u +%FT%TZ
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    2>/dev/null || true
  "$PY" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)
print(jax.devices())'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
