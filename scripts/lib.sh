# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run): every step says what it does,
# one line on stderr prefixed by the calling script's name ($SCRIPT), e.g.
#   scripts/test.sh: installing torch 2.13.0 (CPU build)...

#: a step that takes at least this many seconds also says how long it took
SLOW_STEP_SECONDS=5

say() {
    echo "$SCRIPT: $*" >&2
}

# step DESCRIPTION COMMAND...: say what starts, run the command, say how long it took if it was slow
step() {
    local what=$1 start=$SECONDS took
    shift
    say "$what..."
    "$@"
    took=$((SECONDS - start))
    if [ "$took" -ge "$SLOW_STEP_SECONDS" ]; then
        say "$what: done in $took s"
    fi
}

# .venv (created with python3 if missing) with an up-to-date pip
make_venv() {
    if [ ! -x .venv/bin/python ]; then
        step "creating the virtual environment .venv (python3 -m venv)" python3 -m venv .venv
    fi
    step "updating pip in .venv" .venv/bin/python -m pip install --quiet --upgrade pip
}

# compile and cache every numba kernel now (mmf-stream warmup), so that the first real run
# starts at once; says how long it took
warm_up() {
    local start=$SECONDS
    say "compiling the numba kernels (mmf-stream warmup: about a minute in a fresh environment," \
        "a few seconds once numba has cached them)..."
    .venv/bin/mmf-stream warmup --quiet
    say "kernels compiled and cached in $((SECONDS - start)) s"
}
