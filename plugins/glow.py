"""The Glow layer f of the paper (section 3.3): a no-squeeze, no-split stack of ActNorm ->
invertible 1x1 convolution -> additive coupling blocks in pixel space (Kingma & Dhariwal, 2018).

Every layer maps x -> (y, log_det) in ``forward`` and y -> (x, log_det) in ``inverse``, log_det of
shape (B,). The stack is the identity at initialisation (model.md, "decided here"): ActNorm with
scale 1 and bias 0 (no data-dependent init), 1x1 convolutions equal to I, zero-initialised
coupling outputs. Phase 2 therefore starts exactly at the phase-1 bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaeflow_cli.flows import FlowSequence
from vaeflow_cli.hookspecs import hookimpl

# ------------------------------------------------------------------ layers


class ActNorm(nn.Module):
    """y = (x + b) * exp(s) per channel; log|det| = H*W*sum(s)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def _log_det(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x):
        return (x + self.bias) * torch.exp(self.log_scale), self._log_det(x)

    def inverse(self, y):
        return y * torch.exp(-self.log_scale) - self.bias, -self._log_det(y)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution y = W x at every pixel; log|det| = H*W*log|det W|.

    With ``lu=True`` W = P L (U + diag(sign * exp(log_s))) (Glow's LU parametrisation), which
    makes the log-determinant sum(log_s) and the inverse cheap. Initialised to W = I.
    """

    def __init__(self, channels: int, *, lu: bool = True) -> None:
        super().__init__()
        self.lu = lu
        eye = torch.eye(channels)
        if lu:
            self.register_buffer("perm", eye.clone())
            self.register_buffer("sign_s", torch.ones(channels))
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(torch.zeros(channels, channels))
            self.upper = nn.Parameter(torch.zeros(channels, channels))
            self.log_s = nn.Parameter(torch.zeros(channels))
        else:
            self.weight = nn.Parameter(eye.clone())

    def _weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, log|det W|)"""
        if self.lu:
            c = self.log_s.shape[0]
            eye = torch.eye(c, device=self.log_s.device, dtype=self.log_s.dtype)
            lower = self.lower * self.lower_mask + eye
            upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
            return self.perm @ lower @ upper, self.log_s.sum()
        return self.weight, torch.linalg.slogdet(self.weight)[1]

    def forward(self, x):
        w, log_det = self._weight()
        hw = x.shape[2] * x.shape[3]
        return F.conv2d(x, w[:, :, None, None]), (hw * log_det).expand(x.shape[0])

    def inverse(self, y):
        w, log_det = self._weight()
        hw = y.shape[2] * y.shape[3]
        w_inv = torch.linalg.inv(w.double()).to(w.dtype)
        return F.conv2d(y, w_inv[:, :, None, None]), (-hw * log_det).expand(y.shape[0])


def coupling_net(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    """Glow's coupling network conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3, last conv zeroed."""
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
        last,
    )


class AdditiveCoupling(nn.Module):
    """x_b <- x_b + NN(x_a), volume preserving (log|det| = 0) (NICE; Glow's additive coupling).

    ``split="channel"``: x_a is the first C//2 channels (parity 0) or the rest (parity 1).
    ``split="checkerboard"``: x_a is the pixels where (i + j + parity) is even, for images with
    one channel, where a channel split is impossible (model.md, decided here).
    """

    def __init__(self, image_shape: tuple[int, int, int], *, hidden: int, parity: int, split: str) -> None:
        super().__init__()
        c, h, w = image_shape
        self.split = split
        self.parity = parity % 2
        if split == "channel":
            if c < 2:
                raise ValueError("a channel split needs at least 2 channels; use split='checkerboard'")
            ca = c // 2
            self.cond = slice(0, ca) if self.parity == 0 else slice(ca, c)
            self.moved = slice(ca, c) if self.parity == 0 else slice(0, ca)
            n_cond = ca if self.parity == 0 else c - ca
            self.net = coupling_net(n_cond, c - n_cond, hidden)
        elif split == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            mask = ((ii + jj + self.parity) % 2 == 0).float()[None, None]  # (1, 1, H, W), 1 = conditioner
            self.register_buffer("mask", mask)
            self.net = coupling_net(c, c, hidden)
        else:
            raise ValueError(f"unknown split {split!r}; use 'channel' or 'checkerboard'")

    def _shift(self, x):
        if self.split == "channel":
            return self.net(x[:, self.cond])
        return self.net(x * self.mask) * (1.0 - self.mask)

    def _couple(self, x, sign: float):
        zero = x.new_zeros(x.shape[0])
        if self.split == "channel":
            out = x.clone()
            out[:, self.moved] = x[:, self.moved] + sign * self._shift(x)
            return out, zero
        return x + sign * self._shift(x), zero

    def forward(self, x):
        return self._couple(x, 1.0)

    def inverse(self, y):
        # The conditioner part is unchanged by the coupling, so NN sees the same input both ways.
        return self._couple(y, -1.0)


# ------------------------------------------------------------------ the Glow layer


class GlowLayer(FlowSequence):
    """f: data space -> decoder space; ``depth`` blocks of ActNorm -> 1x1 conv -> additive coupling.

    ``hidden_channels``: width of the coupling networks (the paper does not state it; model.md
    explains why the shipped configs use 128 or less). ``split="auto"`` picks the channel split
    for C >= 2 and the checkerboard split for C = 1.
    """

    def __init__(self, *, image_shape: tuple[int, int, int], depth: int = 32, hidden_channels: int = 128,
                 lu: bool = True, split: str = "auto") -> None:
        c = image_shape[0]
        if split == "auto":
            split = "channel" if c >= 2 else "checkerboard"
        blocks = []
        for i in range(depth):
            blocks += [
                ActNorm(c),
                InvConv1x1(c, lu=lu),
                AdditiveCoupling(tuple(image_shape), hidden=hidden_channels, parity=i, split=split),
            ]
        super().__init__(blocks)


class IdentityFlow(FlowSequence):
    """f = identity: the plain VAE with no Glow layer (what phase 1 trains)."""

    def __init__(self, *, image_shape: tuple[int, int, int]) -> None:
        super().__init__([])


@hookimpl
def register_flows(register):
    register("glow-layer", GlowLayer)
    register("identity", IdentityFlow)
