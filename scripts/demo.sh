#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the package, then run the demo job:
# factor the built-in hierarchical covariance (1000 classes) and print the MMF.
# Each step prints one line on stderr: .venv and pip, the package (pip install -e .), the kernel
# warm-up with the seconds it took (about a minute the first time), then the demo.
# Usage: bash scripts/demo.sh [mmf-stream demo arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=scripts/demo.sh
. scripts/lib.sh

make_venv
step "installing mmf_stream and its dependencies (pip install -e .)" .venv/bin/python -m pip install --quiet -e .
# install step: compile the kernels once, so the job itself starts at once
warm_up
say "running mmf-stream demo${*:+ $*}"
.venv/bin/mmf-stream demo "$@"
