"""``fashion-mnist``: Zalando's 28×28 clothing images, a small CNN.

The data comes only from Debian's ``dataset-fashion-mnist`` package, which installs
the four IDX files under ``/usr/share/datasets/fashion-mnist`` (override with the
``SECFL_FASHION_MNIST_DIR`` environment variable). Nothing is downloaded, ever: a
missing package is a :class:`TaskError` that says ``apt-get install
dataset-fashion-mnist``. The IDX files are parsed here with numpy (no torchvision).

The 60,000 training and 10,000 test images are pooled and re-split by
:func:`secfl.tasks._split` like every task's data, so the split's seed and fractions
decide the test set. Pixels are stored as uint8 ``(1, 28, 28)`` and scaled to
[0, 1] on load. The CNN (two strided 5×5 convolutions, 8 and 16 channels, then
784 → 32 → 10) has about 29k parameters and trains at about five thousand images
per second on one CPU thread.

The module itself is a task, as one delivered in a code volume would be.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from secfl._internal import files
from secfl.errors import TaskError
from secfl.tasks._base import ClassificationTask, Scaling

__all__ = [
    "DEFAULT_DIR",
    "ENV_DIR",
    "FILES",
    "INSTALL_HINT",
    "TASK",
    "FashionMnistTask",
    "available",
    "build_model",
    "dataset_dir",
    "evaluate",
    "load_data",
    "name",
    "read_idx",
    "train",
]

#: Where Debian's ``dataset-fashion-mnist`` puts the files.
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "SECFL_FASHION_MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = "install it with: apt-get install dataset-fashion-mnist"


def dataset_dir() -> Path:
    """The folder holding the IDX files (``$SECFL_FASHION_MNIST_DIR`` or Debian's)."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def available() -> bool:
    """Whether all four IDX files are present."""
    folder = dataset_dir()
    return all((folder / f).is_file() for pair in FILES.values() for f in pair)


#: The largest IDX file read (Fashion-MNIST's training images are 47 MB unpacked): a
#: gzip bomb is refused, not unpacked whole.
MAX_IDX_BYTES = 256 << 20


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (gzip-compressed), checked against its own header."""
    try:
        # a regular file only: a FIFO planted there hung the split (a hostile review)
        with files.open_regular(path) as fh, gzip.GzipFile(fileobj=fh, mode="rb") as handle:
            raw = handle.read(MAX_IDX_BYTES + 1)
    except FileNotFoundError:
        raise TaskError(f"fashion-mnist: {path} not found; {INSTALL_HINT}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise TaskError(f"fashion-mnist: cannot read {path}: {exc}") from None
    if len(raw) > MAX_IDX_BYTES:
        raise TaskError(f"fashion-mnist: {path.name} unpacks to more than {MAX_IDX_BYTES} bytes")
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise TaskError(f"fashion-mnist: {path.name} is not a {ndim}-D unsigned-byte IDX file")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != math.prod(dims):  # Python integers: np.prod wraps at 2**63
        raise TaskError(f"fashion-mnist: {path.name} holds {len(raw) - header} bytes, not {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class FashionMnistTask(ClassificationTask):
    """Ten clothing classes from 28×28 grey images, classified by a small CNN."""

    name = "fashion-mnist"
    num_classes = 10
    feature_shape = (1, 28, 28)
    storage_dtype = np.dtype(np.uint8)
    default_config: ClassVar[Mapping[str, Any]] = {"batch_size": 32, "lr": 0.1, "momentum": 0.9}

    def _network(self) -> nn.Module:
        """Two strided 5x5 convolutions and a small head (29k parameters).

        Sized for federations of CPU-only sites and for an evaluation grid of
        thousands of runs on two cores: a step costs a quarter of the usual
        conv-pool-conv-pool CNN's here (max pooling is slow on CPUs), and federated
        accuracy is the same at equal data (0.69 with 6000 samples over 20 sites,
        10 rounds; lr 0.1 makes up for its slower start)."""
        return nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )

    def load_pool(self) -> tuple[np.ndarray, np.ndarray]:
        folder = dataset_dir()
        if not folder.is_dir():
            raise TaskError(f"fashion-mnist: dataset not found in {folder}; {INSTALL_HINT}")
        xs, ys = [], []
        for images, labels in FILES.values():
            x = read_idx(folder / images, 3)
            y = read_idx(folder / labels, 1)
            if x.shape[1:] != (28, 28) or x.shape[0] != y.shape[0]:
                raise TaskError(f"fashion-mnist: {images} and {labels} do not match")
            if y.size and int(y.max()) >= self.num_classes:
                raise TaskError(f"fashion-mnist: {labels} has labels outside 0..9")
            xs.append(x.reshape(-1, 1, 28, 28))
            ys.append(y.astype(np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    def fit_scaling(self, x_train: np.ndarray) -> Scaling:
        """A fixed [0, 1] scaling of 8-bit pixels: it needs no statistics."""
        del x_train
        return Scaling(offset=(0.0,), scale=(255.0,))


TASK = FashionMnistTask()
name = TASK.name
build_model = TASK.build_model
load_data = TASK.load_data
train = TASK.train
evaluate = TASK.evaluate
