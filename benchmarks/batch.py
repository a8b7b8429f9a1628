"""Batch MMF benchmark: time, peak memory and exact error, against the reference.

Run:  python benchmarks/batch.py [--repeats 3] [--quick] [--markdown]

Each row runs in a fresh subprocess: it compiles the kernels on a tiny matrix,
records its resident memory, loads the matrix from a .npy file, factors it
``--repeats`` times and reports the median seconds and the peak resident
memory above that baseline (the input matrix included). Single thread:
NUMBA_NUM_THREADS, OMP/OPENBLAS/MKL threads are set to 1.

The baseline is a widely used C++ MMF implementation measured (single thread,
same machine kind, same settings) by the issue's author; it cannot be run
here, so its numbers are quoted in the ``ref`` columns.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import STATUS_MB, print_table, report_row  # noqa: E402

#: (seconds, absolute error) of the C++ reference, from issue 2
REFERENCE = {
    ("hierarchical", 4000): (3.4, 18.4),
    ("hierarchical", 8000): (25.4, 36.4),
    ("karate Laplacian", 34): (None, 5.89),
    ("grid 32x32 Laplacian", 1024): (None, 53.96),
}

_CHILD = r"""
import json, sys, time
import numpy as np
import mmf_stream as ms
""" + STATUS_MB + r"""
ms.factorize(ms.karate_laplacian(), order=int(sys.argv[2]), core_size=int(sys.argv[3]) if int(sys.argv[3]) < 34 else 6)
baseline = status_mb("VmRSS")
C = np.load(sys.argv[1])
times = []
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    f = ms.factorize(C, order=int(sys.argv[2]), core_size=int(sys.argv[3]))
    times.append(time.perf_counter() - start)
    error, relative = f.error, f.relative_error
    del f
peak = status_mb("VmHWM")
print(json.dumps({"times": times, "peak_mb": peak - baseline, "error": error, "relative": relative,
                  "input_mb": C.nbytes / 2**20}))
"""


def cases(quick: bool):
    sizes = (1000, 2000) if quick else (1000, 2000, 4000, 8000)
    for m in sizes:
        yield "hierarchical", lambda m=m: ms.hierarchical_covariance(m, seed=0), 4, m // 8
    yield "karate Laplacian", ms.karate_laplacian, 4, 6
    yield "grid 32x32 Laplacian", lambda: ms.grid_laplacian(32), 4, 128


def run_case(matrix: np.ndarray, order: int, core: int, repeats: int) -> dict:
    env = {
        **os.environ,
        "NUMBA_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matrix.npy"
        np.save(path, matrix)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(order), str(core), str(repeats)],
            capture_output=True, text=True, env=env, check=False,
        )
    if done.returncode:
        raise SystemExit(f"benchmark child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    header = ["matrix", "m", "order", "core", "seconds", "peak MB", "peak/input",
              "error", "rel. error", "ref s", "ref error", "error/ref", "time/ref"]
    rows = []
    for name, make, order, core in cases(args.quick):
        matrix = make()
        size = matrix.shape[0]
        result = run_case(matrix, order, core, args.repeats)
        del matrix
        seconds = float(np.median(result["times"]))
        ref_s, ref_err = REFERENCE.get((name, size), (None, None))
        rows.append([
            name, size, order, core, f"{seconds:.2f}", f"{max(result['peak_mb'], 0):.0f}",
            f"{result['peak_mb'] / result['input_mb']:.2f}x" if result["input_mb"] >= 1 else "-", f"{result['error']:.3f}", f"{result['relative']:.5f}",
            "-" if ref_s is None else f"{ref_s:.1f}", "-" if ref_err is None else f"{ref_err:.2f}",
            "-" if ref_err is None else f"{result['error'] / ref_err:.2f}",
            "-" if ref_s is None else f"{seconds / ref_s:.2f}",
        ])
        report_row(rows[-1])

    print_table(
        f"batch MMF, {datetime.date.today().isoformat()}, median of {args.repeats} runs, single thread, "
        f"mmf_stream {ms.__version__}, numba threads 1; ref = C++ MMF (issue 2, quoted)",
        header, rows, args.markdown,
    )


if __name__ == "__main__":
    main()
