"""The ``mmf-stream`` command line.

``mmf-stream warmup`` compiles (and numba caches on disk) every kernel ahead of
the first real run: use it in install steps and Dask worker images.

Every subcommand turns bad input into a one-line message on stderr and exit
status 2; it never prints a traceback for a user error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmf_stream.store.durability import check_replaceable, fsync_tree, own_format, staging_path, swap_into_place
from mmf_stream._formats import one_line
from mmf_stream._progress import progress
from mmf_stream.service.cli import add_service_commands

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _progress_bar(total: int, desc: str, quiet: bool):
    """The shared progress bar (levels done, rate, ETA); silent when not a terminal."""
    return progress(total, desc, unit="level", quiet=quiet)


def _read_means(path: str):
    """Class means (m x D) for ``--means``: a ``.npy`` file (memory-mapped) or a Zarr array."""
    from mmf_stream._formats import existing_path
    from mmf_stream._io import read_features

    source = existing_path(path)
    if own_format(source) == "class-store":
        raise ValueError(f"{source} is a class store; give it as INPUT (mmf-stream factorize {source} ...), "
                         "not --means")
    return read_features(source, role="--means")


def _cluster_input(path: str):
    """With --scheduler/--workers: the Zarr array at ``path`` (path or URL) that the workers read
    themselves, else None (a class store, or a file read here as without a cluster)."""
    from mmf_stream._cluster import open_zarr_array

    if "://" not in path and own_format(Path(path)) == "class-store":
        return None
    array = open_zarr_array(path)
    if array is None and "://" in path:
        raise ValueError(f"{path}: not a Zarr array that Zarr/fsspec can open")
    return array


def _quiet_dask_logs() -> None:
    """Dask's own log lines (reconnect attempts, tracebacks of a lost scheduler) stay off the
    CLI's stderr: a failure is reported as one line. MMF_STREAM_DEBUG=1 keeps them."""
    import logging
    import os

    if not os.environ.get("MMF_STREAM_DEBUG"):
        for name in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


class _StageProgress:
    """The progress callback of a cluster run: levels on the bar, the stage in its postfix."""

    def __init__(self, bar_update, bar) -> None:
        self._update = bar_update
        self._bar = bar

    def __call__(self, levels: int) -> None:
        self._update(levels)

    def stage(self, number: int, active: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"stage {number}, {active} active", refresh=False)


def _factorize(args: argparse.Namespace) -> int:
    import mmf_stream as ms

    # exactly one source: a matrix / class store (INPUT) or class means (--means)
    if (args.input is None) == (args.means is None):
        given = "both INPUT and --means" if args.input is not None else "neither INPUT nor --means"
        raise ValueError(f"give exactly one of INPUT (a matrix or class store) or --means M.npy; got {given}")
    if args.scheduler is not None or args.workers is not None:
        return _factorize_on_cluster(args)
    out = Path(args.out)
    check_replaceable(out, args.overwrite, kinds=("factorization",))
    labels = ms.read_labels(args.labels) if args.labels else None
    if args.means is not None:
        source_name = args.means
        means = _read_means(args.means)
        source, kwargs = None, {"means": means}
        size = means.shape[0] if len(means.shape) else 0
    elif own_format(Path(args.input)) == "class-store":
        # factored from the store's means (C = M M' is never formed); its labels unless --labels
        source_name = args.input
        source = ms.Store.open(args.input, mode="r")
        kwargs, size = {}, source.size
    else:
        source_name = args.input
        source = ms.read_matrix(args.input)
        kwargs = {}
        shape = getattr(source, "shape", (0,))
        size = shape[0] if len(shape) else 0
        if len(shape) == 2 and shape[0] != shape[1] and 0 not in shape:
            raise ValueError(f"matrix must be square, got shape {shape[0]} x {shape[1]} "
                             "(class means, classes x features, go in with --means)")
    factored = source is None or isinstance(source, ms.Store)
    return _factorize_here(args, source, kwargs, size=size, factored=factored, labels=labels, name=source_name)


def _factorize_here(args: argparse.Namespace, source, kwargs: dict, *, size: int, factored: bool, labels,
                    name: str) -> int:
    """Factor ``source`` (or ``kwargs["means"]``) in this process, save it at ``--out`` and report."""
    import mmf_stream as ms

    out = Path(args.out)
    core = args.core_size if args.core_size is not None else args.order - 1
    start = time.perf_counter()
    _compile_notice(args.quiet, module=_FACTORED_KERNEL if factored else _DENSE_KERNEL)
    with _progress_bar(max(size - core, 0), "factorize", args.quiet) as update:
        result = ms.factorize(
            source,
            order=args.order,
            core_size=args.core_size,
            seed=args.seed,
            labels=labels,
            schedule=args.schedule,
            candidates=args.candidates,
            progress=update,
            **kwargs,
        )
    seconds = time.perf_counter() - start
    result.save(out, overwrite=args.overwrite)
    if not args.quiet:
        how = f"{result.metadata.get('schedule', args.schedule)}, from {'class means' if factored else 'the matrix'}"
        print(f"factorized {name} in {seconds:.2f} s ({how}) -> {out}")
        print(result.summary(levels=args.show))
    return 0


