"""Row-block arithmetic: the same numbers whatever the rows are stored with (the Dask engine's premise)."""

import subprocess
import sys

import numpy as np
import pytest

from mmf_stream.engine import gram_kernels as GK
from mmf_stream.engine import kernels as K
from mmf_stream.engine import row_blocks as P

from matrix_helpers import run_under_each_openblas_core


@pytest.mark.parametrize("shape", [(1100, 1100, 64), (999, 40, 64), (257, 513, 33)])
def test_stable_matmul_rows_do_not_depend_on_the_other_rows(shape):
    rng = np.random.default_rng(0)
    rows, inner, columns = shape
    a = rng.standard_normal((rows, inner))
    b = rng.standard_normal((inner, columns))
    full = P.stable_matmul(a, b)
    assert np.allclose(full, a @ b, rtol=1e-12, atol=1e-12)
    for _ in range(20):
        subset = np.sort(rng.choice(rows, size=int(rng.integers(1, rows)), replace=False))
        assert np.array_equal(P.stable_matmul(a[subset], b), full[subset])
        assert np.array_equal(P.stable_matmul(a[subset], b[:, :7]), full[subset][:, :7])


def test_stable_matmul_does_not_depend_on_the_blas_thread_count(tmp_path):
    script = (
        "import sys, numpy as np\n"
        "from mmf_stream.engine.row_blocks import stable_matmul, stable_gram\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((1100, 1100)); b = rng.standard_normal((1100, 64))\n"
        "x = rng.standard_normal((233, 40))\n"
        "np.savez(sys.argv[1], ab=stable_matmul(a, b), xx=stable_gram(x), xw=stable_matmul(x @ np.eye(40), x.T))\n"
    )
    results = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.npz"
        env = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, timeout=120)
        results.append(np.load(out))
    for name in ("ab", "xx", "xw"):
        assert np.array_equal(results[0][name], results[1][name]), name


def _left_to_right(a, b, i, j):
    total = 0.0
    for k in range(a.shape[1]):
        total = total + float(a[i, k]) * float(b[k, j])
    return total


@pytest.mark.parametrize("shape", [(1100, 300, 64), (257, 513, 33), (3, 5, 2)])
def test_stable_matmul_entries_are_left_to_right_sums(shape):
    """Each entry is one sum in ascending order of the inner index: what no BLAS kernel promises."""
    rng = np.random.default_rng(6)
    rows, inner, columns = shape
    a = rng.standard_normal((rows, inner)) * np.exp(rng.uniform(-8, 8, size=(rows, inner)))
    b = rng.standard_normal((inner, columns))
    out = P.stable_matmul(a, b)
    for i, j in zip(rng.integers(0, rows, 40), rng.integers(0, columns, 40)):
        assert out[i, j] == _left_to_right(a, b, i, j)
    # transposed operands (the cogram and gram paths) sum the same way
    x = rng.standard_normal((300, 24))
    cogram, gram = P.stable_cogram(x), P.stable_gram(x[:40])
    assert np.array_equal(cogram, cogram.T) and np.array_equal(gram, gram.T)
    assert cogram[3, 17] == _left_to_right(x.T, x, 3, 17) and gram[5, 9] == _left_to_right(x[:40], x[:40].T, 5, 9)
    energies = P.wavelet_energies(x[:40], cogram)
    y = P.stable_matmul(x[:40], cogram)
    assert energies[7] == sum((float(y[7, j]) * float(x[7, j]) for j in range(24)), 0.0)


def test_stable_products_do_not_depend_on_the_blas_kernel(tmp_path):
    """The same numbers whichever kernel OpenBLAS picks for the CPU (SkylakeX's small-matrix
    kernels rounded rows differently from the main kernel; Haswell's and Prescott's differ)."""
    script = (
        "import sys, numpy as np\n"
        "from mmf_stream.engine.row_blocks import stable_matmul, stable_gram, stable_cogram, wavelet_energies\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((1100, 700)); b = rng.standard_normal((700, 64))\n"
        "x = rng.standard_normal((233, 40)); s = np.sort(rng.choice(1100, 37, replace=False))\n"
        "w = stable_cogram(x)\n"
        "np.savez(sys.argv[1], ab=stable_matmul(a, b), sub=stable_matmul(a[s], b[:, :7]), xx=stable_gram(x), "
        "w=w, e=wavelet_energies(x, w))\n"
    )
    results = run_under_each_openblas_core(script, tmp_path)
    first = next(iter(results.values()))
    for core, result in results.items():
        for name in ("ab", "sub", "xx", "w", "e"):
            assert np.array_equal(result[name], first[name]), (core, name)


