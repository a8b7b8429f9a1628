"""Compile every numba kernel ahead of time (``mmf-stream warmup``, install steps, Dask worker images).

Numba compiles a kernel on its first call and caches the machine code on disk
(``__pycache__`` beside the sources, or ``NUMBA_CACHE_DIR``). :func:`warm_up`
runs tiny problems through every engine path, with the argument types the
engines pass, so a later first factorization only loads the kernels.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

#: the tiny problems 'warmup' factors: every engine path at least once (arrays only: the order and the
#: sizes do not change the compiled signatures)
_WARMUP_SIZE = 200
_WARMUP_OPTIONS = {"cluster_size": 32, "greedy_below": 40}


def warm_up() -> float:
    """Compile (and let numba cache) every kernel the engines use; return the seconds it took.

    Runs dense and factored factorizations (greedy, staged, exhaustive; orders
    4 and 5; float64 and float32, in memory and memory-mapped), insertions with
    and without a repair, transforms, reconstructions and the class covariance
    pass, each on a tiny problem. Once cached, it takes a few seconds.
    """
    import mmf_stream as ms

    start = time.perf_counter()
    size, options = _WARMUP_SIZE, _WARMUP_OPTIONS
    C = ms.hierarchical_covariance(size, seed=0)
    M = ms.class_means(size, 16)
    with tempfile.TemporaryDirectory(prefix="mmf-stream-warmup-") as scratch:
        # the matrix in memory and as the CLI reads .npy (memory-mapped, read-only), float64 and float32
        np.save(os.path.join(scratch, "c64.npy"), C)
        np.save(os.path.join(scratch, "c32.npy"), C.astype(np.float32))
        dense_inputs = [C, C.astype(np.float32), ms.read_matrix(os.path.join(scratch, "c64.npy")),
                        ms.read_matrix(os.path.join(scratch, "c32.npy"))]
        for matrix in dense_inputs:
            ms.factorize(matrix, order=4, core_size=20, schedule="greedy", options=options)
        results = []
        for schedule in ("greedy", "staged"):
            for order in (4, 5):
                dense = ms.factorize(np.ascontiguousarray(C[:-3, :-3]), order=order, core_size=20, schedule=schedule, options=options)
                # greedy: first without the explicit Gram (the path of more than 2000 classes), then with it
                factored = ms.factorize(means=M[:-3], order=order, core_size=20, schedule=schedule,
                                        options={**options, "auto_factored_greedy_max": 0})
                results.append((dense, factored))
        ms.factorize(C[:10, :10], order=3, candidates="exhaustive")
        ms.factorize(means=M[:10], order=3, candidates="exhaustive")
        # insertion: one class and a block, with and without a repair, dense columns and means
        for dense, factored in results[:2]:
            for count, repair in ((1, False), (3, True)):
                columns = C[: size - 3 + count, size - 3: size - 3 + count]  # (m + b) x b
                dense.insert_many(columns, labels=None, repair=repair)
                factored.insert_many(means=M[size - 3: size - 3 + count], repair=repair)
        dense, factored = results[0]
        dense.reconstruct(), dense.inverse_transform(dense.transform(np.ones(dense.size)))
        factored.reconstruct()
        # the class covariance pass of 'covariance': float32 and float64 features, in memory and memory-mapped
        from mmf_stream.io import read_features

        rows = min(64, size)
        labels = np.arange(rows) % 8
        for dtype in (np.float32, np.float64):
            features = M[:rows].astype(dtype)
            np.save(os.path.join(scratch, "features.npy"), features)
            ms.class_covariance(features, labels)
            ms.class_covariance(read_features(os.path.join(scratch, "features.npy")), labels)
    # the input checks run on the user's array as given: float64 or float32, C- or F-ordered or strided
    from mmf_stream.engine.kernels import max_asymmetry, symmetrize_into

    for dtype in (np.float64, np.float32):
        square = C[:8, :8].astype(dtype)
        for array in (square, np.asfortranarray(square), square[::2, ::2]):
            max_asymmetry(array)
            symmetrize_into(array, np.empty(array.shape))
    # the Dask engine's read kernels (its stage kernels ran above, through the local engine)
    from mmf_stream.engine import gram_kernels as GK
    from mmf_stream.engine.dask_stages import signature_multipliers

    left, right = signature_multipliers(8)
    for dtype in (np.float64, np.float32):
        square = C[:8, :8].astype(dtype)
        GK.symmetric_rows(square[:4], square[:, :4])
    GK.symmetry_signature(C[:4, :8].copy(), np.arange(4, dtype=np.int64), left, right)
    GK.take_block_into(C[:8, :8].copy(), np.arange(3, dtype=np.int64), np.arange(5, dtype=np.int64),
                       np.empty((3, 5)), np.arange(3, dtype=np.int64))
    return time.perf_counter() - start