def _factorize_on_cluster(args: argparse.Namespace) -> int:
    """``factorize --scheduler ADDR | --workers N``: the staged levels on Dask workers."""
    import mmf_stream as ms
    from mmf_stream._cluster import cluster_client
    from mmf_stream.engine.options import DEFAULT_OPTIONS
    from mmf_stream.engine.schedule import resolve_schedule

    if args.schedule == "greedy" or args.candidates == "exhaustive":
        raise ValueError("greedy levels run in one process: leave out --scheduler/--workers, or use --schedule "
                         "staged")
    out = Path(args.out)
    check_replaceable(out, args.overwrite, kinds=("factorization",))
    labels = ms.read_labels(args.labels) if args.labels else None
    name = args.means if args.means is not None else args.input
    array = _cluster_input(name)
    factored = args.means is not None or own_format(Path(name)) == "class-store"
    if array is not None:
        data = array
        size = int(array.shape[0])
    elif args.means is not None:
        data = _read_means(args.means)
        size = int(data.shape[0])
    elif factored:
        data = ms.Store.open(args.input, mode="r")
        size = data.size
    else:
        data = ms.read_matrix(args.input)
        size = int(data.shape[0])
    kwargs = {"means": data} if args.means is not None else {}
    if resolve_schedule(args.schedule, size, factored, DEFAULT_OPTIONS) == "greedy":
        # no Dask stage would run: the greedy levels run here either way, so start or contact nothing
        skipped = (f"no LocalCluster started for --workers {args.workers}" if args.workers is not None
                   else f"{args.scheduler} not contacted")
        limit = DEFAULT_OPTIONS.auto_factored_greedy_max if factored else DEFAULT_OPTIONS.auto_dense_greedy_max
        print(f"mmf-stream: {size} classes (at most {limit}): --schedule auto runs greedy levels, in this "
              f"process, faster than a cluster would ({skipped}); give --schedule staged to run staged levels on "
              "the cluster", file=sys.stderr)
        return _factorize_here(args, None if args.means is not None else data, kwargs, size=size,
                               factored=factored, labels=labels, name=name)
    core = args.core_size if args.core_size is not None else args.order - 1
    where = args.scheduler if args.scheduler is not None else f"{args.workers} local worker(s)"
    start = time.perf_counter()
    _quiet_dask_logs()
    with cluster_client(args.scheduler, workers=args.workers, connect_timeout=args.connect_timeout) as client:
        with progress(max(size - core, 0), "factorize", unit="level", quiet=args.quiet) as update:
            bar = getattr(update, "__self__", None)
            try:
                result = ms.factorize(
                    None if args.means is not None else data, order=args.order, core_size=args.core_size,
                    seed=args.seed, labels=labels, schedule=args.schedule,
                    progress=_StageProgress(update, bar), client=client, **kwargs,
                )
            except ConnectionError as error:
                raise ConnectionError(f"{one_line(error)}; nothing was written to {out}") from None
    seconds = time.perf_counter() - start
    result.save(out, overwrite=args.overwrite)
    if not args.quiet:
        stages = result.metadata.get("dask", {}).get("stages", [])
        print(f"factorized {name} in {seconds:.2f} s ({result.metadata.get('schedule')}, "
              f"{'class means' if factored else 'the matrix'}, {len(stages)} stage(s) on {where}) -> {out}")
        print(result.summary(levels=args.show))
    return 0


def _covariance_inputs(args: argparse.Namespace):
    """``(features or means, labels, from_means)`` from ``FEATURES LABELS`` or ``--means M LABELS``."""
    import mmf_stream as ms

    from mmf_stream._io import read_features

    given = [x for x in (args.features, args.labels) if x is not None]
    if args.means is not None:
        if len(given) != 1:
            raise ValueError(f"with --means give one positional argument, LABELS; got {len(given)}")
        means = _read_means(args.means)
        if len(means.shape) != 2:
            raise ValueError(f"--means must be a 2-D array (classes x features), got shape {tuple(means.shape)}")
        labels = ms.read_labels(given[0])
        from mmf_stream._validation import labels_for

        try:
            labels_for(labels, means.shape[0])  # one per row, unique: a mean is one class
        except ValueError as exc:
            raise ValueError(f"{given[0]}: {exc} (each row of --means is one class)") from None
        if args.max_per_class is not None:
            raise ValueError("--max-per-class samples instances; --means gives one mean per class")
        return means, labels, True
    if len(given) != 2:
        raise ValueError("give FEATURES and LABELS (or --means M.npy LABELS)")
    return read_features(args.features), ms.read_labels(args.labels), False


