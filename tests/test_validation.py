"""Bad input: clear one-line errors from the API."""

import numpy as np
import pytest

import mmf_stream as ms

from matrix_helpers import random_symmetric


@pytest.mark.parametrize(
    "matrix, error, message",
    [
        (np.ones((3, 4)), ValueError, "must be square, got shape 3 x 4"),
        (np.ones(5), ValueError, "must be 2-D"),
        (np.zeros((0, 0)), ValueError, "empty"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "real numbers"),
        (np.eye(3) * 1j, TypeError, "real"),
        ("not a matrix", ValueError, "no such file"),
    ],
)
def test_bad_matrices(matrix, error, message):
    with pytest.raises(error, match=message):
        ms.factorize(matrix, order=2)


def test_asymmetry_names_the_worst_entry():
    C = random_symmetric(6, seed=1)
    C[4, 1] += 1e-3
    with pytest.raises(ValueError, match=r"not symmetric: largest asymmetry \|C\[1,4\] - C\[4,1\]\| = 0.001"):
        ms.factorize(C, order=2)
    # within tolerance it is symmetrised and accepted
    C = random_symmetric(6, seed=1)
    C[4, 1] += 1e-12
    assert ms.factorize(C, order=2).size == 6


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite(value):
    C = random_symmetric(5)
    C[2, 3] = C[3, 2] = value
    with pytest.raises(ValueError, match=r"non-finite entries .* first at \(2, 3\)"):
        ms.factorize(C, order=2)


@pytest.mark.parametrize(
    "order, core, error, message",
    [
        (1, None, ValueError, "order must be at least 2"),
        (11, None, ValueError, "order 11 exceeds the matrix size 10"),
        (2.5, None, TypeError, "order must be an integer"),
        (True, None, TypeError, "order must be an integer"),
        (4, 2, ValueError, "core_size must be between order - 1 = 3 and size - 1 = 9, got 2"),
        (4, 10, ValueError, "core_size must be between"),
        (4, "3", TypeError, "core_size must be an integer"),
    ],
)
def test_order_and_core_size(order, core, error, message):
    with pytest.raises(error, match=message):
        ms.factorize(random_symmetric(10), order=order, core_size=core)


def test_labels_errors():
    C = random_symmetric(4)
    with pytest.raises(ValueError, match="got 3 labels for a matrix of size 4"):
        ms.factorize(C, order=2, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="labels must be unique; 'a' appears 2 times"):
        ms.factorize(C, order=2, labels=["a", "b", "a", "c"])
    with pytest.raises(TypeError, match="all integers or all strings"):
        ms.factorize(C, order=2, labels=["a", 1, "b", "c"])
    with pytest.raises(TypeError, match="not a single string"):
        ms.factorize(C, order=2, labels="abcd")


def test_other_arguments():
    C = random_symmetric(4)
    with pytest.raises(ValueError, match="candidates must be one of"):
        ms.factorize(C, order=2, candidates="random")
    with pytest.raises(TypeError, match="seed must be an integer"):
        ms.factorize(C, order=2, seed="x")
