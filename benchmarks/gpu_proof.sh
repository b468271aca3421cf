#!/usr/bin/env bash
# The one-shot GPU proof (microt2i/bench_gpu.py): on one H100, ≤ 8 minutes, appends its rows to BENCHMARKS.md
# (device name and date) and writes the full record to gpu_proof.json. Extra arguments go to `microt2i bench gpu`
# (e.g. --budget-s 300, --no-write). On a CPU: `bash benchmarks/gpu_proof.sh --smoke --no-write` checks the path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" -c 'import sys; from microt2i.cli import main; sys.exit(main(sys.argv[1:]))' \
    bench gpu --out BENCHMARKS.md --json gpu_proof.json "$@"
