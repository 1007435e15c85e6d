"""``cifar_fd``: an offline sample-quality measure for colour images with class folders, the colour
analogue of ``digit_fd``. The Frechet distance between Gaussians fitted to the penultimate-layer
features (256-d) of a small CNN classifier trained here on the run's own labelled training
images, the label of an image being the first folder of its path under the data root (CIFAR-10
stored as ``train/<class>/*.jpg``: the ten class names).

It is named ``cifar_fd`` everywhere, never "FID": it uses the FID formula, but not Inception-v3,
so its values are not comparable with published FIDs, only between models scored the same way
(same run data, same classifier file). The classifier is trained deterministically (seeded, CPU)
on first use (docs/reproduce.md, "Sample quality on CIFAR-10: cifar_fd and temperature", has the
measured time), and cached next to the run's evaluation results with the class names, the
held-out accuracy (reported with the score) and a fingerprint of the training files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaeflow_cli.console import log
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.threads import tick

FORMAT = 1
FEATURES = 256
EPOCHS = 4
BATCH = 128


class ColourCNN(nn.Module):
    """Three stages of two conv3x3-BatchNorm-ReLU and a 2x2 max-pool (32, 64, 128 channels), a
    global average pool, FC 256 (the features, after a ReLU), FC n_classes. Any image size >= 8."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (32, 64, 128):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0 - 0.5)


def class_labels(
    files: list[Path], root: Path, *, split: str = "train", min_classes: int = 2, total: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """(int64 (N,) labels, sorted class names): an image's class is the first folder of its path
    under ``root``. Raises VaeflowError when a file lies directly in ``root`` or the images of
    ``split`` are in fewer than ``min_classes`` classes (the classifier trains on two or more; the
    held-out images may be in fewer); ``total``, how many class folders the whole root has, tells
    a short split from a root of one class in that message."""
    names = []
    for p in files:
        parts = Path(p).relative_to(root).parts
        if len(parts) < 2:
            raise VaeflowError(
                f"cifar_fd: {p} is not inside a class folder of {root}; cifar_fd needs the images in ROOT/<class>/ (as CIFAR-10's train/<class>/*.jpg)"
            )
        names.append(parts[0])
    classes = sorted(set(names))
    if len(classes) < min_classes:
        found = f"{len(classes)} class folder(s) ({', '.join(classes) or 'none'})"
        if total is not None and total > len(classes):
            raise VaeflowError(
                f"cifar_fd: the {split} split's images under {root} are in {found} of the {total} there (test_fraction decides "
                f"which images are held out); its classifier trains on at least {min_classes}: add images to the other class folders"
            )
        raise VaeflowError(f"cifar_fd: the images under {root} are in {found}; a classifier needs at least {min_classes}")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], np.int64), classes


MIN_SIDE = 8  # ColourCNN's three 2x2 max-pools need images of at least 8 x 8 pixels


def labelled_splits(dataset) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str], str]:
    """((train images, labels), (test images, labels), class names, fingerprint) of a run's
    ``imagefolder`` dataset, images uint8 (N, 3, H, W) in the order its splits decode them."""
    image_files = callable(getattr(dataset, "files", None)) and isinstance(getattr(dataset, "root", None), Path)  # imagefolder's interface
    if not (image_files and tuple(getattr(dataset, "splits", ())) == ("train", "test")):
        raise VaeflowError(
            "cifar_fd needs a run trained on an imagefolder dataset of class folders (CIFAR-10 as train/<class>/*.jpg); use digit_fd for digits or fid with Inception weights"
        )
    shape = tuple(getattr(dataset, "image_shape", ()))
    if len(shape) == 3 and min(shape[1:]) < MIN_SIDE:
        raise VaeflowError(
            f"cifar_fd: the run's images are {shape[2]}x{shape[1]}, and its classifier (three 2x2 poolings) needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}; use --metrics bpd, or fid, for images this small"
        )
    if getattr(dataset, "skip_bad", False):
        raise VaeflowError(
            "cifar_fd: the run's dataset skips unreadable images (data.skip_bad = true), so its images cannot be matched with their class folders"
        )
    out = []
    digest = hashlib.sha256()
    files_of = {split: dataset.files(split) for split in ("train", "test")}
    folders = {Path(p).relative_to(dataset.root).parts[0] for files in files_of.values() for p in files}
    for split in ("train", "test"):
        files = files_of[split]
        # the classifier trains on two classes or more; the held-out images may be in fewer
        labels, classes = class_labels(files, dataset.root, split=split, min_classes=2 if split == "train" else 0, total=len(folders))
        images = np.asarray(dataset.split(split))
        if len(images) != len(files):
            raise VaeflowError(f"cifar_fd: the {split} split has {len(images)} images but {len(files)} files")
        digest.update("\n".join(str(Path(p).relative_to(dataset.root)) for p in files).encode())
        out.append((images, labels, classes))
    (train, ytr, classes), (test, yte, test_classes) = out
    if not set(test_classes) <= set(classes):
        raise VaeflowError(f"cifar_fd: the test split has classes the training split lacks: {sorted(set(test_classes) - set(classes))}")
    yte = np.array([classes.index(test_classes[i]) for i in yte], np.int64)
    return (train, ytr), (test, yte), classes, digest.hexdigest()[:16]


