#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the package and its test extras, then run the tests.
# Each step prints one line on stderr: .venv and pip, torch (CPU build), the package with its dev
# and torch extras, chromium and redis-server (one apt-get install, as root, when missing), the
# kernel warm-up with the seconds it took, then pytest.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=scripts/test.sh
. scripts/lib.sh

#: the CPU build of PyTorch for the adapter's tests (a local file on this machine kind;
#: any other version would pull a multi-GB CUDA build)
TORCH_VERSION=2.13.0

make_venv
step "installing torch $TORCH_VERSION (CPU build)" .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
step "installing mmf_stream with its dev and torch extras (pip install -e '.[dev,torch]')" \
    .venv/bin/python -m pip install --quiet -e '.[dev,torch]'

# Debian packages the tests drive: chromium (the browser test, headless through Playwright) and
# redis-server (the Redis queue's tests start a real server); without them those tests are skipped
# (and fail in CI, which requires them)
apt_install() {
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null
}
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        step "installing ${missing[*]} (apt-get)" apt_install "${missing[@]}"
    else
        for package in "${missing[@]}"; do
            case $package in
                chromium) say "chromium is missing; the browser test will be skipped (install Debian's chromium)" ;;
                redis-server) say "redis-server is missing; the Redis queue tests will be skipped" \
                                  "(install Debian's redis-server)" ;;
            esac
        done
    fi
fi

# the kernels compiled once here, not by every test process that needs them
warm_up
say "running pytest${*:+ $*}"
# exit code 5 ("no tests collected") must fail too: there must be tests
.venv/bin/python -m pytest "$@"