def _covariance(args: argparse.Namespace) -> int:
    import mmf_stream as ms

    features, labels, from_means = _covariance_inputs(args)
    out = Path(args.out)
    appending = args.append and out.exists()
    if not appending:
        check_replaceable(out, args.overwrite, kinds=("class-store",))
    if args.append and args.overwrite:
        raise ValueError("--append and --overwrite exclude each other")
    start = time.perf_counter()
    if appending:
        store = ms.Store.open(out, lock_timeout=args.lock_timeout)
        if args.dense_covariance and not store.dense_covariance:
            raise ValueError(f"--dense-covariance: {out} computes its covariance from the means (fixed when it "
                             "was made); read it as store.covariance, or make a new store with the option")
        for option in ("center", "normalize"):
            given = getattr(args, option)
            if given and not getattr(store, option):
                raise ValueError(
                    f"--{option} conflicts with the store's {option}=False (fixed when {out} was made); "
                    f"factor it with the option instead, or make a new store"
                )
    else:
        # check the input before replacing anything
        from mmf_stream._covariance import _feature_shape, encode_labels

        encode_labels(labels, _feature_shape(features)[0])
        # a replaced store is built beside it and swapped in only once complete:
        # input that fails halfway (NaN rows, say) leaves the old store as it was
        building = staging_path(out) if out.exists() else out
        try:
            store = ms.Store.create(building, center=args.center, normalize=args.normalize,
                                    lock_timeout=args.lock_timeout, dense_covariance=args.dense_covariance)
        except ValueError:
            if not (args.append and building == out and out.exists()):
                raise
            appending = True  # another --append made the store just now: append to it
            store = ms.Store.open(out, lock_timeout=args.lock_timeout)
    _compile_notice(False, module="_covariance")
    try:
        if from_means:
            report = store.add_means(np.asarray(features, dtype=np.float64), labels)
        else:
            with progress(features.shape[0], "covariance", unit="row") as update:
                report = store.add_classes(features, labels, max_per_class=args.max_per_class, seed=args.seed,
                                           progress=update)
    except BaseException:
        if not appending:
            import shutil

            shutil.rmtree(building, ignore_errors=True)  # ours, just made: leave nothing behind
        raise
    if not appending and building != out:
        fsync_tree(building)
        swap_into_place(building, out)
        store = ms.Store.open(out, mode="r", lock_timeout=args.lock_timeout)
    seconds = time.perf_counter() - start
    what = "class means" if from_means else "features"
    print(
        f"{len(report['added'])} classes added, {len(report['updated'])} updated from "
        f"{features.shape[0]:,} x {features.shape[1]} {what} in {seconds:.2f} s -> {out} "
        f"({store.size} classes, center={store.center}, normalize={store.normalize}, "
        f"covariance {'stored' if store.dense_covariance else 'computed from the means'})"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    import mmf_stream as ms

    source = Path(args.result)
    if source.is_dir() and (source / "journal").is_dir():  # a class store
        store = ms.Store.open(source, mode="r", lock_timeout=args.lock_timeout)
        print(f"class store {source}")
        print(f"classes     {store.size}")
        print(f"dimension   {store.dim}")
        print(f"instances   {store.n_instances}")
        print(f"options     center={store.center} normalize={store.normalize}")
        print(f"covariance  {'stored (dense)' if store.dense_covariance else 'computed from the means'}")
        shown = store.labels[: args.levels].tolist()
        if shown:
            more = f" ... ({store.size - len(shown)} more)" if store.size > len(shown) else ""
            print("labels      " + ", ".join(map(str, shown)) + more)
        return 0
    result = ms.load(args.result)
    print(f"MMF factorization {args.result}")
    print(result.summary(levels=args.levels))
    return 0


_FIGURE_SUFFIXES = (".svg", ".png", ".pdf")


def _show(args: argparse.Namespace) -> int:
    import mmf_stream as ms
    from mmf_stream.views._figure import LEVELS_PER_PAGE, MAX_DPI, MIN_DPI

    # every check on the arguments comes before any work
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in _FIGURE_SUFFIXES + (".html",):
        raise ValueError(f"--out must end in .svg, .png, .pdf or .html, got {out.name!r}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists (use --overwrite to replace it)")
    if args.start < 1:
        raise ValueError(f"--start must be at least 1 (the first level), got {args.start}")
    if args.levels is not None and args.levels < 1:
        raise ValueError(f"--levels must be at least 1, got {args.levels}")
    if not MIN_DPI <= args.dpi <= MAX_DPI:
        raise ValueError(f"--dpi must be between {MIN_DPI} and {MAX_DPI}, got {args.dpi}")
    if args.matrix and args.compare != "dendrogram":
        raise ValueError("--matrix is used with --compare dendrogram")
    result = ms.load(args.result)
    if args.start > result.n_levels:
        raise ValueError(f"--start {args.start} is past the last level ({result.n_levels})")
    before = ms.load(args.before) if args.before else None
    matrix, matrix_label = None, "the same matrix"
    if args.compare == "dendrogram":
        if args.matrix:
            matrix = _factored_matrix(args.matrix, result, args.result)
            matrix_label = f"the factored matrix C ({Path(args.matrix).name})"
        else:
            if result.size > 5000:
                raise ValueError("give the factored matrix with --matrix for a dendrogram of more than 5000 classes")
            print("mmf-stream: dendrogram of the reconstruction M(C); pass --matrix for the exact matrix", file=sys.stderr)
            matrix = result.reconstruct()
            matrix_label = "the reconstruction M(C) (not C itself: pass --matrix)"
    options = {"start": args.start, "highlight": args.highlight, "index_labels": args.index_labels}
    if suffix == ".html":
        ms.views.to_html(result, out, levels=args.levels, matrix=matrix, before=before, matrix_label=matrix_label,
                         title=f"MMF graph of {Path(args.result).name}", **options)
        print(f"wrote {out}")
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if before is not None:
        fig = ms.views.plot_insertion(before, result, levels=20 if args.levels is None else args.levels)
    elif matrix is not None:
        fig = ms.views.plot_with_dendrogram(result, matrix, levels=args.levels, matrix_label=matrix_label, **options)
    else:
        fig = ms.views.plot(result, levels=args.levels, **options)
    try:
        ms.views.save_figure(fig, out, dpi=args.dpi)
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    if before is None:
        last = min(result.n_levels, args.start + min(args.levels or LEVELS_PER_PAGE, LEVELS_PER_PAGE) - 1)
        if args.start > 1 or last < result.n_levels:
            following = f"; the next page: --start {last + 1}" if last < result.n_levels else ""
            print(f"drew levels {args.start}\u2013{last} of {result.n_levels} (at most {LEVELS_PER_PAGE} a figure, "
                  f"the .html page holds them all){following}")
    return 0


def _labelled_matrix(path: str, labels: np.ndarray | None):
    """``(matrix, labels)`` of ``--matrix``: a class store's or a Zarr group's ``covariance``
    with its ``labels`` array come with their labels (rows picked and ordered as ``labels``
    when those are given), anything else with None."""
    import mmf_stream as ms
    from mmf_stream._formats import existing_path

    source = existing_path(path)
    if own_format(source) == "class-store":
        store = ms.Store.open(source, mode="r")
        own = store.labels
        if labels is None:
            return np.asarray(store.matrix(), dtype=np.float64), own
        slots = _slots_by_label(own, labels, source)
        return store.columns(slots, rows=slots), labels  # from the means: the m x m of these classes only
    matrix = ms.read_matrix(source)
    own = None
    if source.is_dir():
        import zarr

        node = zarr.open(str(source), mode="r")
        if isinstance(node, zarr.Group) and "labels" in node:
            own = np.asarray(node["labels"][...])
            if own.shape != (matrix.shape[0],):
                raise ValueError(f"{source}: 'labels' has shape {own.shape} for a covariance of shape {matrix.shape}")
    if own is None or labels is None:
        return np.asarray(matrix, dtype=np.float64), own
    slots = _slots_by_label(own, labels, source)
    return np.asarray(matrix, dtype=np.float64)[np.ix_(slots, slots)], labels


def _slots_by_label(own: np.ndarray, labels: np.ndarray, source: Path) -> np.ndarray:
    """Where each of ``labels`` is among the matrix's labels ``own`` (compared as text)."""
    slot: dict[str, int] = {}
    for i, label in enumerate(own.tolist()):
        if slot.setdefault(str(label), i) != i:
            raise ValueError(f"{source} has the label {label!r} twice; cannot order its rows by label")
    missing = [label for label in labels.tolist() if str(label) not in slot]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{source} has no class {missing[0]!r}{more} of the result; give the matrix the result "
                         "was factored from")
    return np.array([slot[str(label)] for label in labels.tolist()], dtype=np.int64)


