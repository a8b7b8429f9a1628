"""The MMF engines.

* :mod:`~mmf_stream.engine.kernels`, :mod:`~mmf_stream.engine.gram_kernels`:
  numba kernels, pure functions on arrays;
* :mod:`~mmf_stream.engine.compression`: what the level loops work on (dense
  buffer, factored class means, one staged cluster);
* :mod:`~mmf_stream.engine.greedy`: the greedy level loop and candidate cache;
* :mod:`~mmf_stream.engine.staged`: staged levels (clusters, pure cluster work);
* :mod:`~mmf_stream.engine.schedule`: runs one factorization (greedy or staged);
* :mod:`~mmf_stream.engine.insertion`: insertion into an existing result;
* :mod:`~mmf_stream.engine.options`: every policy number, one options object.

Nothing here does I/O or knows about the public ``Factorization`` object.
"""

from mmf_stream.engine.options import EngineOptions

__all__ = ["EngineOptions"]
