import numpy as np
import pytest

from matrix_helpers import random_symmetric
from redis_server import RedisServer, redis_server_fixture


@pytest.fixture
def small_matrix() -> np.ndarray:
    return random_symmetric(24, seed=3)


# -- a real redis-server for the Redis queue's tests (tests/redis_server.py) --------------------------

#: a started redis-server (a RedisServer: .url, .unix_socket, .restart()), one per test
redis_server = redis_server_fixture()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of a fresh redis-server (skips without one, fails in CI)."""
    return redis_server.url
