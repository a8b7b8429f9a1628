"""Knock-out (Factorization.remove) against batch MMF: time per removal and update, and the error
after removing and updating a fraction of the classes.

For each size m (class means ``ms.class_means(m, D)``): factorize; time ``--ops`` single
removals and ``--ops`` single updates (knock-out, then insertion of a new mean) from that
result; then remove ``--fraction`` of the classes and update as many, one at a time (the
engine's default repair policy: ``repair`` every ``repair_interval`` changes), and compare the
error with a batch run on the same final classes. Prints one table (Markdown with --markdown).

    python benchmarks/knockout.py --sizes 5000 20000 --dim 512 --fraction 0.01
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mmf_stream as ms
from _common import print_table


def run(size: int, dim: int, ops: int, fraction: float, seed: int) -> list:
    means = ms.class_means(size, dim, seed=seed)
    labels = [f"c{i}" for i in range(size)]
    start = time.perf_counter()
    f = ms.factorize(means=means, order=5, labels=labels)
    batch_time = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    removal, update = [], []
    for index in rng.choice(size, size=ops, replace=False).tolist():
        start = time.perf_counter()
        f.remove([labels[index]])
        removal.append(time.perf_counter() - start)
    fresh = ms.class_means(ops, dim, seed=seed + 1)
    for number, index in enumerate(rng.choice(size, size=ops, replace=False).tolist()):
        start = time.perf_counter()
        f.remove([labels[index]]).insert(mean=fresh[number], label=labels[index])
        update.append(time.perf_counter() - start)
    changes = max(1, int(round(fraction * size)))
    current, rows, names = f, means.copy(), list(labels)
    new_means = ms.class_means(changes, dim, seed=seed + 2)
    every = f.repair_interval()
    for step in range(2 * changes):
        index = int(rng.integers(current.size))
        label = current.labels[index].item()
        repair = every > 0 and (step + 1) % every == 0
        current = current.remove([label], repair=repair)
        position = names.index(label)
        rows = np.delete(rows, position, axis=0)
        del names[position]
        if step % 2:  # an update: the class comes back with a new mean, at the end
            current = current.insert(mean=new_means[step // 2], label=label)
            rows = np.vstack([rows, new_means[step // 2]])
            names.append(label)
    assert current.labels.tolist() == names
    batch = ms.factorize(means=rows, order=5)
    return [f"{size:,}", f"{batch_time:.1f}", f"{np.median(removal):.3f}", f"{np.median(update):.3f}",
            f"{changes} + {changes}", f"{current.error / batch.error:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ops", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = [run(size, args.dim, args.ops, args.fraction, args.seed) for size in args.sizes]
    print_table(f"knock-out vs batch MMF, D = {args.dim}, order 5 ({time.strftime('%Y-%m-%d')})",
                ["m", "batch s", "removal median s", "update median s", "removed + updated",
                 "error / batch after"], rows, args.markdown)


if __name__ == "__main__":
    main()