def _factored_matrix(path: str, result, result_path: str) -> np.ndarray:
    """``--matrix`` for the dendrogram, rows in the result's order, checked against its fingerprint.

    A matrix with labels (class store, Zarr group with ``covariance`` and ``labels``) is
    reordered by the result's labels; any matrix that is not the factored one (another
    matrix, or rows in another order) is refused: the dendrogram would name its leaves wrong.
    """
    from mmf_stream._fingerprint import matrix_mismatches, reordered

    matrix, own = _labelled_matrix(path, result.labels)
    if matrix.shape != (result.size, result.size):
        raise ValueError(f"--matrix has shape {matrix.shape}, the result is for size {result.size}")
    fingerprint = result.fingerprint
    if fingerprint is None:
        print(f"mmf-stream: warning: {result_path} has no fingerprint (saved by an older version); cannot check "
              f"that {path} is the matrix it factored", file=sys.stderr)
        return matrix
    changed = matrix_mismatches(fingerprint, matrix)
    if changed.size:
        names = result.labels if result.labels is not None else np.arange(result.size)
        shown = ", ".join(repr(names[i].item()) for i in changed[:3])
        more = f" and {changed.size - 3} more" if changed.size > 3 else ""
        why = ("its rows are in another order" if reordered(fingerprint, np.diagonal(matrix).astype(np.float64))
               else "another matrix, or rows in another order")
        fix = "give it in the result's order" if own is None else "give the matrix the result was factored from"
        raise ValueError(f"--matrix {path} is not the matrix {result_path} factorized ({why}: rows of {shown}{more} "
                         f"differ); {fix} (a class store, or a Zarr group with 'covariance' and 'labels', is "
                         "reordered by label)")
    return matrix


