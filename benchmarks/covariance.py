"""Class covariance and store benchmark: throughput, peak memory, append latency.

Run:  python benchmarks/covariance.py [--rows 1000000] [--dim 256] [--classes 1000]

Rows 1-2: features (float32, n x D) in a Zarr array on local disk (written
first, with Zarr's default compression), ``ms.class_covariance`` streams them.
Baseline in the same run: NumPy reading the whole array into memory and doing
the group-by with ``np.add.at`` (what one writes without streaming). Each runs
in a fresh subprocess; peak = resident memory above the baseline after imports.

Row 3: appending one class to a store of ``--store-classes`` classes, with the
store open (its means cached), median over 20 appends; and the same with the
store re-opened before each append (cold).

Rows 5-6: an append that updates half the classes of a store: a store of
``--update-classes`` classes made from ``--update-rows / 2`` rows, then
``--update-rows`` rows whose labels update half of those classes and add as
many new ones (float32 features in memory, D = ``--update-dim``). Baseline in
the same run: making a fresh store of that many classes from the first rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import STATUS_MB, print_table  # noqa: E402

_CHILD = r"""
import json, sys, time
import numpy as np, zarr
import mmf_stream as ms
""" + STATUS_MB + r"""
features = zarr.open_array(sys.argv[1], mode="r")
labels = np.load(sys.argv[2])
ms.class_covariance(np.ones((4, 3), dtype=np.float32), np.arange(4))  # compile
baseline = status_mb("VmRSS")
start = time.perf_counter()
if sys.argv[3] == "mmf_stream":
    result = ms.class_covariance(features, labels)
    matrix = result.matrix
else:
    data = features[...]
    unique, codes = np.unique(labels, return_inverse=True)
    sums = np.zeros((unique.size, data.shape[1]))
    np.add.at(sums, codes, data)
    means = sums / np.bincount(codes)[:, None]
    matrix = means @ means.T
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": status_mb("VmHWM") - baseline, "trace": float(np.trace(matrix))}))
"""


def write_features(path: Path, rows: int, dim: int, classes: int, seed: int = 0) -> Path:
    import zarr

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=rows)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    array = zarr.create_array(str(path / "features.zarr"), shape=(rows, dim), chunks=(65536, dim), dtype="f4")
    step = 262144
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        block = centres[labels[start:stop]] + rng.normal(scale=0.5, size=(stop - start, dim)).astype(np.float32)
        array[start:stop] = block
    np.save(path / "labels.npy", labels)
    return path


def run_child(path: Path, method: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path / "features.zarr"), str(path / "labels.npy"), method],
        capture_output=True, text=True, env=env, check=False,
    )
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def append_latency(path: Path, classes: int, dim: int, repeats: int = 20) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    store = ms.Store.create(path / "store.zarr")
    store.add_classes(rng.normal(size=(classes, dim)), np.arange(classes))
    warm = []
    for i in range(repeats):
        features = rng.normal(size=(5, dim))
        start = time.perf_counter()
        store.add_classes(features, np.full(5, classes + i))
        warm.append(time.perf_counter() - start)
    cold = []
    for i in range(repeats):
        features = rng.normal(size=(5, dim))
        start = time.perf_counter()
        ms.Store.open(path / "store.zarr").add_classes(features, np.full(5, classes + repeats + i))
        cold.append(time.perf_counter() - start)
    return float(np.median(warm)), float(np.median(cold))


def update_append(path: Path, classes: int, dim: int, rows: int) -> tuple[float, float]:
    """Seconds to make a fresh store of ``classes`` classes (baseline), and to append
    ``rows`` rows that update ``classes // 2`` of them and add ``classes // 2`` new ones."""
    rng = np.random.default_rng(2)
    half = classes // 2
    first = rows // 2
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, size=first - classes)])
    features = rng.normal(size=(first, dim)).astype(np.float32)
    start = time.perf_counter()
    store = ms.Store.create(path / "update.zarr")
    store.add_classes(features, labels)
    fresh = time.perf_counter() - start
    labels = np.concatenate([np.arange(half, classes + half), rng.integers(half, classes + half, size=rows - classes)])
    features = rng.normal(size=(rows, dim)).astype(np.float32)
    start = time.perf_counter()
    report = store.add_classes(features, labels)
    update = time.perf_counter() - start
    assert len(report["updated"]) == classes - half and len(report["added"]) == half
    return fresh, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--store-classes", type=int, default=10_000)
    parser.add_argument("--update-classes", type=int, default=5000)
    parser.add_argument("--update-rows", type=int, default=1_000_000)
    parser.add_argument("--update-dim", type=int, default=64)
    parser.add_argument("--only-update", action="store_true", help="run only the update rows (5-6)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mmf-bench-"))
    try:
        rows = []
        gigabytes = args.rows * args.dim * 4 / 1e9
        if not args.only_update:
            write_features(tmp, args.rows, args.dim, args.classes)
        for method in ("mmf_stream", "numpy in memory (baseline)") if not args.only_update else ():
            result = run_child(tmp, "mmf_stream" if method == "mmf_stream" else "numpy")
            rows.append([
                f"class_covariance: {method}", f"{args.rows:,} x {args.dim} f32, {args.classes} classes",
                f"{result['seconds']:.2f}", f"{gigabytes / result['seconds']:.2f}", f"{result['peak_mb']:.0f}",
            ])
            print("  done:", rows[-1], file=sys.stderr, flush=True)
        if not args.only_update:
            warm, cold = append_latency(tmp, args.store_classes, args.dim)
            rows.append(["store append, 1 class (open store)", f"{args.store_classes:,} classes, D = {args.dim}",
                         f"{warm * 1000:.1f} ms", "-", "-"])
            rows.append(["store append, 1 class (re-opened each time)", f"{args.store_classes:,} classes, D = {args.dim}",
                         f"{cold * 1000:.1f} ms", "-", "-"])
        fresh, update = update_append(tmp, args.update_classes, args.update_dim, args.update_rows)
        half = args.update_classes // 2
        rows.append(["fresh store (baseline)", f"{args.update_rows // 2:,} rows -> {args.update_classes:,} classes, "
                     f"D = {args.update_dim}", f"{fresh:.2f}", "-", "-"])
        rows.append(["store append updating half the classes", f"{args.update_rows:,} rows: "
                     f"{args.update_classes - half:,} updated + {half:,} new, D = {args.update_dim}",
                     f"{update:.2f}", "-", "-"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    header = ["task", "data", "seconds", "GB/s", "peak MB"]
    print_table(
        f"class covariance, {datetime.date.today().isoformat()}, mmf_stream {ms.__version__}, "
        f"{os.cpu_count()} cores; appends: median of 20",
        header, rows, args.markdown,
    )


if __name__ == "__main__":
    main()
