"""Compilation of the numba kernels: warm_up() (mmf-stream warmup) covers everything a factorization uses."""

import sys

import numpy as np
from numba.core.registry import CPUDispatcher

import mmf_stream as ms
from mmf_stream.warmup import warm_up
from mmf_stream.engine import kernels as K


def _signatures() -> dict[str, int]:
    """Compiled signatures of every numba kernel in the package's loaded modules."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "mmf_stream" or name.startswith("mmf_stream.")):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher):
                found[f"{value.py_func.__module__}.{value.py_func.__qualname__}"] = len(value.signatures)
    return found


def test_warm_up_compiles_everything_a_factorization_uses():
    seconds = warm_up()
    assert isinstance(seconds, float) and seconds >= 0.0
    before = _signatures()

    C = ms.hierarchical_covariance(150, seed=1)
    for order in (2, 4, 5):
        f = ms.factorize(C, order=order, core_size=20 if order > 2 else None)
    f = f.insert(C[:, 0] * 0.5, 1.0)
    f.transform(np.ones(f.size))
    f.reconstruct()
    ms.factorize(C.astype(np.float32), order=3)
    ms.factorize(C[:9, :9], order=3, candidates="exhaustive")

    after = _signatures()
    grown = {name: (before.get(name, 0), count) for name, count in after.items() if count > before.get(name, 0)}
    assert not grown, f"compiled after warm_up: {grown}"


def test_wavelet_direction_compiles_once_per_layout():
    """The engine calls wavelet_direction with int64 (not literal) counts: one compilation."""
    warm_up()
    sigs = K.wavelet_direction.signatures
    assert len(sigs) == len(set(sigs))
    assert all("Literal" not in str(sig) for sig in sigs)
