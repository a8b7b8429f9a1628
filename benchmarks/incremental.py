"""Incremental MMF benchmark: streaming insertions against batch MMF of the final matrix.

Run:  python benchmarks/incremental.py [--sizes 2000 4000] [--markdown]

For each m0: batch MMF (order 5, full depth) of the first m0 rows of the
package's hierarchical covariance, then the next 0.5 m0 rows inserted one at a
time with ``Factorization.insert`` (default repair policy). Rows are reported
after +10% and after +50%: median and amortised (mean, repairs included)
seconds per insertion, the batch MMF of the same final matrix (the baseline,
run in the same process), speedups and the error ratio against it. A last row
per m0 inserts 100 classes at once with ``insert_many`` against 100 single
insertions of the same classes.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table  # noqa: E402

ORDER = 5


def run(m0: int) -> list[list[str]]:
    final = int(1.5 * m0)
    C = ms.hierarchical_covariance(final, seed=0)
    f = ms.factorize(C[:m0, :m0], order=ORDER)
    start_state = f
    rows = []
    times = []
    checkpoints = {int(1.1 * m0): "+10%", final: "+50%"}
    for i in range(m0, final):
        begin = time.perf_counter()
        f = f.insert(C[:i, i], C[i, i])
        times.append(time.perf_counter() - begin)
        if i + 1 in checkpoints:
            begin = time.perf_counter()
            batch = ms.factorize(C[: i + 1, : i + 1], order=ORDER)
            batch_seconds = time.perf_counter() - begin
            median, mean = float(np.median(times)), float(np.mean(times))
            rows.append([
                str(m0), f"{checkpoints[i + 1]} ({i + 1 - m0} one by one)", f"{median * 1000:.1f} ms",
                f"{mean * 1000:.1f} ms", f"{batch_seconds:.2f} s", f"{batch_seconds / median:.0f}x",
                f"{batch_seconds / mean:.0f}x", f"{f.error / batch.error:.3f}",
            ])
            print("  done:", rows[-1], file=sys.stderr, flush=True)
    # insert_many: 100 classes at once against 100 single insertions
    block = slice(m0, m0 + 100)
    begin = time.perf_counter()
    many = start_state.insert_many(C[: m0 + 100, block])
    many_seconds = time.perf_counter() - begin
    singles = start_state
    begin = time.perf_counter()
    for i in range(m0, m0 + 100):
        singles = singles.insert(C[:i, i], C[i, i])
    single_seconds = time.perf_counter() - begin
    batch = ms.factorize(C[: m0 + 100, : m0 + 100], order=ORDER)
    rows.append([
        str(m0), "insert_many(100) vs 100 inserts", f"{many_seconds * 1000:.0f} ms",
        f"{single_seconds * 1000:.0f} ms", "-", f"{single_seconds / many_seconds:.1f}x faster", "-",
        f"{many.error / batch.error:.3f} vs {singles.error / batch.error:.3f}",
    ])
    print("  done:", rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    ms.factorize(ms.hierarchical_covariance(60), order=ORDER).insert(np.zeros(60) + 0.1, 1.0)  # compile
    rows = []
    for m0 in args.sizes:
        rows.extend(run(m0))
    header = ["m0", "inserted", "median / insert", "amortised / insert", "batch (final)",
              "speedup median", "speedup amortised", "error / batch"]
    print_table(
        f"incremental MMF, {datetime.date.today().isoformat()}, order {ORDER}, full depth, "
        "hierarchical covariance; baseline: batch ms.factorize of the same final matrix",
        header, rows, args.markdown,
    )


if __name__ == "__main__":
    main()
