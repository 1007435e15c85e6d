"""``simclr_fd``: an offline sample-quality measure for colour images without labels (CelebA's
faces, a folder of one's own photos). The Frechet distance between Gaussians fitted to the
features (256-d) of a small CNN trained here by SimCLR (Chen et al., 2020, "A Simple Framework
for Contrastive Learning of Visual Representations") on the run's own training images.

Why SimCLR: a Frechet distance needs a feature space in which images that look alike are close
and images that look different are far. Without labels (``cifar_fd`` uses CIFAR-10's classes) a
contrastive network learns one: two random augmentations of the same image (crop and resize, a
horizontal flip, brightness, contrast and saturation) must map to nearby features, other images
to far ones, so the features keep the content of an image (layout, shape, colour of a face) and
drop what the augmentations change. Frechet distances in self-supervised features rank
generative models as Inception features do, and more reliably outside ImageNet-like data
(Morozov et al., 2021, "On Self-Supervised Image Representations for GAN Evaluation"). An
autoencoder's code, the other label-free choice, is trained to keep every pixel detail, noise
included, which is what a sample score should look past.

It is named ``simclr_fd`` everywhere, never "FID": its values compare models scored with the
same run's network file only. The network sees images resized to 32x32 (``SIDE``); it is seeded
and trained on first use, then cached in RUN/eval with a fingerprint of the training images.
Training is EPOCHS x min(N, MAX_IMAGES) / BATCH steps of two augmented views each: 390 steps for
CIFAR-10's 47,500 training images, 310 for the 8,090 training faces of configs/celeba64-cpu.toml;
the network is small (16, 32, 64 channels) so that this is minutes on a CPU (docs/reproduce.md
has the measured time), once per run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaeflow_cli.console import log
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.threads import tick

FORMAT = 1  # the layout of the cache file (its keys), checked when it is loaded
FEATURES = 256
PROJECTION = 128
SIDE = 32  # images are resized to SIDE x SIDE before the network
EPOCHS = 10
WIDTHS = (16, 32, 64)  # channels of the three stages
BATCH = 256
TEMPERATURE = 0.5  # NT-Xent temperature (SimCLR's CIFAR-10 setting)
MAX_IMAGES = 10_000  # training images per epoch at most (a random subset each epoch beyond that)
MIN_SIDE = 8  # smaller images are refused: resized up to SIDE x SIDE they hold next to nothing to compare


class ContrastiveCNN(nn.Module):
    """Three stages of two conv3x3-BatchNorm-ReLU and a 2x2 max-pool (16, 32, 64 channels), a
    global average pool and FC 256 (the features); SimCLR's projection head (FC 256, ReLU,
    FC 128) is used in training only. Input (B, 3, SIDE, SIDE) in [-0.5, 0.5]."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in WIDTHS:
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTHS[-1], FEATURES))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(FEATURES, FEATURES), nn.ReLU(), nn.Linear(FEATURES, PROJECTION))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, SIDE, SIDE) in [-0.5, 0.5] (bilinear, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0 - 0.5)
    if x.shape[-2:] != (SIDE, SIDE):
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False, antialias=True)
    return x


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SimCLR's augmentations on (B, 3, S, S) inputs in [-0.5, 0.5]: a random crop of 40-100% of
    the area (aspect 3/4 to 4/3) resized back, a horizontal flip with probability 1/2, and
    brightness, contrast and saturation each scaled by a factor in [0.6, 1.4]."""
    b, _, s, _ = x.shape
    area = torch.empty(b).uniform_(0.4, 1.0, generator=g)
    aspect = torch.exp(torch.empty(b).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g))
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta, (b, 3, s, s), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factor():
        return torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4, generator=g)

    out = (out + 0.5) * factor() - 0.5  # brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factor() + mean  # contrast
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * factor() + grey  # saturation
    return out.clamp(-0.5, 0.5)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy of two views' projections (B, P): each
    row's positive is the other view of the same image, its negatives the 2B - 2 other rows."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    n = a.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def pair_accuracy(net: ContrastiveCNN, images: np.ndarray, *, seed: int = 0, batch: int | None = None) -> float:
    """How often the network finds an image's other augmented view among the 2B - 1 other views of
    a batch (B = ``batch`` images, default BATCH), nearest by cosine similarity of the projections:
    the score it is trained for, on images it was not trained on (chance: 1 / (2B - 1))."""
    batch = BATCH if batch is None else batch
    g = torch.Generator().manual_seed(seed + 1)
    hits = total = 0
    net.eval()
    with torch.no_grad():
        for i in range(0, len(images) - 1, batch):
            x = to_input(images[i : i + batch])
            if len(x) < 2:
                break
            z = F.normalize(torch.cat([net(augment(x, g)), net(augment(x, g))]), dim=1)
            sim = (z @ z.T).fill_diagonal_(float("-inf"))
            n = len(x)
            hits += int((sim.argmax(1) == torch.cat([torch.arange(n, 2 * n), torch.arange(n)])).sum())
            total += 2 * n
    return hits / total if total else float("nan")


def train_network(images: np.ndarray, test_images: np.ndarray, *, epochs: int | None = None, seed: int = 0) -> tuple[ContrastiveCNN, float]:
    """(network, ``pair_accuracy`` on ``test_images``): Adam at lr 1e-3, batches of BATCH images
    (two views each), ``epochs`` (default EPOCHS) passes over at most MAX_IMAGES images each,
    seeded. ``images``: uint8 (N, 3, H, W), N >= 2."""
    epochs = EPOCHS if epochs is None else epochs  # read at call time, as BATCH and SIDE are
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ContrastiveCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = min(BATCH, len(images))
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(images), generator=g)[:MAX_IMAGES].numpy()
        losses = []
        for i in range(0, len(perm) - batch + 1, batch):
            tick()  # the thread count follows the machine's load (vaeflow_cli.runtime.threads)
            x = to_input(images[np.sort(perm[i : i + batch])])
            loss = nt_xent(net(augment(x, g)), net(augment(x, g)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        log(f"simclr_fd: network epoch {epoch + 1}/{epochs}, NT-Xent loss {np.mean(losses):.3f}")
    _exact_batchnorm_statistics(net, images)
    return net.eval(), pair_accuracy(net, test_images, seed=seed)


@torch.no_grad()
def _exact_batchnorm_statistics(net: ContrastiveCNN, images: np.ndarray, limit: int = 10_000) -> None:
    """BatchNorm's running statistics as the exact mean and variance over up to ``limit`` un-augmented
    training images (the features are taken from un-augmented images)."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for i in range(0, min(len(images), limit), 500):
        net.body(to_input(images[i : min(i + 500, limit)]))
    for m in norms:
        m.momentum = 0.1


