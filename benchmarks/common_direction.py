"""Dense greedy time on class means that share one strong common direction, against the hierarchical covariance.

Run:  python benchmarks/common_direction.py [--markdown] [--sizes 2000,4000,5000] [--weight 3] [--dim 512]

``C = M M'`` for Gaussian class means (``N(0, 1/D)`` entries) plus ``weight``
times one common unit direction (a class's own norm is about 1), against
``ms.hierarchical_covariance(m)``; both ``ms.factorize(C, order=5,
schedule="greedy")`` (full depth), one run each, in turn (no other job should
share the cores). Each is timed at the default ``eager_rebuilds`` and at 64:
with a common direction every pivot's neighbours are the same few hub
classes, so many cached candidates go stale at each level, and
``eager_rebuilds`` bounds how many are rebuilt at once.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table, report_row  # noqa: E402
from mmf_stream.engine.options import DEFAULT_OPTIONS  # noqa: E402

#: the smaller ``eager_rebuilds`` timed beside the default
FEWER_REBUILDS = 64


def common_direction(m: int, dim: int, weight: float, seed: int = 0) -> np.ndarray:
    """``M M'`` for Gaussian means plus ``weight`` times one shared unit direction."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((m, dim)) / np.sqrt(dim)
    direction = rng.standard_normal(dim)
    means += weight * direction / np.linalg.norm(direction)
    return means @ means.T


def timed(C: np.ndarray, eager: int) -> tuple[float, float]:
    started = time.perf_counter()
    f = ms.factorize(C, order=5, schedule="greedy", options={"eager_rebuilds": eager})
    return time.perf_counter() - started, f.error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--sizes", default="2000,4000,5000")
    parser.add_argument("--weight", type=float, default=3.0, help="the common direction's weight")
    parser.add_argument("--dim", type=int, default=512, help="D of the class means")
    args = parser.parse_args()
    ms.factorize(ms.hierarchical_covariance(64), order=5)  # compile before timing
    rows = []
    for m in (int(x) for x in args.sizes.split(",")):
        inputs = {"hierarchical": ms.hierarchical_covariance(m, seed=0),
                  "common": common_direction(m, args.dim, args.weight)}
        for eager in (DEFAULT_OPTIONS.eager_rebuilds, FEWER_REBUILDS):
            (h_s, h_err), (c_s, c_err) = (timed(inputs[name], eager) for name in ("hierarchical", "common"))
            rows.append([m, eager, f"{h_s:.2f}", f"{c_s:.2f}", f"{c_s / h_s:.2f}", f"{h_err:.4g}", f"{c_err:.4g}"])
            report_row(rows[-1])
    print_table(f"Common direction (weight {args.weight:g}, D = {args.dim}) against the hierarchical covariance, "
                f"dense greedy order 5 full depth, {datetime.date.today().isoformat()}, mmf_stream {ms.__version__}",
                ["m", "eager_rebuilds", "hierarchical s", "common direction s", "ratio", "hierarchical error",
                 "common direction error"], rows, args.markdown)


if __name__ == "__main__":
    main()
