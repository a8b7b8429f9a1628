"""PyTorch adapter, end to end on scikit-learn's bundled digits (no downloads)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is installed by scripts/test.sh")

import mmf_stream as ms  # noqa: E402
from mmf_stream.torch import collect_class_means  # noqa: E402


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.fc1 = torch.nn.Linear(8 * 8 * 8, 32)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.fc2(self.relu(self.fc1(h.flatten(1))))


@pytest.fixture(scope="module")
def trained():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = SmallNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimiser.step()
    accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9  # the network learned something
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=True)
    return net, x, y, loader


def test_class_means_equal_full_activation_means(trained):
    net, x, y, loader = trained
    net.train()
    result = collect_class_means(net, ["conv.1", "fc1", "relu"], loader)
    assert net.training  # mode restored
    with torch.no_grad():
        conv = net.conv(x).mean(dim=(2, 3)).double().numpy()  # global average pooling
        fc1 = net.fc1(net.conv(x).flatten(1)).double().numpy()
    labels = y.numpy()
    for name, full in (("conv.1", conv), ("fc1", fc1), ("relu", np.maximum(fc1, 0))):
        means = result[name]
        np.testing.assert_array_equal(means.labels, np.arange(10))
        np.testing.assert_array_equal(means.counts, np.bincount(labels))
        np.testing.assert_allclose(means.means, [full[labels == c].mean(axis=0) for c in range(10)], rtol=1e-5, atol=1e-6)
        expected = ms.class_covariance(full, labels).matrix
        np.testing.assert_allclose(means.covariance().matrix, expected, rtol=1e-5, atol=1e-6)


def test_digits_layers_factorize_end_to_end(trained, tmp_path):
    net, _, _, loader = trained
    result = collect_class_means(net, ["conv.1", "relu"], loader)
    for name in ("conv.1", "relu"):
        cov = result[name].covariance(normalize=True)
        f = ms.factorize(cov.matrix, order=3, labels=cov.labels)
        assert f.size == 10 and f.core.shape == (2,)
        assert np.isclose(f.error, np.linalg.norm(cov.matrix - f.reconstruct()), rtol=1e-7)
        store = ms.Store.create(tmp_path / f"{name}.zarr")
        store.add_means(result[name].means, result[name].labels, counts=result[name].counts)
        np.testing.assert_allclose(np.asarray(store.covariance), result[name].covariance().matrix, atol=1e-10)


def test_pooling_options_and_errors(trained):
    net, x, y, loader = trained
    flat = collect_class_means(net, "conv.1", loader, pooling="flatten", max_batches=2)["conv.1"]
    assert flat.means.shape[1] == 8 * 8 * 8
    peak = collect_class_means(net, "conv.1", loader, pooling="max", max_batches=2)["conv.1"]
    assert peak.means.shape[1] == 8
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        collect_class_means(net, ["nope"], loader)
    with pytest.raises(ValueError, match="pooling must be one of"):
        collect_class_means(net, ["fc1"], loader, pooling="median")
    with pytest.raises(ValueError, match="no batches"):
        collect_class_means(net, ["fc1"], [])
