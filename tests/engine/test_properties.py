"""Property tests over random symmetric inputs."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import mmf_stream as ms


@st.composite
def problems(draw):
    size = draw(st.integers(2, 14))
    entries = draw(
        arrays(np.float64, (size, size), elements=st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32))
    )
    matrix = (entries + entries.T) / 2
    order = draw(st.integers(2, size))
    core = draw(st.integers(order - 1, size - 1))
    seed = draw(st.integers(0, 3))
    return matrix, order, core, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_any_symmetric_matrix_gives_an_exact_valid_mmf(problem):
    matrix, order, core, seed = problem
    f = ms.factorize(matrix, order=order, core_size=core, seed=seed)
    scale = max(1.0, np.linalg.norm(matrix))
    assert abs(f.error - np.linalg.norm(matrix - f.reconstruct())) <= 1e-8 * scale
    assert f.n_levels == matrix.shape[0] - core and f.core.shape == (core,)
    assert len(set(f.wavelets.tolist()) | set(f.core.tolist())) == matrix.shape[0]
    for rotation in f.rotations:
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(order), atol=1e-10)
    x = np.arange(matrix.shape[0], dtype=float)
    np.testing.assert_allclose(f.inverse_transform(f.transform(x)), x, atol=1e-9)