def train_classifier(train, test, n_classes: int, *, epochs: int = EPOCHS, seed: int = 0) -> tuple[ColourCNN, float]:
    """(classifier, accuracy on the held-out images): Adam at lr 1e-3, batches of 128, random
    horizontal flips, ``epochs`` passes, seeded (the same weights on every run on one machine)."""
    (xtr, ytr), (xte, yte) = train, test
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ColourCNN(n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    y = torch.from_numpy(ytr)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), BATCH):
            tick()  # the thread count follows the machine's load (vaeflow_cli.runtime.threads)
            b = perm[i : i + BATCH]
            x = _to_input(xtr[np.sort(b.numpy())][np.argsort(np.argsort(b.numpy()))])
            flip = torch.rand(len(b), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = nn.functional.cross_entropy(net(x), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        log(f"cifar_fd: classifier epoch {epoch + 1}/{epochs}, last batch loss {loss.item():.3f}")
    _exact_batchnorm_statistics(net, xtr)
    net.eval()
    with torch.no_grad():
        predicted = np.concatenate([net(_to_input(xte[i : i + 500])).argmax(1).numpy() for i in range(0, len(xte), 500)])
    return net, float((predicted == yte).mean()) if len(yte) else float("nan")


@torch.no_grad()
def _exact_batchnorm_statistics(net: ColourCNN, images: np.ndarray, limit: int = 10_000) -> None:
    """Replace BatchNorm's running averages (momentum 0.1: after few steps they are far from the
    data's) by the exact mean and variance over up to ``limit`` training images."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    net.train()
    for i in range(0, min(len(images), limit), 500):
        net.body(_to_input(images[i : min(i + 500, limit)]))
    for m in norms:
        m.momentum = 0.1


def load_or_train(cache: Path, dataset) -> tuple[ColourCNN, float, list[str]]:
    """The classifier cached at ``cache`` (weights-only, checked against the network's keys and
    shapes and the run's training files), trained and written atomically if absent (a cache that
    cannot be written is a warning). A cache that is unreadable, not this classifier or made from
    other files is one VaeflowError that says to delete it."""
    import os

    from vaeflow_cli.evaluation.fid import load_classifier_cache, write_cache

    train, test, classes, fingerprint = labelled_splits(dataset)
    net = ColourCNN(len(classes))
    if os.path.lexists(cache):

        def same_data(state) -> str | None:
            same = state.get("classes") == classes and state.get("files") == fingerprint
            return None if same else "it was trained on other images or classes than this run's"

        return net, load_classifier_cache(cache, net, metric="cifar_fd", kind="cifar_fd classifier", fmt=FORMAT, extra=same_data), classes
    log(f"cifar_fd: training the classifier on {len(train[0])} labelled training images, {len(classes)} classes (cached in {cache})")
    net, accuracy = train_classifier(train, test, len(classes))
    state = {"format": FORMAT, "model": net.state_dict(), "accuracy": accuracy, "classes": classes, "files": fingerprint}
    write_cache(cache, lambda fh: torch.save(state, fh), "the cifar_fd classifier")
    return net, accuracy, classes


@torch.no_grad()
def features(net: ColourCNN, images: np.ndarray, batch: int = 500, progress=None) -> np.ndarray:
    """(N, 256) float64 features of uint8 (N, 3, H, W) images."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise VaeflowError(f"cifar_fd scores RGB images, not {tuple(images.shape[1:])}; use digit_fd for digits")
    from vaeflow_cli.evaluation.fid import batched_features

    return np.concatenate(batched_features(lambda x: net.features(_to_input(x)), images, batch, progress))
