#!/usr/bin/env bash
# Set up everything on a fresh machine (idempotent), then run:
#   ./run.sh demo [ARGS]   the main job: k-means of the 400k GloVe words
#   ./run.sh test [ARGS]   the whole test suite
#   ./run.sh bench NAME    a benchmark (benchmarks/bench_NAME.py)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

# torch is pinned to the CPU wheel that CPU machines carry locally: a plain `torch` requirement would pull
# a multi-GB CUDA build. GPU machines use their preinstalled torch (`pip install --no-deps -e .`).
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "$TORCH_PIN"
    "$PY" -m pip install -q -e ".[all]"
    touch "$stamp"
fi

cmd=${1:-demo}
shift || true
case "$cmd" in
    demo) exec "$VENV/bin/mega-taxonomy" demo "$@" ;;
    test) exec "$PY" -m pytest "$@" ;;
    bench) name=$1; shift; exec "$PY" "benchmarks/bench_${name}.py" "$@" ;;
    *) echo "usage: $0 {demo|test|bench NAME} [ARGS]" >&2; exit 2 ;;
esac
