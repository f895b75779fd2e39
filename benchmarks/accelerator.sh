#!/usr/bin/env bash
# The prepared accelerator run (issue 14): see benchmarks/accelerator.py.
#
#   benchmarks/accelerator.sh          # one GPU/TPU: gemma2_2b shape, bf16
#   PAV_BENCH_TINY=1 benchmarks/accelerator.sh   # tiny shape, runs on CPU
#
# Optional: PAV_BENCH_TRAIN_B (train batch, default 4 x 1024 tokens),
# PAV_BENCH_PEAK_TFLOPS (peak for MFU when the card is not in the table),
# PYTHON (default: .venv/bin/python if present, else python3). Wheels for
# packages missing on an offline machine can be put in benchmarks/wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ -d benchmarks/wheels ]] && ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --no-index --find-links benchmarks/wheels \
    benchmarks/wheels/*.whl >/dev/null
fi
if ! "$PY" -c "import pav_jax" 2>/dev/null; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import jax; print('devices:', jax.devices())"
exec "$PY" benchmarks/accelerator.py "$@"
