"""mmf_stream: multiresolution matrix factorization of large symmetric matrices.

>>> import mmf_stream as ms
>>> C = ms.hierarchical_covariance(200, seed=0)
>>> f = ms.factorize(C, order=4, core_size=25)
>>> f.error == f.error  # exact ||C - M(C)||_F
True
"""

from __future__ import annotations

from mmf_stream import datasets, views
from mmf_stream._class_store import Store, StoreLockedError, SymmetricCovariance
from mmf_stream._covariance import ClassCovariance, class_covariance
from mmf_stream._factorization import Factorization, Level, factorize
from mmf_stream._incremental import InsertionReport, factorize_incremental
from mmf_stream._io import read_labels, read_matrix
from mmf_stream._store import FORMAT_VERSION
from mmf_stream._store import load_factorization as load
from mmf_stream.datasets import grid_laplacian, hierarchical_covariance, karate_laplacian

__version__ = "0.1.0"

__all__ = [
    "ClassCovariance",
    "FORMAT_VERSION",
    "Factorization",
    "Level",
    "__version__",
    "class_covariance",
    "datasets",
    "factorize",
    "factorize_incremental",
    "InsertionReport",
    "grid_laplacian",
    "hierarchical_covariance",
    "karate_laplacian",
    "load",
    "read_labels",
    "read_matrix",
    "views",
    "Store",
    "StoreLockedError",
    "SymmetricCovariance",
]
