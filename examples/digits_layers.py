"""Worked example: the MMF graphs of three layers of a small network on digits.

Trains a small convolutional network on scikit-learn's bundled digits (8 x 8
images, 10 classes; nothing is downloaded), takes the class covariance of three
layers with the PyTorch adapter (centred, cosine), factors each with MMF (order 3, full depth),
and writes the figures, the interactive pages and the layer comparison.

Run (after `bash scripts/test.sh`, which installs torch and scikit-learn):

    .venv/bin/python examples/digits_layers.py [--out examples/output]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import mmf_stream as ms  # noqa: E402
from mmf_stream.torch import collect_class_means  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LAYERS = {"conv1": "features.1", "conv2": "features.3", "fc": "classifier.2"}


def network() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Sequential(  # features
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        ),
        torch.nn.Sequential(  # classifier
            torch.nn.Flatten(), torch.nn.Linear(32 * 64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "output"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    images = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    targets = torch.tensor(digits.target)
    torch.manual_seed(0)
    parts = network()
    model = torch.nn.Sequential()
    model.add_module("features", parts[0])
    model.add_module("classifier", parts[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=128, shuffle=True)
    for _ in range(args.epochs):
        for x, y in loader:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == targets).float().mean().item()
    print(f"trained on {len(targets)} digits, training accuracy {accuracy:.3f}")

    means = collect_class_means(model, list(LAYERS.values()), loader)
    results = []
    for short, layer in LAYERS.items():
        # centred and cosine-normalised: ReLU activations are all positive, so the
        # plain Gram of the means is dominated by their common direction
        cov = means[layer].covariance(center=True, normalize=True)
        labels = [NAMES[int(i)] for i in cov.labels]
        result = ms.factorize(cov.matrix, order=3, labels=labels)
        result.save(out / f"{short}.zarr", overwrite=True)
        results.append(result)
        print(f"\n{short} ({layer}): error {result.error:.4f}, relative {result.relative_error:.4f}")
        print(result.summary(levels=4))
        fig = ms.views.plot_with_dendrogram(result, cov.matrix, title=f"MMF graph of layer {short}")
        ms.views.save_figure(fig, out / f"{short}.png", dpi=100)
        plt.close(fig)
        ms.views.to_html(result, out / f"{short}.html", matrix=cov.matrix, title=f"MMF graph of layer {short}")

    comparison = ms.views.compare(results, list(LAYERS))
    print("\n" + comparison.table())
    fig = ms.views.plot_comparison(comparison)
    ms.views.save_figure(fig, out / "layers.png", dpi=100)
    plt.close(fig)
    print(f"\nfigures and pages in {out}")


if __name__ == "__main__":
    main()
