#!/usr/bin/env bash
# The Dask scaling run on a 16-core machine (the workplace's device tool; CI never runs it):
# dense m = 16000 on LocalClusters of 1, 2, 4, 8 and 16 single-threaded workers.
# Python packages the machine lacks (dask, distributed, zarr, numcodecs, donfig, google-crc32c,
# tblib, zict, locket, partd, tornado) travel as Python 3.12 wheels in .whl/ (pip download
# --only-binary=:all: --python-version 3.12 ...); results go to $OUT (or ./device-out).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 MMF_STREAM_QUIET=1
nproc > "$out/machine.txt"
python3 -c "import numpy, numba, dask, distributed, zarr; print(numpy.__version__, numba.__version__, dask.__version__, zarr.__version__)" >> "$out/machine.txt"
python3 -c "import mmf_stream.warmup as w; print('warm-up (compile) s', round(w.warm_up(), 1))" 2>&1 | tee -a "$out/machine.txt"
python3 benchmarks/dask_scaling.py --markdown --only dense --no-local --workers "${WORKERS:-1,2,4,8,16}" \
    --timeout "${ROW_TIMEOUT:-240}" --tmpdir /tmp 2>&1 | tee "$out/dask_scaling_device.md"
