#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the package, then run the demo job:
# factor the built-in hierarchical covariance (1000 classes) and print the MMF.
# Usage: bash scripts/demo.sh [mmf-stream demo arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
# install step: compile and cache the numba kernels once (about a minute in a fresh
# environment, a few seconds afterwards), so the job itself starts at once
.venv/bin/mmf-stream warmup --quiet
.venv/bin/mmf-stream demo "$@"
