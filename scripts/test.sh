#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the package and its test extras, then run the tests.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# the CPU build of PyTorch for the adapter's tests (a local file on this machine kind;
# any other version would pull a multi-GB CUDA build)
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[dev,torch]'
# the browser test drives Debian's chromium (headless) through Playwright
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
    else
        echo "scripts/test.sh: chromium is missing; the browser test will be skipped (install Debian's chromium)" >&2
    fi
fi
# the Redis queue's tests start a real redis-server (Debian's); without one they are skipped (failed in CI)
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
    else
        echo "scripts/test.sh: redis-server is missing; the Redis queue tests will be skipped" \
             "(install Debian's redis-server)" >&2
    fi
fi
# exit code 5 ("no tests collected") must fail too: there must be tests
.venv/bin/python -m pytest "$@"
