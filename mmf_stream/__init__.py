"""mmf_stream: multiresolution matrix factorization of large symmetric matrices.

>>> import mmf_stream as ms
>>> C = ms.hierarchical_covariance(200, seed=0)
>>> f = ms.factorize(C, order=4, core_size=25)
>>> f.error == f.error  # exact ||C - M(C)||_F
True
"""

from __future__ import annotations

from mmf_stream import datasets, fidelity, views
from mmf_stream.api import factorize, factorize_incremental, load
from mmf_stream.common.version import __version__
from mmf_stream.datasets import class_means, grid_laplacian, hierarchical_covariance, karate_laplacian
from mmf_stream.engine import EngineOptions
from mmf_stream.factorization import Factorization, InsertionReport, Level
from mmf_stream.io import read_labels, read_matrix
from mmf_stream.service.submit import submit
from mmf_stream.store.class_covariance import ClassCovariance, class_covariance
from mmf_stream.store.class_store import Store, StoreLockedError, SymmetricCovariance
from mmf_stream.store.result_format import FORMAT_VERSION

__all__ = [
    "ClassCovariance",
    "EngineOptions",
    "FORMAT_VERSION",
    "Factorization",
    "Level",
    "__version__",
    "class_covariance",
    "class_means",
    "datasets",
    "fidelity",
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
    "submit",
]
