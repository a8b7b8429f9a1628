"""Staged levels against greedy levels on hierarchical inputs: error ratio, and greedy's own spread.

Run:  python benchmarks/staged_vs_greedy.py [--markdown] [--parts trees,hierarchical,means]
      [--sizes 2000,4000,8000] [--orders 3,4,5] [--means-sizes 2048,4096]

* Planted trees (``ms.datasets.planted_tree``, class means, the neighbour
  rule ``--rule``, default the default ``"energy"``): ``ms.factorize(means=M, order=k, schedule="staged")``
  over ``schedule="greedy"``, with the fidelity ratio (mean LCA depth of the
  first-tuple partners, :mod:`mmf_stream.fidelity`).
* The hierarchical covariance (dense, order 4, core m/8) at ``--sizes``.
* Class means (``ms.datasets.class_means(m, 256)``, factored) at
  ``--means-sizes``, order 5 to full depth and order 4 with core m/8, with
  both schedules' seconds (factored greedy is slow here: every pivot's
  neighbours are the same few hub classes).
* *greedy spread*: the largest change of greedy's own error under settings
  that should not matter (``rescore`` 3 or 4 instead of 2, ``rebuild_iter``
  2 instead of 1): how sharp one greedy run is as a reference.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table, report_row  # noqa: E402
from mmf_stream.fidelity import first_partners, tree_fidelity  # noqa: E402

#: (depth, branching, D, noise, offset): 1,296 to 3,125 classes, all above the factored ``auto`` switch
TREES = [(4, 6, 256, 0.0, 1.0), (3, 12, 256, 0.1, 1.0), (4, 7, 128, 0.2, 1.0), (5, 5, 64, 0.2, 1.0)]
#: greedy settings that should not change the result much
GREEDY_VARIANTS = [{"rescore": 3}, {"rescore": 4}, {"rebuild_iter": 2}]


def spread(run, reference: float) -> float:
    """Largest relative change of greedy's error over :data:`GREEDY_VARIANTS`."""
    return max(abs(run(options) / reference - 1.0) for options in GREEDY_VARIANTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--sizes", default="2000,4000,8000", help="hierarchical covariance sizes")
    parser.add_argument("--orders", default="3,4,5", help="tree orders k")
    parser.add_argument("--means-sizes", default="2048,4096", help="class-means sizes")
    parser.add_argument("--parts", default="trees,hierarchical,means", help="which inputs to run")
    parser.add_argument("--rule", default="energy", choices=["energy", "faithful"],
                        help="the trees' neighbour rule (EngineOptions.neighbours)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    rows = []
    for depth, branching, dim, noise, offset in TREES if "trees" in parts else []:
        M, paths = ms.datasets.planted_tree(depth, branching, dim, noise=noise, offset=offset, seed=0)
        for order in (int(x) for x in args.orders.split(",")):
            def run(options=None, schedule="greedy", M=M, order=order):
                return ms.factorize(means=M, order=order, schedule=schedule,
                                    options={**(options or {}), "neighbours": args.rule})
            greedy, staged = run(), run(schedule="staged")
            fidelity = [tree_fidelity(first_partners(f.tuples, M.shape[0]), paths) for f in (greedy, staged)]
            rows.append([f"tree {depth}/{branching}/{dim}/{noise:g}/{offset:g}, {args.rule}", M.shape[0], order,
                         f"{staged.error / greedy.error:.3f}", f"{fidelity[1] / fidelity[0]:.3f}",
                         f"{spread(lambda o: run(o).error, greedy.error):.3f}"])
            report_row(rows[-1])
    for m in (int(x) for x in args.sizes.split(",")) if "hierarchical" in parts else []:
        C = ms.hierarchical_covariance(m, seed=0)

        def run(options=None, schedule="greedy", C=C, m=m):
            return ms.factorize(C, order=4, core_size=m // 8, schedule=schedule, options=options).error
        greedy = run()
        rows.append(["hierarchical covariance", m, 4, f"{run(schedule='staged') / greedy:.3f}", "",
                     f"{spread(run, greedy):.3f}"])
        report_row(rows[-1])
    for m in (int(x) for x in args.means_sizes.split(",")) if "means" in parts else []:
        M = ms.datasets.class_means(m, 256, seed=0)
        for order, core in ((5, None), (4, m // 8)):
            seconds, errors = [], []
            for schedule in ("greedy", "staged"):
                started = time.perf_counter()
                errors.append(ms.factorize(means=M, order=order, core_size=core, schedule=schedule).error)
                seconds.append(time.perf_counter() - started)
            rows.append([f"class means D = 256, {'full depth' if core is None else 'core m/8'}", m, order,
                         f"{errors[1] / errors[0]:.3f}", "", f"greedy {seconds[0]:.1f} s, staged {seconds[1]:.1f} s"])
            report_row(rows[-1])
    print_table(f"Staged over greedy, {datetime.date.today().isoformat()}, mmf_stream {ms.__version__}",
                ["input", "m", "k", "error staged/greedy", "fidelity staged/greedy", "greedy spread (or seconds)"],
                rows, args.markdown)


if __name__ == "__main__":
    main()
