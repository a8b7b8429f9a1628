import numpy as np
import pytest

from redis_server import RedisServer, redis_server_fixture


def random_symmetric(size: int, seed: int = 0, rank: int | None = None) -> np.ndarray:
    """A random symmetric positive semi-definite matrix with a spread spectrum."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(size, rank or size))
    return factors @ factors.T / (rank or size)


@pytest.fixture
def small_matrix() -> np.ndarray:
    return random_symmetric(24, seed=3)


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
        matrix[rows, rows] = factors @ factors.T / (3 * block_size)
    order = rng.permutation(size)
    return matrix[np.ix_(order, order)], membership[order]


# -- a real redis-server for the Redis queue's tests (tests/redis_server.py) --------------------------

#: a started redis-server (a RedisServer: .url, .unix_socket, .restart()), one per test
redis_server = redis_server_fixture()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of a fresh redis-server (skips without one, fails in CI)."""
    return redis_server.url