def _compare(args: argparse.Namespace) -> int:
    import mmf_stream as ms

    # every check on the arguments comes before any work
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix.lower() not in _FIGURE_SUFFIXES:
            raise ValueError(f"--out must end in .svg, .png or .pdf, got {out.name!r}")
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} already exists (use --overwrite to replace it)")
    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold is an overlap in (0, 1], got {args.threshold:g}")
    if args.levels is not None and args.levels < 1:
        raise ValueError(f"--levels must be at least 1, got {args.levels}")
    if len(args.results) < 2:
        raise ValueError("compare needs at least two results")
    if args.names is not None and len(args.names) != len(args.results):
        raise ValueError(f"--names gives {len(args.names)} names for {len(args.results)} results")
    results = [ms.load(path) for path in args.results]
    names = args.names or [Path(path).stem for path in args.results]
    comparison = ms.views.compare(results, names, levels=args.levels, threshold=args.threshold)
    print(comparison.table())
    saturated = [f"{names[p]} -> {names[p + 1]}" for p, flag in enumerate(comparison.saturated) if flag]
    if saturated:
        print("saturation: the first levels compose the same classes in " + "; ".join(saturated))
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = ms.views.plot_comparison(comparison)
        try:
            ms.views.save_figure(fig, out, dpi=110)
        finally:
            plt.close(fig)
        print(f"wrote {out}")
    return 0


