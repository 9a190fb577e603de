"""flowerapp: the model, the data and the training loop (Flower's PyTorch quickstart pattern).

The data are scikit-learn's bundled handwritten digits (8x8 images, 10 classes), so
nothing is downloaded. A SuperNode finds its own data through its node config:

- ``data-path``: a folder holding ``train.npz`` (arrays ``x``: float32 N x 64 in [0, 1],
  ``y``: int64 N), as a deployment gives each site;
- otherwise ``partition-id`` and ``num-partitions`` (what Flower's simulation engine
  sets): a deterministic slice of the bundled data set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small MLP for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(42).permutation(len(y))
    return x[order], y[order]


def load_arrays(node_config: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """This node's examples, from its data folder or its partition of the digits."""
    if "data-path" in node_config:
        with np.load(Path(str(node_config["data-path"])) / "train.npz", allow_pickle=False) as z:
            return z["x"].astype(np.float32), z["y"].astype(np.int64)
    x, y = _digits()
    pid = int(node_config["partition-id"])  # type: ignore[call-overload]
    parts = int(node_config["num-partitions"])  # type: ignore[call-overload]
    return x[pid::parts], y[pid::parts]


def load_data(
    node_config: Mapping[str, object], batch_size: int
) -> tuple[DataLoader, DataLoader]:
    """A train loader (80 %) and a validation loader (20 %) of this node's examples."""
    x, y = load_arrays(node_config)
    cut = int(len(y) * 0.8)
    train = TensorDataset(torch.from_numpy(x[:cut]), torch.from_numpy(y[:cut]))
    val = TensorDataset(torch.from_numpy(x[cut:]), torch.from_numpy(y[cut:]))
    generator = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(val, batch_size=batch_size),
    )


def train(net: Net, loader: DataLoader, epochs: int, lr: float, device: torch.device) -> float:
    """Train ``net`` on ``loader``; the average training loss."""
    net.to(device)
    net.train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    total, batches = 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(net(xb.to(device)), yb.to(device))
            loss.backward()
            optimizer.step()
            total += float(loss.item())
            batches += 1
    return total / max(batches, 1)


def test(net: Net, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Loss and accuracy of ``net`` on ``loader``."""
    net.to(device)
    net.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for xb, yb in loader:
            out = net(xb.to(device))
            loss += float(criterion(out, yb.to(device)).item())
            correct += int((out.argmax(1) == yb.to(device)).sum().item())
            count += len(yb)
    return loss / max(count, 1), correct / max(count, 1)
