#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the package and its test extras, then run the tests.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# exit code 5 ("no tests collected") must fail too: there must be tests
.venv/bin/python -m pytest "$@"
