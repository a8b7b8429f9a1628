"""Persistence: everything that reads or writes a project or a saved result, in one place.

* :mod:`~mmf_stream.store.class_store`: the class store (``Store``; docs/store.md): labels, counts,
  sums and means (the source of truth), the covariance derived from them (or stored when asked), the
  write-ahead journal and the writer lock;
* :mod:`~mmf_stream.store.result_format`: a factorization saved as a Zarr group (docs/format.md),
  read back as a typed :class:`~mmf_stream.store.result_format.StoredFactorization`;
* :mod:`~mmf_stream.store.generations`: a served project's factorization generations (copy-on-write
  layers, the SQLite commit log, recovery; docs/service.md);
* :mod:`~mmf_stream.store.object_stores`: Zarr arrays read by URL (``s3://``, ``file://``, any fsspec
  scheme; docs/guide/object-stores.md), the inputs a Dask worker reads itself;
* :mod:`~mmf_stream.store.durability`: the durable-write helpers they share (fsync, atomic swaps,
  complete-read checks, what ``--overwrite`` may replace, crash points for tests).

This package imports the engine's plain containers and nothing of the service, the views or the
public objects (``tests/test_layout.py`` checks it).
"""
