"""PyTorch adapter: class means of named layers' representations, in one pass.

Needs the optional ``torch`` extra (``pip install torch``; not a core
dependency). Nothing is downloaded: the model and the data loader are yours.

>>> from mmf_stream.torch import collect_class_means          # doctest: +SKIP
>>> means = collect_class_means(model, ["features.3", "fc1"], loader)
>>> cov = means["fc1"].covariance()                            # ClassCovariance
>>> f = ms.factorize(cov.matrix, order=4, labels=cov.labels)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmf_stream.store.class_covariance import ClassCovariance, covariance_from_means, group_sums

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("mmf_stream.torch needs PyTorch: pip install torch") from exc

__all__ = ["ClassMeans", "collect_class_means"]

POOLINGS = ("mean", "max", "flatten")


@dataclass
class ClassMeans:
    """Per-class mean representation of one layer.

    Attributes
    ----------
    labels : ndarray of shape (m,)
        Sorted class labels.
    means : ndarray of shape (m, D)
    counts : ndarray of shape (m,)
        Instances seen per class.
    """

    labels: np.ndarray
    means: np.ndarray
    counts: np.ndarray

    def covariance(self, *, center: bool = False, normalize: bool = False) -> ClassCovariance:
        """The class covariance ``C = M M'`` (equation 7), optionally centred / cosine."""
        matrix = covariance_from_means(self.means, self.counts, center=center, normalize=normalize)
        return ClassCovariance(
            matrix=matrix, labels=self.labels, means=self.means, counts=self.counts,
            center=center, normalize=normalize,
        )


def _pool(output: Any, pooling: str) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"layer output must be a tensor, got {type(output).__name__}")
    activation = output.detach()
    if activation.ndim > 2:
        if pooling == "mean":
            activation = activation.flatten(2).mean(dim=2)
        elif pooling == "max":
            activation = activation.flatten(2).amax(dim=2)
        else:
            activation = activation.flatten(1)
    elif activation.ndim == 1:
        activation = activation[:, None]
    return activation


def collect_class_means(
    model: torch.nn.Module,
    layers: str | Sequence[str],
    loader: Iterable,
    *,
    pooling: str = "mean",
    device: str | torch.device | None = None,
    max_batches: int | None = None,
) -> dict[str, ClassMeans]:
    """Stream a data loader through ``model`` and average each named layer per class.

    Forward hooks sum each layer's (pooled) output per class as batches pass;
    no activation is kept beyond its batch.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under ``torch.no_grad`` (its mode is restored after).
    layers : str or sequence of str
        Names from ``model.named_modules()`` (e.g. ``"features.3"``, ``"fc1"``).
    loader : iterable of (inputs, targets)
        Targets are class labels: an integer tensor/array or a list of strings.
    pooling : {"mean", "max", "flatten"}
        How outputs with spatial dimensions (N, C, ...) become vectors: global
        average (default), global max, or flattening.
    device : optional
        Device to move inputs to (the model is not moved).
    max_batches : int, optional
        Stop after this many batches.

    Returns
    -------
    dict
        Layer name -> :class:`ClassMeans`.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("give at least one layer name")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        known = ", ".join(n for n in modules if n)[:300]
        raise ValueError(f"unknown layer {unknown[0]!r}; the model has: {known}")

    codes_of: dict[Any, int] = {}
    sums: dict[str, np.ndarray] = {}
    counts = np.zeros(0, dtype=np.int64)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            captured[name] = _pool(output, pooling)

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch_index, batch in enumerate(loader):
                if max_batches is not None and batch_index >= max_batches:
                    break
                inputs, targets = batch[0], batch[1]
                if device is not None:
                    inputs = inputs.to(device)
                captured.clear()
                model(inputs)
                keys = targets.tolist() if hasattr(targets, "tolist") else list(targets)
                for key in keys:
                    if key not in codes_of:
                        codes_of[key] = len(codes_of)
                codes = np.array([codes_of[key] for key in keys], dtype=np.int64)
                n_classes = len(codes_of)
                if counts.shape[0] < n_classes:
                    counts = np.concatenate([counts, np.zeros(n_classes - counts.shape[0], np.int64)])
                keep = np.ones(codes.shape[0], dtype=np.bool_)
                for name in names:
                    if name not in captured:
                        raise ValueError(f"layer {name!r} did not run in the forward pass")
                    activation = captured[name].to("cpu", torch.float64).numpy()
                    if activation.shape[0] != codes.shape[0]:
                        raise ValueError(
                            f"layer {name!r} gave {activation.shape[0]} rows for a batch of {codes.shape[0]} targets"
                        )
                    layer_sums = sums.get(name)
                    if layer_sums is None:
                        layer_sums = np.zeros((n_classes, activation.shape[1]))
                    elif layer_sums.shape[0] < n_classes:
                        layer_sums = np.vstack([layer_sums, np.zeros((n_classes - layer_sums.shape[0], layer_sums.shape[1]))])
                    layer_counts = np.zeros(n_classes, dtype=np.int64)
                    if not group_sums(np.ascontiguousarray(activation), codes, keep, layer_sums, layer_counts):
                        raise ValueError(f"layer {name!r} produced non-finite values")
                    sums[name] = layer_sums
                np.add.at(counts, codes, 1)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not codes_of:
        raise ValueError("the loader yielded no batches")
    labels = np.array(list(codes_of))
    order = np.argsort(labels, kind="stable")
    return {
        name: ClassMeans(
            labels=labels[order],
            means=sums[name][order] / counts[order][:, None],
            counts=counts[order].copy(),
        )
        for name in names
    }
