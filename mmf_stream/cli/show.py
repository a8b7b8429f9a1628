"""``mmf-stream show`` and ``compare``: the MMF graph as a figure or page, and comparisons of results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from mmf_stream.store.durability import own_format


_FIGURE_SUFFIXES = (".svg", ".png", ".pdf")


def _show(args: argparse.Namespace) -> int:
    import mmf_stream as ms
    from mmf_stream.views.figure import LEVELS_PER_PAGE, MAX_DPI, MIN_DPI

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
    from mmf_stream.common.formats import existing_path

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
    from mmf_stream.store.fingerprint import matrix_mismatches, reordered

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
    if args.null_draws < 1:
        raise ValueError(f"--null-draws must be at least 1, got {args.null_draws}")
    if args.matrix and not args.novelty:
        raise ValueError("--matrix is used with --novelty")
    results = [ms.load(path) for path in args.results]
    names = args.names or [Path(path).stem for path in args.results]
    if args.novelty:
        known = set() if results[-1].labels is None else {str(x) for x in results[-1].labels.tolist()}
        unknown = [label for label in args.novelty if label not in known]
        if unknown:
            raise ValueError(f"unknown label {unknown[0]!r} for --novelty (not a class of {args.results[-1]})")
    matrix = _factored_matrix(args.matrix, results[-1], args.results[-1]) if args.matrix else None
    comparison = ms.views.compare(results, names, levels=args.levels, threshold=args.threshold,
                                  null_draws=args.null_draws)
    print(comparison.table())
    if args.novelty:
        if matrix is None:
            print("mmf-stream: novelty measured on the reconstruction M(C) of the last result; pass --matrix for the "
                  "exact matrix", file=sys.stderr)
        print(f"novelty in {names[-1]}:")
        print(ms.views.novelty(results[-1], args.novelty, matrix=matrix).table())
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


def add_commands(sub) -> None:
    """Add ``show``, ``compare`` to the ``mmf-stream`` subparsers ``sub``."""
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
    comp.add_argument("--null-draws", type=int, default=200,
                      help="random relabellings for the trajectory's permutation p-value (default 200)")
    comp.add_argument("--novelty", nargs="+", default=None, metavar="LABEL",
                      help="also score these classes of the last result: information beyond compositions of the "
                      "others, with a percentile against them (docs/analyses.md)")
    comp.add_argument("--matrix", default=None,
                      help="the last result's factored matrix, for --novelty (default: its reconstruction)")
    comp.add_argument("--out", "-o", default=None, help="also draw the comparison (.svg, .png, .pdf)")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    comp.set_defaults(run=_compare)
