"""The error of the two neighbour rules on the inputs of batch.py and scale.py.

Run:  python benchmarks/neighbour_rules.py [--markdown] [--sizes 1000,2000,4000]

``ms.factorize(...)`` with ``options={"neighbours": "energy"}`` (the default)
and ``options={"neighbours": "faithful"}`` (docs/fidelity.md), same run, same
inputs: the hierarchical covariance (greedy and, from 2,000 classes, staged),
the karate and 32 x 32 grid Laplacians, and class means (D = 512) as a dense
covariance and as means (factored), at order 4 with core m/8 and at order 5
to full depth, and 20,000 class means (D = 256, staged) at order 5 to full
depth (``--large``). The ratio is faithful over energy (below 1: the faithful rule
has the smaller error).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table, report_row  # noqa: E402

RULES = ("energy", "faithful")


def cases(sizes: list[int], large: int = 0):
    """``(input, call, run(rule) -> error)`` for every case (``large``: one staged class-means case)."""
    for m in sizes:
        C = ms.hierarchical_covariance(m, seed=0)
        for schedule in ("greedy", "staged") if m >= 2000 else ("greedy",):
            yield (f"hierarchical m = {m}", f"order 4, core m/8, {schedule}",
                   lambda rule, C=C, m=m, s=schedule: ms.factorize(C, order=4, core_size=m // 8, schedule=s,
                                                                   options={"neighbours": rule}).error)
    L = ms.karate_laplacian()
    yield "karate Laplacian", "order 4, core 6", lambda rule: ms.factorize(
        L, order=4, core_size=6, options={"neighbours": rule}).error
    G = ms.grid_laplacian(32)
    yield "grid 32x32 Laplacian", "order 4, core 128", lambda rule: ms.factorize(
        G, order=4, core_size=128, options={"neighbours": rule}).error
    for m in sizes[:2]:
        M = ms.datasets.class_means(m, 512, seed=0)
        C = M @ M.T
        name = f"class_means m = {m}, D = 512"
        yield name, "order 4, core m/8, dense", lambda rule, C=C, m=m: ms.factorize(
            C, order=4, core_size=m // 8, options={"neighbours": rule}).error
        yield name, "order 4, core m/8, factored", lambda rule, M=M, m=m: ms.factorize(
            means=M, order=4, core_size=m // 8, options={"neighbours": rule}).error
        yield name, "order 5, full depth, factored", lambda rule, M=M: ms.factorize(
            means=M, order=5, options={"neighbours": rule}).error
    if large:
        M = ms.datasets.class_means(large, 256, seed=0)
        yield f"class_means m = {large}, D = 256", "order 5, full depth, factored (staged)", lambda rule, M=M: (
            ms.factorize(means=M, order=5, options={"neighbours": rule}).error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--sizes", default="1000,2000,4000", help="hierarchical sizes (the first two: class means)")
    parser.add_argument("--large", type=int, default=20000, help="classes of the staged class-means case (0: none)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    for name, call, run in cases(sizes, args.large):
        energy, faithful = (run(rule) for rule in RULES)
        rows.append([name, call, f"{energy:.4g}", f"{faithful:.4g}", f"{faithful / energy:.3f}"])
        report_row(rows[-1])
    print_table(f"Error of the neighbour rules, {datetime.date.today().isoformat()}, mmf_stream {ms.__version__}",
                ["input", "call", "error, energy", "error, faithful", "faithful / energy"], rows, args.markdown)


if __name__ == "__main__":
    main()
