"""How faithfully the MMF graph follows a planted hierarchy, against dendrograms.

Run:  python benchmarks/fidelity.py [--markdown] [--quick | --extra] [--orders 2,3,4,5] [--seed 0]

Inputs: ``ms.datasets.planted_tree(depth, branching, D, noise=, offset=)``,
class means on a planted tree (post-ReLU-like, a shared positive offset,
classes shuffled), in several settings (depth, branching, D, noise, offset).
For each order ``k``, each class's *partners* are:

* MMF: the other members of the first level whose tuple contains it
  (:func:`mmf_stream.fidelity.first_partners`), for
  ``ms.factorize(means=M, order=k, schedule=...)`` with
  ``options={"neighbours": "faithful"}`` and with the default
  ``options={"neighbours": "energy"}`` (the only rule up to 0.6), greedy and staged;
* average-linkage (cosine) and Ward dendrograms (SciPy): its ``k - 1``
  nearest leaves (:func:`mmf_stream.fidelity.dendrogram_partners`);
* random: ``k - 1`` other classes drawn uniformly.

Each cell is the *fidelity*, the mean depth of the lowest common ancestor of a
class and its partners in the planted tree (``depth - 1`` = siblings;
:func:`mmf_stream.fidelity.tree_fidelity`). ``/avg`` columns divide by the
average-linkage dendrogram's fidelity (the target: >= 0.95). The error
columns give ``||C - M(C)||_F`` of the faithful run over the energy rule's
(same schedule).
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
from mmf_stream.fidelity import dendrogram_partners, first_partners, tree_fidelity  # noqa: E402

#: (depth, branching, D, noise, offset): the issue's tree, a noisy narrow one, one without the
#: shared offset, one with a dominant offset
SETTINGS = [
    (4, 6, 256, 0.0, 1.0),
    (3, 6, 16, 0.3, 1.0),
    (3, 8, 64, 0.2, 0.0),
    (4, 4, 256, 0.1, 3.0),
]
QUICK_SETTINGS = [(3, 6, 64, 0.0, 1.0), (3, 5, 16, 0.3, 1.0)]
#: ``--extra``: trees nobody tuned the rule on, each with its own seed (depth, branching, D, noise,
#: offset, seed): other seeds of the noisy tree, noisier and wider trees, a deep binary-like one
EXTRA_SETTINGS = [
    (3, 6, 16, 0.3, 1.0, 1), (3, 6, 16, 0.3, 1.0, 2), (3, 7, 32, 0.5, 0.5, 0), (4, 5, 64, 0.3, 2.0, 0),
    (2, 20, 32, 0.3, 1.0, 0), (5, 3, 64, 0.2, 1.0, 0), (3, 10, 32, 0.4, 1.0, 0), (3, 9, 24, 0.6, 1.0, 3),
]


def random_partners(size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, ``count`` other classes drawn uniformly without replacement."""
    out = []
    for i in range(size):
        others = rng.choice(size - 1, size=count, replace=False)
        out.append(others + (others >= i))
    return out


def measure(setting: tuple, order: int, seed: int) -> dict:
    depth, branching, dim, noise, offset = setting
    M, paths = ms.datasets.planted_tree(depth, branching, dim, noise=noise, offset=offset, seed=seed)
    size = M.shape[0]
    out = {"average": tree_fidelity(dendrogram_partners(M, order - 1, "average"), paths),
           "ward": tree_fidelity(dendrogram_partners(M, order - 1, "ward"), paths),
           "random": tree_fidelity(random_partners(size, order - 1, np.random.default_rng(seed)), paths)}
    for schedule in ("greedy", "staged"):
        for rule in ("faithful", "energy"):
            started = time.perf_counter()
            f = ms.factorize(means=M, order=order, seed=seed, schedule=schedule, options={"neighbours": rule})
            out[rule, schedule] = tree_fidelity(first_partners(f.tuples, size), paths)
            out[rule, schedule, "error"] = f.error
            out[rule, schedule, "seconds"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--quick", action="store_true", help="small trees only (smoke test)")
    parser.add_argument("--extra", action="store_true", help="the trees nobody tuned for (EXTRA_SETTINGS)")
    parser.add_argument("--orders", default="2,3,4,5", help="comma-separated orders k (default 2,3,4,5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    orders = [int(x) for x in args.orders.split(",")]
    header = ["tree (depth/branch/D/noise/offset)", "m", "k", "avg-link", "Ward", "random",
              "MMF greedy", "/avg", "MMF staged", "/avg", "energy greedy", "energy staged",
              "error greedy/energy", "error staged/energy", "error staged/greedy"]
    rows = []
    settings = QUICK_SETTINGS if args.quick else EXTRA_SETTINGS if args.extra else SETTINGS
    for setting in settings:
        depth, branching, dim, noise, offset = setting[:5]
        seed = setting[5] if len(setting) > 5 else args.seed
        for order in orders:
            r = measure(setting[:5], order, seed)
            avg = r["average"]
            rows.append([
                f"{depth}/{branching}/{dim}/{noise:g}/{offset:g}" + (f" seed {seed}" if args.extra else ""),
                branching**depth, order,
                f"{avg:.2f}", f"{r['ward']:.2f}", f"{r['random']:.2f}",
                f"{r['faithful', 'greedy']:.2f}", f"{r['faithful', 'greedy'] / avg:.3f}",
                f"{r['faithful', 'staged']:.2f}", f"{r['faithful', 'staged'] / avg:.3f}",
                f"{r['energy', 'greedy']:.2f}", f"{r['energy', 'staged']:.2f}",
                f"{r['faithful', 'greedy', 'error'] / r['energy', 'greedy', 'error']:.3f}",
                f"{r['faithful', 'staged', 'error'] / r['energy', 'staged', 'error']:.3f}",
                f"{r['faithful', 'staged', 'error'] / r['faithful', 'greedy', 'error']:.3f}",
            ])
            report_row(rows[-1])
    print_table(
        f"MMF graph fidelity on planted trees, {datetime.date.today().isoformat()}, seed {args.seed}, "
        f"mmf_stream {ms.__version__}: mean LCA depth of each class's partners (depth - 1 = siblings)",
        header, rows, args.markdown,
    )


if __name__ == "__main__":
    main()
