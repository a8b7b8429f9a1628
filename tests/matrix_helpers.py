"""Test matrices and the invariants every MMF must satisfy (shared by the test folders)."""

import subprocess
import sys

import numpy as np

from mmf_stream.engine.row_blocks import stable_gram


def random_symmetric(size: int, seed: int = 0, rank: int | None = None) -> np.ndarray:
    """A random symmetric positive semi-definite matrix with a spread spectrum."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(size, rank or size))
    return stable_gram(factors) / (rank or size)  # not BLAS: the same matrix on every CPU


def planted_blocks(blocks: int, block_size: int, seed: int = 0):
    """Block-diagonal covariance (random dense PSD blocks, rows shuffled).

    Returns the matrix and each row's block. Rotations inside a block keep
    the matrix block diagonal, so any tuple that mixes blocks is a mistake of
    the candidate search, not a tie.
    """
    rng = np.random.default_rng(seed)
    size = blocks * block_size
    membership = np.repeat(np.arange(blocks), block_size)
    matrix = np.zeros((size, size))
    for b in range(blocks):
        rows = slice(b * block_size, (b + 1) * block_size)
        factors = rng.normal(size=(block_size, 3 * block_size)) + rng.normal(size=(1, 3 * block_size))
        matrix[rows, rows] = stable_gram(factors) / (3 * block_size)  # not BLAS: the same matrix on every CPU
    order = rng.permutation(size)
    return matrix[np.ix_(order, order)], membership[order]


def check_valid(f, C):
    """Every invariant an MMF must satisfy."""
    reconstruction_error = np.linalg.norm(C - f.reconstruct())
    assert np.isclose(f.error, reconstruction_error, rtol=1e-7, atol=1e-9 * max(1, np.linalg.norm(C)))
    assert np.isclose(np.sum(f.level_errors), reconstruction_error**2, rtol=1e-6, atol=1e-12 * max(1.0, np.linalg.norm(C) ** 2))
    for level in f.levels:
        np.testing.assert_allclose(level.rotation @ level.rotation.T, np.eye(f.order), atol=1e-10)
        assert np.isclose(np.linalg.det(level.rotation), 1.0)
        assert len(set(level.indices.tolist())) == f.order
        assert level.wavelet in level.indices
    assert len(set(f.wavelets.tolist())) == f.n_levels
    assert not set(f.wavelets.tolist()) & set(f.core.tolist())
    assert sorted(f.wavelets.tolist() + f.core.tolist()) == list(range(f.size))
    # a wavelet takes no part in later levels
    for i, level in enumerate(f.levels):
        for later in f.levels[i + 1 :]:
            assert level.wavelet not in later.indices


def openblas_cores_this_cpu_runs() -> list[str]:
    """The OpenBLAS kernels (``OPENBLAS_CORETYPE``) this CPU can run: SkylakeX only with AVX-512."""
    flags = open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else ""
    cores = ["Prescott", "Haswell"] if " avx2" in flags else ["Prescott"]
    return cores + (["SkylakeX"] if " avx512f" in flags else [])


def run_under_each_openblas_core(script: str, tmp_path) -> dict:
    """Run ``script`` (it saves an ``.npz`` to ``sys.argv[1]``) once per OpenBLAS kernel; the loaded results."""
    results = {}
    for core in openblas_cores_this_cpu_runs():
        out = tmp_path / f"{core}.npz"
        env = {"OPENBLAS_CORETYPE": core, "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, timeout=300)
        results[core] = np.load(out)
    return results
