"""Zarr arrays read by URL (``s3://``, ``gs://``, ``file://``, ...) through fsspec (docs/guide/object-stores.md).

A matrix or class means given as a URL is opened with :func:`open_url_array`: Zarr's
``FsspecStore`` on the filesystem fsspec has for the URL's scheme (``s3://`` needs ``s3fs``:
``pip install 'mmf_stream[s3]'``). The array pickles as its store (the filesystem and its
options), never its data, so a Dask worker that receives it reads its own chunks from the
object store.

Credentials and endpoint come from the filesystem's usual sources (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_DEFAULT_REGION``,
``~/.aws``, instance roles), each process reading its own environment, or from
``storage_options`` (the filesystem's keyword arguments, e.g. ``{"endpoint_url": ...}``), which
travel with the array to the workers. Every failure to open is a one-line ``ValueError`` naming
the URL.

Only reading: results and class stores are written to (and read from) local paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mmf_stream.common.formats import one_line

__all__ = ["array_name", "check_storage_options", "is_url", "open_url_array", "url_scheme"]

#: the packages that give fsspec a scheme, by scheme, named in the error when one is missing
#: (fsspec's own message names it too; these add the extra that installs it)
SCHEME_EXTRAS = {"s3": "mmf_stream[s3]", "s3a": "mmf_stream[s3]"}
#: schemes whose first path component is a bucket (named in the error when it does not exist)
BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and "://" in path and url_scheme(path).isidentifier()


def url_scheme(url: str) -> str:
    """The scheme of ``url`` (``"s3"`` for ``s3://bucket/key``), lower case."""
    return url.split("://", 1)[0].lower()


def check_storage_options(storage_options: Any) -> dict[str, Any] | None:
    """``storage_options`` as a dict with string keys (None stays None), else a ``TypeError``."""
    if storage_options is None:
        return None
    if not isinstance(storage_options, Mapping) or not all(isinstance(key, str) for key in storage_options):
        raise TypeError("storage_options must be a mapping of option names (str) to values, got "
                        f"{type(storage_options).__name__}")
    return dict(storage_options)


def _filesystem_class(url: str) -> None:
    """Raise a one-line ValueError if no installed fsspec filesystem reads ``url``'s scheme."""
    import fsspec

    scheme = url_scheme(url)
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as error:  # a known scheme whose package is missing
        extra = f" (pip install '{SCHEME_EXTRAS[scheme]}')" if scheme in SCHEME_EXTRAS else ""
        raise ValueError(f"{url}: cannot read {scheme}:// URLs: {one_line(error)}{extra}") from None
    except ValueError:
        raise ValueError(f"{url}: unknown URL scheme {scheme}:// (no fsspec filesystem reads it)") from None


def _missing(url: str, options: dict[str, Any]) -> str:
    """Why no Zarr array opens at ``url``: a missing bucket, object or array."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(url, **options)  # a blocking filesystem (the store's is asynchronous)
        if not fs.exists(path):
            bucket = path.strip("/").split("/", 1)[0]
            if url_scheme(url) in BUCKET_SCHEMES and bucket and not fs.exists(bucket):
                return f"{url}: the bucket {bucket!r} does not exist (or these credentials cannot see it)"
            return f"{url}: no such object"
    except Exception as error:  # noqa: BLE001 - the check itself failed: say so, not why it failed
        return f"{url}: no Zarr array there ({type(error).__name__}: {one_line(error)})"
    return f"{url}: not a Zarr array (class stores and results, Zarr groups, are read from local paths only)"


def open_url_array(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The Zarr array at ``url``, read-only, through fsspec.

    Parameters
    ----------
    url : str
        ``scheme://...``: ``s3://bucket/path/C.zarr`` (needs ``s3fs``), ``file:///abs/C.zarr``,
        or any scheme an installed fsspec filesystem reads.
    storage_options : mapping, optional
        Keyword arguments of the filesystem (for ``s3fs.S3FileSystem``: ``endpoint_url``, ``key``,
        ``secret``, ``anon``, ``client_kwargs``, ...). Without them it reads its environment.

    Returns
    -------
    zarr.Array

    Raises
    ------
    ValueError
        One line naming ``url``: an unknown scheme or its missing package, a missing bucket or
        object, something that is not a Zarr array, an unreachable endpoint, an option the
        filesystem rejects.
    TypeError
        If ``storage_options`` is not a mapping with string keys.
    """
    import zarr
    from zarr.storage import FsspecStore

    options = check_storage_options(storage_options) or {}
    url = os.fspath(url)
    _filesystem_class(url)
    try:
        store = FsspecStore.from_url(url, storage_options=options, read_only=True)
    except TypeError as error:  # the filesystem's constructor rejects an option
        raise ValueError(f"{url}: storage option not accepted: {one_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - fsspec and its filesystems raise many kinds
        raise ValueError(f"{url}: cannot open: {type(error).__name__}: {one_line(error)}") from None
    try:
        return zarr.open_array(store, mode="r")
    except FileNotFoundError:  # zarr's ArrayNotFoundError is one
        raise ValueError(_missing(url, options)) from None
    except TypeError as error:  # a filesystem whose session takes its options when first used
        raise ValueError(f"{url}: storage option not accepted: {one_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - the endpoint, credentials, a corrupt zarr.json, ...
        raise ValueError(f"{url}: cannot open as a Zarr array: {type(error).__name__}: {one_line(error)}") from None


def array_name(array: Any) -> str:
    """How messages name a Zarr array: ``scheme://path`` for an fsspec store, else its store path."""
    store = getattr(array, "store", None)
    fs = getattr(store, "fs", None)
    fs = getattr(fs, "sync_fs", fs)  # a blocking filesystem zarr wrapped to be asynchronous
    protocol = getattr(fs, "protocol", None)
    if isinstance(protocol, (tuple, list)) and protocol:
        protocol = protocol[0]
    if isinstance(protocol, str) and isinstance(getattr(store, "path", None), str):
        inner = str(getattr(array, "path", "") or "")
        return f"{'file' if protocol == 'local' else protocol}://{store.path.rstrip('/')}" + (f"/{inner}" if inner else "")
    return str(getattr(array, "store_path", "the Zarr input"))