def test_blocked_gram_is_the_in_order_sum_of_fixed_blocks():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 24))
    gram = P.blocked_gram(x, 256)
    assert np.allclose(gram, x.T @ x, rtol=1e-12)
    partials = [P.stable_cogram(x[start:stop]) for start, stop in P.block_bounds(1000, 256)]
    assert len(partials) == 4
    assert np.array_equal(P.sum_in_order(partials), gram)


def test_rotate_columns_row_by_row_is_q_c_q_transpose():
    rng = np.random.default_rng(2)
    n, k, levels = 60, 4, 25
    c = rng.standard_normal((n, n))
    c = c + c.T
    tuples = np.array([rng.choice(n, size=k, replace=False) for _ in range(levels)], dtype=np.int64)
    rotations = np.array([np.linalg.qr(rng.standard_normal((k, k)))[0] for _ in range(levels)])
    q = np.eye(n)
    K.apply_rotations(q, tuples, rotations, False)  # Q = Q_L ... Q_1
    rows = c.copy()
    K.apply_rotations(rows, tuples, rotations, False)
    GK.rotate_columns(rows, tuples, rotations)
    assert np.allclose(rows, q @ c @ q.T, atol=1e-12)
    # any block of rows gives the same numbers as the whole
    block = c[17:40].copy()
    GK.rotate_columns(block, tuples, rotations)
    whole = c.copy()
    GK.rotate_columns(whole, tuples, rotations)
    assert np.array_equal(block, whole[17:40])


def test_ordered_row_energy_is_the_sequential_removal_energy():
    rng = np.random.default_rng(3)
    n = 30
    c = rng.standard_normal((n, n))
    c = c + c.T
    wavelets = np.array([7, 2, 19, 11], dtype=np.int64)
    recorded = np.arange(4, dtype=np.int64)
    diagonal, energy = GK.ordered_row_energy(c, wavelets, recorded, np.ones(n, dtype=np.bool_), wavelets)
    active = np.ones(n, dtype=bool)
    for i, s in enumerate(wavelets):
        active[s] = False  # removed in order: its row over what is still active
        assert diagonal[i] == c[s, s]
        assert energy[i] == pytest.approx(float(np.sum(c[s, active] ** 2)), rel=1e-12)
    # a subset of the wavelets, rows stored elsewhere: the same numbers
    subset = np.array([1, 3], dtype=np.int64)
    rows = c[wavelets[subset]].copy()
    d2, e2 = GK.ordered_row_energy(rows, np.arange(2, dtype=np.int64), subset, np.ones(n, dtype=np.bool_), wavelets)
    assert np.array_equal(d2, diagonal[subset]) and np.array_equal(e2, energy[subset])


def test_symmetric_rows_matches_the_local_symmetric_part():
    from mmf_stream import validation as V

    rng = np.random.default_rng(4)
    c = rng.standard_normal((70, 70))
    c = c + c.T
    c[25, 9] += 1e-9
    local = V.symmetric_matrix(c, tolerance=1e-6)
    out, worst, i, j, largest, finite = GK.symmetric_rows(c[20:50], c[:, 20:50])
    assert np.array_equal(out, local[20:50]) and finite
    assert worst == pytest.approx(1e-9, rel=1e-3) and (i + 20, j) == (25, 9)
    assert largest == np.max(np.abs(np.concatenate([c[20:50].ravel(), c[:, 20:50].ravel()])))
    c[25, 4] = np.nan
    assert not GK.symmetric_rows(c[20:50], c[:, 20:50])[5]


def test_symmetry_signature_tells_exactly_symmetric_from_not():
    from mmf_stream.engine.dask_stages import signature_multipliers

    rng = np.random.default_rng(5)
    n = 90
    c = rng.standard_normal((n, n))
    c = c + c.T
    left, right = signature_multipliers(n)

    def folded(matrix):
        forward = backward = np.uint64(0)
        largest = squares = 0.0
        for start in range(0, n, 32):  # blocks of rows, in any grouping
            f, b, finite, big, sq = GK.symmetry_signature(np.ascontiguousarray(matrix[start:start + 32]),
                                                          np.arange(start, min(start + 32, n)), left, right)
            forward, backward = forward ^ f, backward ^ b
            largest, squares = max(largest, big), squares + sq
            assert finite
        return forward == backward, largest, squares

    symmetric, largest, squares = folded(c)
    assert symmetric and largest == np.abs(c).max() and squares == pytest.approx(np.sum(c * c), rel=1e-12)
    for i, j, delta in ((3, 70, 1e-15), (0, 1, 1.0), (89, 5, -2.0)):
        d = c.copy()
        d[i, j] += delta
        assert not folded(d)[0]
    swapped = c.copy()
    swapped[[4, 9]] = swapped[[9, 4]]  # same entries, other places: not symmetric
    assert not folded(swapped)[0]
    nan = c.copy()
    nan[7, 7] = np.nan
    assert not GK.symmetry_signature(nan, np.arange(n), left, right)[2]