def check_images(images: np.ndarray) -> None:
    """One VaeflowError for images simclr_fd cannot score: not RGB (N, 3, H, W) (digits: digit_fd),
    or smaller than MIN_SIDE on a side."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise VaeflowError(f"simclr_fd scores RGB images, not {tuple(images.shape[1:])}; use digit_fd for digits")
    h, w = images.shape[2:]
    if min(h, w) < MIN_SIDE:
        raise VaeflowError(
            f"simclr_fd: the images are {w}x{h}, and its network needs at least {MIN_SIDE}x{MIN_SIDE} (it sees them resized to "
            f"{SIDE}x{SIDE}); use --metrics bpd for images this small"
        )


def fingerprint(images: np.ndarray) -> str:
    """A digest of the training images the network is trained on (its cache key)."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def load_or_train(cache: Path, train_images: np.ndarray, test_images: np.ndarray) -> tuple[ContrastiveCNN, float]:
    """The network cached at ``cache`` (weights-only, checked against the network's keys and shapes
    and the run's training images), trained and written atomically if absent (a cache that cannot
    be written is a warning). Returns (network, its held-out ``pair_accuracy``). Raises
    VaeflowError for images that are not RGB or a cache that is not this network's (with how to
    fix)."""
    from vaeflow_cli.evaluation.fid import load_classifier_cache, write_cache

    check_images(train_images)
    if len(train_images) < 2:
        raise VaeflowError(f"simclr_fd trains its network on the run's training images and needs at least 2, the run has {len(train_images)}")
    if len(test_images) < 2:  # its held-out pair accuracy needs two (and a Frechet distance two per set)
        raise VaeflowError(f"simclr_fd needs at least 2 held-out images, the run has {len(test_images)}")
    net = ContrastiveCNN()
    key = fingerprint(train_images)
    if os.path.lexists(cache):

        def same_data(state) -> str | None:
            if state.get("side") != SIDE:  # the weights fit any input size: only this tells a network trained at another
                return f"it was trained on images resized to {state.get('side')}, not {SIDE}"
            return None if state.get("images") == key else "it was trained on other images than this run's"

        return net.eval(), load_classifier_cache(cache, net, metric="simclr_fd", kind="simclr_fd network", fmt=FORMAT, extra=same_data)
    log(f"simclr_fd: training the contrastive network on {len(train_images)} training images, {EPOCHS} epochs (cached in {cache})")
    net, accuracy = train_network(train_images, test_images)
    state = {"format": FORMAT, "model": net.state_dict(), "accuracy": accuracy, "images": key, "side": SIDE}
    write_cache(cache, lambda fh: torch.save(state, fh), "the simclr_fd network")
    return net, accuracy


@torch.no_grad()
def features(net: ContrastiveCNN, images: np.ndarray, batch: int = 500, progress=None) -> np.ndarray:
    """(N, 256) float64 features of uint8 (N, 3, H, W) images."""
    check_images(images)
    from vaeflow_cli.evaluation.fid import batched_features

    net.eval()
    return np.concatenate(batched_features(lambda x: net.features(to_input(x)), images, batch, progress))
