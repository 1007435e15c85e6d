"""The ResNet encoder and decoders of Dai & Wipf ("Diagnosing and Enhancing VAE Models", 2019),
as used by the paper (section 4.2): ``depth`` scales of residual blocks (BN-ReLU-conv3x3 twice,
with a conv shortcut), a stride-2 convolution doubling the channels between scales, global mean
pooling and a residual fully-connected block of width ``fc_width``.

Images whose side is not a multiple of 2**(depth-1) (28x28 MNIST at depth 4, say) are zero-padded
on the bottom/right to the next multiple before encoding, and the decoder crops its output back
(model.md leaves this open; decided here).

Decoders: ``resnet-diagonal`` has two heads, the mean and a per-pixel standard deviation (the
paper's extension, section 3.1); ``resnet-isotropic`` has one learned scalar gamma (Dai & Wipf),
N(mean, gamma I). Both add ``min_std`` to the standard deviation so training stays finite.

The mean head is linear by default (``mean_activation = "linear"``), not a sigmoid (decided here,
by measurement): with a per-pixel standard deviation the near-zero MNIST background gets a tiny
std early, its 1/std^2-weighted gradients push the shared mean logits far negative, the sigmoid
saturates and the digits never appear, where a linear head learns them (docs/model.md, "Decided
here", has the measurement).
``"sigmoid"`` keeps the mean in [0, 1] for those who want it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------ helpers


def _padded(side: int, depth: int) -> int:
    m = 2 ** (depth - 1)
    return math.ceil(side / m) * m


NORMS = ("batch", "group", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm (Dai & Wipf), GroupNorm (no train/eval difference), or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {kind!r}")


class ResBlock(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))) with a 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm_layer(norm, c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            norm_layer(norm, c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.shortcut(x) + self.body(x)


class ResFC(nn.Module):
    """Residual fully-connected block: x + W2 relu(W1 relu(x))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x):
        return x + self.body(x)


# ------------------------------------------------------------------ encoder


@dataclass(frozen=True)
class Trunk:
    """The architecture the encoder and the decoders share (their config keys of the same names)."""

    base_channels: int
    depth: int
    blocks_per_scale: int
    fc_width: int
    norm: str


class ResNetEncoder(nn.Module):
    """q(z|y) = N(m(y), diag s(y)^2); ``forward(y)`` -> (m, log s), each (B, latent_dim)."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, arch: Trunk) -> None:
        super().__init__()
        c, h, w = image_shape
        depth = arch.depth
        self.pad = (0, _padded(w, depth) - w, 0, _padded(h, depth) - h)
        layers: list[nn.Module] = [nn.Conv2d(c, arch.base_channels, 3, padding=1)]
        ch = arch.base_channels
        for scale in range(depth):
            layers += [ResBlock(ch, ch, arch.norm) for _ in range(arch.blocks_per_scale)]
            if scale < depth - 1:
                layers.append(nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1))
                ch *= 2
        layers += [norm_layer(arch.norm, ch), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(ch, arch.fc_width), ResFC(arch.fc_width), nn.ReLU())
        self.mean = nn.Linear(arch.fc_width, latent_dim)
        self.log_std = nn.Linear(arch.fc_width, latent_dim)

    def forward(self, y):
        h = self.conv(F.pad(y, self.pad))  # (B, C', H', W')
        h = self.fc(h.mean(dim=(2, 3)))  # (B, fc_width)
        return self.mean(h), self.log_std(h)


# ------------------------------------------------------------------ decoders


class _ResNetTrunk(nn.Module):
    """z -> features (B, base_channels, H, W): the mirror of the encoder, upsampling by stride-2
    transposed convolutions that halve the channels."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, arch: Trunk) -> None:
        super().__init__()
        c, h, w = image_shape
        depth, fc_width = arch.depth, arch.fc_width
        self.out_hw = (h, w)
        self.top_ch = arch.base_channels * 2 ** (depth - 1)
        self.top_hw = (_padded(h, depth) // 2 ** (depth - 1), _padded(w, depth) // 2 ** (depth - 1))
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, fc_width), ResFC(fc_width), nn.ReLU(), nn.Linear(fc_width, self.top_ch * self.top_hw[0] * self.top_hw[1])
        )
        layers: list[nn.Module] = []
        ch = self.top_ch
        for scale in range(depth):
            layers += [ResBlock(ch, ch, arch.norm) for _ in range(arch.blocks_per_scale)]
            if scale < depth - 1:
                layers.append(nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1))
                ch //= 2
        layers += [norm_layer(arch.norm, ch), nn.ReLU()]
        self.conv = nn.Sequential(*layers)

    def forward(self, z):
        h = self.fc(z).view(z.shape[0], self.top_ch, *self.top_hw)
        h = self.conv(h)
        return h[:, :, : self.out_hw[0], : self.out_hw[1]]  # (B, base_channels, H, W)


def _mean_activation(kind: str):
    if kind == "linear":
        return nn.Identity()
    if kind == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"mean_activation must be 'linear' or 'sigmoid', not {kind!r}")


class _GaussianDecoder(nn.Module):
    """The trunk and the mean head g_mu both decoders share; ``min_std`` is added to every std."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, arch: Trunk, *, min_std: float, mean_activation: str) -> None:
        super().__init__()
        self.min_std = min_std
        self.mean_activation = _mean_activation(mean_activation)
        self.trunk = _ResNetTrunk(image_shape, latent_dim, arch)
        self.mean_head = nn.Conv2d(arch.base_channels, image_shape[0], 3, padding=1)


class DiagonalDecoder(_GaussianDecoder):
    """p(xbar|z) = N(g_mu(z), diag g_sigma(z)^2) with a per-pixel learned standard deviation."""

    def __init__(
        self, image_shape: tuple[int, int, int], latent_dim: int, arch: Trunk, *, min_std: float, init_std: float, mean_activation: str
    ) -> None:
        super().__init__(image_shape, latent_dim, arch, min_std=min_std, mean_activation=mean_activation)
        self.std_head = nn.Conv2d(arch.base_channels, image_shape[0], 3, padding=1)
        # The standard deviation starts at init_std everywhere, independent of z: the mean is learned
        # first (as with a fixed-variance VAE), and the per-pixel std shrinks as it learns. With a
        # randomly initialised std head, the default MNIST config's decoder means stayed blobs.
        if not init_std > min_std:  # std = min_std + softplus(head): it can only start above min_std
            raise ValueError(f"init_std ({init_std}) must be above min_std ({min_std}): the standard deviation is min_std + softplus(...)")
        nn.init.zeros_(self.std_head.weight)
        nn.init.constant_(self.std_head.bias, math.log(math.expm1(init_std - min_std)))

    def forward(self, z):
        h = self.trunk(z)
        return self.mean_activation(self.mean_head(h)), F.softplus(self.std_head(h)) + self.min_std


class IsotropicDecoder(_GaussianDecoder):
    """p(xbar|z) = N(g_mu(z), gamma I) with one learned scalar gamma (Dai & Wipf), gamma = 1 at start."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, arch: Trunk, *, min_std: float, mean_activation: str) -> None:
        super().__init__(image_shape, latent_dim, arch, min_std=min_std, mean_activation=mean_activation)
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        mean = self.mean_activation(self.mean_head(self.trunk(z)))
        std = torch.exp(0.5 * self.log_gamma) + self.min_std
        return mean, std.expand_as(mean)
