"""``mmf-stream factorize``, ``covariance``, ``info``, ``insert`` and ``demo``: matrices, class stores and results."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mmf_stream.cli.arguments import COVARIANCE_KERNEL, DENSE_KERNEL, FACTORED_KERNEL, compile_notice, int_at_least, lock_timeout_option, positive, progress_bar, quiet_dask_logs, storage_option
from mmf_stream.common.formats import one_line
from mmf_stream.common.progress import progress
from mmf_stream.engine.options import DEFAULT_OPTIONS, NEIGHBOUR_RULES
from mmf_stream.store.durability import check_replaceable, fsync_tree, own_format, staging_path, swap_into_place
from mmf_stream.store.object_stores import is_url, open_url_array


def _read_means(path: str, storage_options: dict | None = None):
    """Class means (m x D) for ``--means``: a ``.npy`` file (memory-mapped) or a Zarr array (path or URL)."""
    from mmf_stream.common.formats import existing_path
    from mmf_stream.io import read_features

    if is_url(path):
        return open_url_array(path, storage_options)
    source = existing_path(path)
    if own_format(source) == "class-store":
        raise ValueError(f"{source} is a class store; give it as INPUT (mmf-stream factorize {source} ...), "
                         "not --means")
    return read_features(source, role="--means")


def _cluster_input(path: str, storage_options: dict | None):
    """With --scheduler/--workers: the Zarr array at ``path`` (path or URL) that the workers read
    themselves, else None (a class store, or a file read here as without a cluster)."""
    from mmf_stream.dask_client import open_zarr_array

    if is_url(path):
        return open_url_array(path, storage_options)  # a one-line error if it does not open
    if own_format(Path(path)) == "class-store":
        return None
    return open_zarr_array(path)


def _storage_options(args: argparse.Namespace) -> dict | None:
    """``--storage-option KEY=VALUE ...`` as a dict (None without any), given only with a URL INPUT or
    --means; ``--out`` must be local (results are written to local directories)."""
    if is_url(args.out):
        raise ValueError(f"--out {args.out}: results are written to a local directory (object stores are read "
                         "from: INPUT or --means)")
    if not args.storage_option:
        return None
    if not is_url(args.means if args.means is not None else args.input):
        raise ValueError("--storage-option applies to an INPUT or --means given by URL (s3://BUCKET/PATH.zarr)")
    return dict(args.storage_option)


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
    storage_options = _storage_options(args)
    if args.scheduler is not None or args.workers is not None:
        return _factorize_on_dask(args, storage_options)
    out = Path(args.out)
    check_replaceable(out, args.overwrite, kinds=("factorization",))
    labels = ms.read_labels(args.labels) if args.labels else None
    if args.means is not None:
        source_name = args.means
        means = _read_means(args.means, storage_options)
        source, kwargs = None, {"means": means}
        size = means.shape[0] if len(means.shape) else 0
    elif not is_url(args.input) and own_format(Path(args.input)) == "class-store":
        # factored from the store's means (C = M M' is never formed); its labels unless --labels
        source_name = args.input
        source = ms.Store.open(args.input, mode="r")
        kwargs, size = {}, source.size
    else:
        source_name = args.input
        source = open_url_array(args.input, storage_options) if is_url(args.input) else ms.read_matrix(args.input)
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
    compile_notice(args.quiet, module=FACTORED_KERNEL if factored else DENSE_KERNEL)
    with progress_bar(max(size - core, 0), "factorize", args.quiet) as update:
        result = ms.factorize(
            source,
            order=args.order,
            core_size=args.core_size,
            seed=args.seed,
            labels=labels,
            schedule=args.schedule,
            candidates=args.candidates,
            options={"neighbours": args.neighbours},
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


def _factorize_on_dask(args: argparse.Namespace, storage_options: dict | None) -> int:
    """``factorize --scheduler ADDR | --workers N``: the staged levels on Dask workers (a Zarr input,
    local or by URL, is read by the workers themselves)."""
    import mmf_stream as ms
    from mmf_stream.dask_client import connect_client
    from mmf_stream.engine.schedule import resolve_schedule

    if args.schedule == "greedy" or args.candidates == "exhaustive":
        raise ValueError("greedy levels run in one process: leave out --scheduler/--workers, or use --schedule "
                         "staged")
    out = Path(args.out)
    check_replaceable(out, args.overwrite, kinds=("factorization",))
    labels = ms.read_labels(args.labels) if args.labels else None
    name = args.means if args.means is not None else args.input
    array = _cluster_input(name, storage_options)
    factored = args.means is not None or (not is_url(name) and own_format(Path(name)) == "class-store")
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
    quiet_dask_logs()
    with connect_client(args.scheduler, workers=args.workers, connect_timeout=args.connect_timeout) as client:
        with progress(max(size - core, 0), "factorize", unit="level", quiet=args.quiet) as update:
            bar = getattr(update, "__self__", None)
            try:
                result = ms.factorize(
                    None if args.means is not None else data, order=args.order, core_size=args.core_size,
                    seed=args.seed, labels=labels, schedule=args.schedule, options={"neighbours": args.neighbours},
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

    from mmf_stream.io import read_features

    given = [x for x in (args.features, args.labels) if x is not None]
    if args.means is not None:
        if len(given) != 1:
            raise ValueError(f"with --means give one positional argument, LABELS; got {len(given)}")
        means = _read_means(args.means)
        if len(means.shape) != 2:
            raise ValueError(f"--means must be a 2-D array (classes x features), got shape {tuple(means.shape)}")
        labels = ms.read_labels(given[0])
        from mmf_stream.validation import labels_for

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
        from mmf_stream.store.class_covariance import feature_shape, encode_labels

        encode_labels(labels, feature_shape(features)[0])
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
    compile_notice(False, module=COVARIANCE_KERNEL)
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
        compile_notice(False, module=FACTORED_KERNEL)
        grown = result.insert_many(means=means, labels=new)
    else:
        matrix = store.columns(order[len(old):], rows=order)  # (size + b) x b, from the means
        compile_notice(False)
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
    from mmf_stream.store.fingerprint import mismatches, probe_vector

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
    compile_notice(False)
    with progress_bar(args.size - core, "factorize", False) as update:
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


def add_commands(sub) -> None:
    """Add ``factorize``, ``covariance``, ``info``, ``insert``, ``demo`` to the ``mmf-stream`` subparsers ``sub``."""
    from mmf_stream.dask_client import CONNECT_TIMEOUT

    fac = sub.add_parser(
        "factorize", help="factor a symmetric matrix, a class store or class means and save the result as Zarr",
        description="Factor a symmetric matrix (INPUT: .npy, .mtx, Zarr array), a class store (INPUT: factored "
        "from its class means, C = M M' is never formed; keeps its labels) or class means (--means M.npy, "
        "classes x features). Results made from class means insert new classes from their means alone.",
    )
    fac.add_argument("input", nargs="?", default=None,
                     help="matrix: .npy, .mtx (Matrix Market), Zarr array (a path, or a URL: s3://BUCKET/C.zarr, "
                     "file:///...); or a class store (factored from its means, keeps labels). Leave out with --means")
    fac.add_argument("--means", default=None, metavar="M",
                     help="class means instead of INPUT: m x D, .npy or Zarr array (path or URL, as INPUT; "
                     "C = M M' is never formed)")
    fac.add_argument("--storage-option", action="append", type=storage_option, default=None, metavar="KEY=VALUE",
                     help="for an INPUT or --means given by URL: a keyword of its fsspec filesystem (s3fs: "
                     "endpoint_url=http://HOST:PORT, anon=true, key=..., secret=...; VALUE read as JSON where it "
                     "is JSON); repeatable. Without it each process, the Dask workers too, reads its own "
                     "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)")
    fac.add_argument("--order", "-k", type=int_at_least(2), default=5, help="indices per rotation (default 5)")
    fac.add_argument("--core-size", type=int_at_least(1), default=None,
                     help="core size (default order - 1, full depth)")
    fac.add_argument("--labels", help="labels file: .npy, .txt or .csv, one per row")
    fac.add_argument("--seed", type=int_at_least(0), default=0, help="seed for tie-breaks (default 0)")
    fac.add_argument("--candidates", choices=["neighbors", "exhaustive"], default="neighbors",
                     help="tuples scored per level: 'neighbors' (each index with its most coupled neighbours, "
                     "fast) or 'exhaustive' (every k-subset: tiny matrices only, warns when it will be slow)")
    fac.add_argument("--neighbours", choices=list(NEIGHBOUR_RULES), default=DEFAULT_OPTIONS.neighbours,
                     help="how a tuple is completed: 'energy' (default: the least error, tuples may cross branches) or "
                     "'faithful' (a class's first tuple holds its nearest classes: the graph follows the hierarchy, "
                     "4-18%% more error; docs/fidelity.md)")
    fac.add_argument("--schedule", choices=["auto", "greedy", "staged"], default="auto",
                     help="'greedy' (one level at a time over all indices), 'staged' (levels in stages of "
                     "independent clusters, for large m) or 'auto' (greedy for small inputs, staged above; default)")
    where = fac.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="run the staged levels on the Dask cluster at ADDR (tcp://HOST:PORT); give INPUT or "
                       "--means as a Zarr array path or URL (s3://...) that every worker can open: each worker "
                       "reads its own chunks")
    where.add_argument("--workers", type=int_at_least(1), default=None, metavar="N",
                       help="run the staged levels on an embedded Dask cluster of N worker processes on this machine "
                       "(an input --schedule auto runs greedy stays in this process: no cluster is started)")
    fac.add_argument("--connect-timeout", type=positive, default=CONNECT_TIMEOUT, metavar="SECONDS",
                     help=f"with --scheduler: give up if the scheduler does not answer within SECONDS (default "
                     f"{CONNECT_TIMEOUT:g})")
    fac.add_argument("--out", "-o", required=True, help="result directory (Zarr group)")
    fac.add_argument("--overwrite", action="store_true", help="replace an existing result (nothing else)")
    fac.add_argument("--show", type=int_at_least(0), default=5, help="levels to print (default 5)")
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
    cov.add_argument("--max-per-class", type=int_at_least(1), default=None,
                     help="sample at most N instances per class")
    cov.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the sampling (default 0)")
    cov.add_argument("--append", action="store_true",
                     help="add to an existing store (new labels append classes, known labels update them)")
    cov.add_argument("--overwrite", action="store_true", help="replace an existing class store (nothing else)")
    lock_timeout_option(cov)
    cov.set_defaults(run=_covariance)

    info = sub.add_parser("info", help="summarise a saved factorization or a class store")
    info.add_argument("result", help="result directory written by 'factorize', or a class store")
    info.add_argument("--levels", type=int_at_least(0), default=10, help="levels to list (default 10)")
    lock_timeout_option(info)
    info.set_defaults(run=_info)

    ins = sub.add_parser("insert", help="insert classes of a class store into a saved factorization (incremental MMF)")
    ins.add_argument("result", help="result directory written by 'factorize' (with labels)")
    ins.add_argument("store", help="class store holding the result's classes and the new ones (results made "
                     "from class means insert the new classes' means; no covariance column is formed)")
    ins.add_argument("--labels", nargs="+", default=None, help="classes to insert (default: all the result lacks)")
    ins.add_argument("--out", "-o", required=True, help="new result directory")
    ins.add_argument("--overwrite", action="store_true", help="replace an existing result (nothing else)")
    lock_timeout_option(ins)
    ins.set_defaults(run=_insert)

    demo = sub.add_parser("demo", help="factor the built-in hierarchical covariance and print the result")
    demo.add_argument("--size", type=int_at_least(8), default=1000, help="classes generated (default 1000)")
    demo.add_argument("--order", "-k", type=int_at_least(2), default=4, help="indices per rotation (default 4)")
    demo.add_argument("--core-size", type=int_at_least(1), default=None, help="core size (default size / 8)")
    demo.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the generator and tie-breaks")
    demo.add_argument("--show", type=int_at_least(0), default=8, help="levels to print (default 8)")
    demo.add_argument("--out", default=None, help="also save the result here (a directory; replaces a result)")
    demo.set_defaults(run=_demo)