def _insert(args: argparse.Namespace) -> int:
    import mmf_stream as ms

    start = time.perf_counter()
    out = Path(args.out)
    check_replaceable(out, args.overwrite, kinds=("factorization",))
    result = ms.load(args.result)
    if result.labels is None:
        raise ValueError(f"{args.result} has no labels; insert matches classes by label")
    store = ms.Store.open(args.store, mode="r", lock_timeout=args.lock_timeout)
    if store.center:
        raise ValueError(
            "the store's covariance is centred: adding classes moves the global mean and changes every "
            "entry, so factor it again instead of inserting"
        )
    store_labels = [x for x in store.labels.tolist()]
    slot = {label: i for i, label in enumerate(store_labels)}
    old = result.labels.tolist()
    missing = [label for label in old if label not in slot]
    if missing:
        raise ValueError(f"class {missing[0]!r} of the result is not in the store")
    known = set(old)
    wanted = args.labels if args.labels else [label for label in store_labels if label not in known]
    if not wanted:
        raise ValueError("the store holds no class that the result lacks")
    kind = type(old[0]) if old else str
    new = []
    for label in wanted:
        try:
            key = kind(label) if not isinstance(label, kind) else label
        except ValueError:
            raise ValueError(f"class {label!r} is not in the store") from None
        if key not in slot:
            raise ValueError(f"class {label!r} is not in the store")
        if key in known:
            raise ValueError(f"class {label!r} is already in the factorization")
        new.append(key)
    order = np.array([slot[label] for label in old + new])
    _check_same_classes(result, store, order[: len(old)], args.result, args.store)
    if result.factored:
        # made from class means: insert the new classes' rows of the store's factor F (F F' = C,
        # normalised as the store says); no column of C is formed
        means = store.factor()[order[len(old):]]
        _compile_notice(False, module=_FACTORED_KERNEL)
        grown = result.insert_many(means=means, labels=new)
    else:
        matrix = store.columns(order[len(old):], rows=order)  # (size + b) x b, from the means
        _compile_notice(False)
        grown = result.insert_many(matrix, labels=new) if len(new) > 1 else result.insert(
            matrix[: len(old), 0], matrix[len(old), 0], label=new[0]
        )
    grown.save(out, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    report = grown.insertion_report
    print(f"inserted {len(new)} class(es) in {seconds:.2f} s (reading, inserting and saving) -> {out}")
    print(f"error {result.error:.6g} -> {grown.error:.6g}; levels 1..{report.cut_level} kept, "
          f"{report.changed_levels} later levels changed{' (repair)' if report.repaired else ''}")
    for label, level, partners, novelty in zip(report.labels, report.wavelet_levels, report.partners, report.novelty):
        where = f"wavelet at level {level}" if level else "in the core"
        print(f"  {label}: {where}, with {', '.join(map(str, partners))}; novelty {novelty:.2f}")
    return 0


def _check_same_classes(result, store, slots: np.ndarray, result_path: str, store_path: str) -> None:
    """Refuse to insert when the store's copies of the factored classes differ from what was factored.

    ``slots[i]`` is the store slot of the result's index ``i``.
    """
    from mmf_stream._fingerprint import mismatches, probe_vector

    fingerprint = result.fingerprint
    if fingerprint is None:
        print(
            f"mmf-stream: warning: {result_path} has no fingerprint (saved by an older version); "
            f"cannot check that {store_path} still holds the classes it factored",
            file=sys.stderr,
        )
        return
    spread = np.zeros(store.size)
    spread[slots] = probe_vector(slots.shape[0])  # C[slots, slots] r = (C s)[slots]
    probe = store.matvec(spread)[slots]
    changed = mismatches(fingerprint, store.diagonal()[slots], probe)
    if changed.size:
        names = ", ".join(repr(result.labels[i].item()) for i in changed[:3])
        more = f" and {changed.size - 3} more" if changed.size > 3 else ""
        raise ValueError(
            f"{store_path} does not hold the classes {result_path} factored: {changed.size} of "
            f"{result.size} differ ({names}{more}; updated since, or another store); "
            "factor the store again instead of inserting"
        )


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import mmf_stream as ms

    C, leaves = ms.hierarchical_covariance(args.size, seed=args.seed, return_leaves=True)
    labels = np.array([f"{'.'.join(map(str, path))}#{i}" for i, path in enumerate(leaves)])
    print(
        f"demo: hierarchical covariance of {args.size} points around a tree of centres "
        "(branching 4, depth 3); labels read 'branch.branch.leaf#row'"
    )
    core = args.core_size if args.core_size is not None else max(args.order - 1, args.size // 8)
    start = time.perf_counter()
    _compile_notice(False)
    with _progress_bar(args.size - core, "factorize", False) as update:
        result = ms.factorize(C, order=args.order, core_size=core, seed=args.seed, labels=labels, progress=update)
    seconds = time.perf_counter() - start
    print(f"factorized in {seconds:.2f} s")
    print(result.summary(levels=args.show))
    leaf_of = {i: tuple(path) for i, path in enumerate(leaves.tolist())}
    early = result.levels[: max(1, result.n_levels // 10)]
    inside = np.mean([len({leaf_of[i] for i in level.indices.tolist()}) == 1 for level in early])
    print(
        f"first {len(early)} levels: {inside:.0%} of tuples lie inside one leaf of the tree "
        "(random tuples: under 0.01%)"
    )
    if args.out:
        result.save(args.out, overwrite=True)  # replaces only an mmf_stream result
        print(f"saved to {args.out} (inspect with: mmf-stream info {args.out})")
    return 0


def _lock_timeout_option(parser: argparse.ArgumentParser) -> None:
    from mmf_stream.store.class_store import LOCK_TIMEOUT

    parser.add_argument(
        "--lock-timeout", type=float, default=LOCK_TIMEOUT, metavar="SECONDS",
        help=f"wait at most this long for another writer of the class store (default {LOCK_TIMEOUT:g})",
    )


def _int_at_least(lowest: int):
    """An argparse type: an integer >= ``lowest`` (argparse names the option on error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    parse.__name__ = f"integer >= {lowest}"
    return parse


def _non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


_non_negative.__name__ = "number >= 0"


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


_positive.__name__ = "number > 0"


#: a kernel that every dense run compiles, and one that every factored (class means) run does (staged dense
#: runs too): if its cache is missing, so are most others
_DENSE_KERNEL = "compression._rebuild_dense"
_FACTORED_KERNEL = "gram_kernels.rebuild_from_gram"


def _kernels_cached(module: str = _DENSE_KERNEL) -> bool:
    """Whether numba's on-disk cache already holds the kernels of ``mmf_stream.<module>``."""
    import os

    import mmf_stream

    folder = Path(os.environ.get("NUMBA_CACHE_DIR") or Path(mmf_stream.__file__).parent)
    return folder.is_dir() and any(folder.rglob(f"{module}[.-]*.nbi"))


def _compile_notice(quiet: bool, module: str = _DENSE_KERNEL) -> None:
    """Say once, on the first run in an environment, that numba is compiling the kernels."""
    if quiet:
        return
    if not _kernels_cached(module):
        print("mmf-stream: compiling the numba kernels (first run in this environment only; "
              "about a minute, then cached; run 'mmf-stream warmup' to do it ahead)", file=sys.stderr, flush=True)


def _submit(args: argparse.Namespace) -> int:
    import mmf_stream as ms
    from mmf_stream._formats import existing_path
    from mmf_stream._io import load_npy

    if args.remove:
        if args.mean is not None or args.features is not None:
            raise ValueError("--remove takes no --mean or --features")
        print(ms.submit(args.project, args.label, queue=args.queue, message_id=args.id, remove=True))
        return 0
    if (args.mean is None) == (args.features is None):
        raise ValueError("give exactly one of --mean M.npy, --features F.npy or --remove")
    source = existing_path(args.mean if args.mean is not None else args.features)
    array = load_npy(source, mmap=False)
    kwargs = {"mean": array} if args.mean is not None else {"features": array}
    print(ms.submit(args.project, args.label, queue=args.queue, message_id=args.id, **kwargs))
    return 0


def _warmup(args: argparse.Namespace) -> int:
    from mmf_stream._warmup import warm_up

    if not args.quiet and not (_kernels_cached(_DENSE_KERNEL) and _kernels_cached(_FACTORED_KERNEL)):
        print("mmf-stream: compiling the numba kernels of every engine (about a minute; numba caches them on "
              "disk, so later runs start at once)", file=sys.stderr, flush=True)
    seconds = warm_up()
    if not args.quiet:
        from mmf_stream.engine import kernels

        folder = getattr(getattr(kernels.apply_rotations, "_cache", None), "_cache_path", None)  # numba internals
        where = f" in {folder}" if isinstance(folder, str) else ""
        print(f"warm-up done in {seconds:.1f} s: the numba kernels are compiled and cached{where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mmf_stream._cluster import CONNECT_TIMEOUT

    parser = _Parser(prog="mmf-stream", description="Multiresolution matrix factorization of symmetric matrices.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fac = sub.add_parser(
        "factorize", help="factor a symmetric matrix, a class store or class means and save the result as Zarr",
        description="Factor a symmetric matrix (INPUT: .npy, .mtx, Zarr array), a class store (INPUT: factored "
        "from its class means, C = M M' is never formed; keeps its labels) or class means (--means M.npy, "
        "classes x features). Results made from class means insert new classes from their means alone.",
    )
    fac.add_argument("input", nargs="?", default=None,
                     help="matrix: .npy, .mtx (Matrix Market), Zarr array; or a class store (factored from its "
                     "means, keeps labels). Leave out with --means")
    fac.add_argument("--means", default=None, metavar="M",
                     help="class means instead of INPUT: m x D, .npy or Zarr array (C = M M' is never formed)")
    fac.add_argument("--order", "-k", type=_int_at_least(2), default=5, help="indices per rotation (default 5)")
    fac.add_argument("--core-size", type=_int_at_least(1), default=None,
                     help="core size (default order - 1, full depth)")
    fac.add_argument("--labels", help="labels file: .npy, .txt or .csv, one per row")
    fac.add_argument("--seed", type=_int_at_least(0), default=0, help="seed for tie-breaks (default 0)")
    fac.add_argument("--candidates", choices=["neighbors", "exhaustive"], default="neighbors",
                     help="tuples scored per level: 'neighbors' (each index with its most coupled neighbours, "
                     "fast) or 'exhaustive' (every k-subset: tiny matrices only, warns when it will be slow)")
    fac.add_argument("--schedule", choices=["auto", "greedy", "staged"], default="auto",
                     help="'greedy' (one level at a time over all indices), 'staged' (levels in stages of "
                     "independent clusters, for large m) or 'auto' (greedy for small inputs, staged above; default)")
    where = fac.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="run the staged levels on the Dask cluster at ADDR (tcp://HOST:PORT); give INPUT or "
                       "--means as a Zarr array path or URL that every worker can open")
    where.add_argument("--workers", type=_int_at_least(1), default=None, metavar="N",
                       help="run the staged levels on an embedded Dask cluster of N worker processes on this machine "
                       "(an input --schedule auto runs greedy stays in this process: no cluster is started)")
    fac.add_argument("--connect-timeout", type=_positive, default=CONNECT_TIMEOUT, metavar="SECONDS",
                     help=f"with --scheduler: give up if the scheduler does not answer within SECONDS (default "
                     f"{CONNECT_TIMEOUT:g})")
    fac.add_argument("--out", "-o", required=True, help="result directory (Zarr group)")
    fac.add_argument("--overwrite", action="store_true", help="replace an existing result (nothing else)")
    fac.add_argument("--show", type=_int_at_least(0), default=5, help="levels to print (default 5)")
    fac.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    fac.set_defaults(run=_factorize)

    cov = sub.add_parser(
        "covariance", help="class means (and their covariance) of features into a class store (Zarr)",
        usage="%(prog)s (FEATURES LABELS | --means M LABELS) --out STORE [options]",
        description="Group features by label into a class store (labels, counts, sums, means). The covariance "
        "C = M M' of the class means is computed from them when read; --dense-covariance also stores it.")
    cov.add_argument("features", nargs="?", default=None, help="features, n x D: .npy or Zarr array")
    cov.add_argument("labels", nargs="?", default=None, help="class of each row: .npy, .txt or .csv (one per line)")
    cov.add_argument("--means", default=None, metavar="M",
                     help="class means instead of FEATURES: m x D, .npy or Zarr array, one row per class "
                     "(LABELS then holds m unique labels)")
    cov.add_argument("--out", "-o", required=True, help="store directory (Zarr group)")
    cov.add_argument("--dense-covariance", action="store_true",
                     help="also store the dense covariance (O(m^2) on disk; for small stores or to read the "
                     "matrix itself); by default it is computed from the means")
    cov.add_argument("--center", action="store_true", help="subtract the global mean (store default)")
    cov.add_argument("--normalize", action="store_true", help="cosine similarities (store default)")
    cov.add_argument("--max-per-class", type=_int_at_least(1), default=None,
                     help="sample at most N instances per class")
    cov.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the sampling (default 0)")
    cov.add_argument("--append", action="store_true",
                     help="add to an existing store (new labels append classes, known labels update them)")
    cov.add_argument("--overwrite", action="store_true", help="replace an existing class store (nothing else)")
    _lock_timeout_option(cov)
    cov.set_defaults(run=_covariance)

    info = sub.add_parser("info", help="summarise a saved factorization or a class store")
    info.add_argument("result", help="result directory written by 'factorize', or a class store")
    info.add_argument("--levels", type=_int_at_least(0), default=10, help="levels to list (default 10)")
    _lock_timeout_option(info)
    info.set_defaults(run=_info)

    show = sub.add_parser("show", help="draw the MMF graph: .svg/.png/.pdf figure or interactive .html page")
    show.add_argument("result", help="result directory written by 'factorize'")
    show.add_argument("--out", "-o", required=True, help="graph.svg, graph.png, graph.pdf or graph.html")
    show.add_argument("--levels", type=int, default=None,
                      help="levels to show, at least 1 (default all; a figure draws at most 300 and adds an overview)")
    show.add_argument("--start", type=int, default=1,
                      help="first level shown, at least 1 (to page through large results: 1, 301, 601, ...)")
    show.add_argument("--highlight", nargs="+", default=None, metavar="LABEL", help="labels to highlight")
    show.add_argument("--compare", choices=["dendrogram"], default=None, help="draw a baseline beside the graph")
    show.add_argument("--matrix", default=None,
                      help="the factored matrix, rows in the result's order (checked; a class store or a Zarr group "
                      "with 'covariance' and 'labels' is reordered by label), for --compare; default: reconstruction")
    show.add_argument("--index-labels", action="store_true", help="name classes by row index if there are no labels")
    show.add_argument("--before", default=None, help="the result before an insertion: draw a before/after view")
    show.add_argument("--dpi", type=int, default=110, help="resolution of .png figures, 10 to 1200 (default 110)")
    show.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    show.set_defaults(run=_show)

    comp = sub.add_parser("compare", help="compare the MMF graphs of several results (e.g. layers), level by level")
    comp.add_argument("results", nargs="+", help="two or more result directories with the same labels")
    comp.add_argument("--names", nargs="+", default=None, help="a name per result (default: file names)")
    comp.add_argument("--levels", type=int, default=None, help="deepest level compared")
    comp.add_argument("--threshold", type=float, default=0.8,
                      help="overlap flagged as saturation, in (0, 1] (default 0.8)")
    comp.add_argument("--out", "-o", default=None, help="also draw the comparison (.svg, .png, .pdf)")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    comp.set_defaults(run=_compare)

    ins = sub.add_parser("insert", help="insert classes of a class store into a saved factorization (incremental MMF)")
    ins.add_argument("result", help="result directory written by 'factorize' (with labels)")
    ins.add_argument("store", help="class store holding the result's classes and the new ones (results made "
                     "from class means insert the new classes' means; no covariance column is formed)")
    ins.add_argument("--labels", nargs="+", default=None, help="classes to insert (default: all the result lacks)")
    ins.add_argument("--out", "-o", required=True, help="new result directory")
    ins.add_argument("--overwrite", action="store_true", help="replace an existing result (nothing else)")
    _lock_timeout_option(ins)
    ins.set_defaults(run=_insert)

    demo = sub.add_parser("demo", help="factor the built-in hierarchical covariance and print the result")
    demo.add_argument("--size", type=_int_at_least(8), default=1000, help="classes generated (default 1000)")
    demo.add_argument("--order", "-k", type=_int_at_least(2), default=4, help="indices per rotation (default 4)")
    demo.add_argument("--core-size", type=_int_at_least(1), default=None, help="core size (default size / 8)")
    demo.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the generator and tie-breaks")
    demo.add_argument("--show", type=_int_at_least(0), default=8, help="levels to print (default 8)")
    demo.add_argument("--out", default=None, help="also save the result here (a directory; replaces a result)")
    demo.set_defaults(run=_demo)

    add_service_commands(sub, _int_at_least, _non_negative)

    sub_parser = sub.add_parser(
        "submit", help="queue a new class (label and mean, or label and features) for the project's coordinator",
        description="Queue a new class for 'mmf-stream serve' on PROJECT (a class store): its label and either "
        "its mean (--mean, a D-vector .npy) or instances to average (--features, n x D .npy). The message is queued "
        "when the command returns (the embedded queue: on disk; Redis: on the server, durable as its appendfsync "
        "makes it); it prints the message id. A label the project has updates that class; --remove removes it.",
    )
    sub_parser.add_argument("project", help="the project (class store written by 'mmf-stream covariance')")
    sub_parser.add_argument("--label", required=True, help="the class's label")
    sub_parser.add_argument("--mean", default=None, metavar="M.npy", help="the class mean (D values)")
    sub_parser.add_argument("--features", default=None, metavar="F.npy", help="instances of the class (n x D)")
    sub_parser.add_argument("--remove", action="store_true",
                            help="remove the class LABEL from the project (knock-out; an unknown label is "
                            "dead-lettered with the reason)")
    sub_parser.add_argument("--queue", default=None, metavar="URL",
                            help="the queue: 'embedded' (default: the project's own) or a Redis Stream, "
                            "redis://HOST:PORT/DB (also rediss://, unix://; ?stream=KEY names the stream, by "
                            "default mmf_stream:<project id>)")
    sub_parser.add_argument("--id", default=None, help="the message id (default: a new one); resubmitting an id "
                            "queues nothing new")
    sub_parser.set_defaults(run=_submit)

    warm = sub.add_parser(
        "warmup", help="compile and cache the numba kernels now (for install steps and Dask worker images)",
        description="Compile every numba kernel the engines use (dense and factored, greedy and staged "
        "factorization, insertion, the class covariance pass) by factoring tiny built-in problems, and print how "
        "long it took. numba caches compiled kernels on disk (beside the installed package, or in "
        "NUMBA_CACHE_DIR), so run it once in an install step or when building a Dask worker image: the first "
        "real run then starts at once instead of compiling for about a minute.",
    )
    warm.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    warm.set_defaults(run=_warmup)
    return parser


def _version() -> str:
    from mmf_stream._version import __version__

    return __version__


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mmf-stream: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    import os
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        print(f"mmf-stream: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("mmf-stream: error: not enough memory for this input", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mmf-stream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, not bad input: still one line unless debugging
        if os.environ.get("MMF_STREAM_DEBUG"):
            raise
        print(f"mmf-stream: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set MMF_STREAM_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
