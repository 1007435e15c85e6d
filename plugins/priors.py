"""Latent priors p(z) (paper, section 3.2).

``realnvp``: p(z) = N(h(z); 0, I) |det dh/dz| with h a stack of RealNVP affine couplings
(Dinh et al., 2016), each conditioner two fully-connected layers of width ``hidden`` with ReLU
(paper: 16 layers, width 1024). ``gaussian``: p(z) = N(0, I).
Both are bijections h: z -> u with ``forward(z) -> (u, log_det)`` and ``inverse(u) -> (z, log_det)``.
"""

from __future__ import annotations

import torch
from torch import nn

from vaeflow_cli.distributions import standard_normal_log_prob
from vaeflow_cli.flows import FlowSequence
from vaeflow_cli.hookspecs import hookimpl


class FlowPrior(nn.Module):
    """Shared part of the bijective priors: log p(z) = log N(h(z)) + log|det dh/dz|."""

    latent_dim: int

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        u, log_det = self(z)
        return standard_normal_log_prob(u) + log_det

    def from_base(self, u: torch.Tensor) -> torch.Tensor:
        return self.inverse(u)[0]


class GaussianPrior(FlowPrior):
    """p(z) = N(0, I): h is the identity."""

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, z):
        return z, z.new_zeros(z.shape[0])

    def inverse(self, u):
        return u, u.new_zeros(u.shape[0])


def _mask(dim: int, i: int) -> torch.Tensor:
    """Conditioner mask of layer i, cycling through even / odd / first half / second half."""
    idx = torch.arange(dim)
    kind = i % 4
    if kind == 0:
        m = idx % 2 == 0
    elif kind == 1:
        m = idx % 2 == 1
    elif kind == 2:
        m = idx < dim // 2
    else:
        m = idx >= dim // 2
    return m.float()


class AffineCoupling(nn.Module):
    """u = m*z + (1-m) * (z * exp(s(m*z)) + t(m*z)), s bounded by tanh; log|det| = sum (1-m) s."""

    def __init__(self, dim: int, hidden: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        last = nn.Linear(hidden, 2 * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)

    def _st(self, x):
        # float32 whatever the autocast precision: the log-det sums s (train.precision)
        s, t = self.net(x * self.mask).float().chunk(2, dim=1)
        free = 1.0 - self.mask
        return torch.tanh(s) * free, t * free

    def forward(self, z):
        s, t = self._st(z)
        return z * torch.exp(s) + t, s.sum(1)

    def inverse(self, u):
        s, t = self._st(u)  # u and z agree where mask = 1
        return (u - t) * torch.exp(-s), -s.sum(1)


class RealNVPPrior(FlowPrior):
    """The paper's flow prior: ``layers`` affine couplings with width-``hidden`` FC conditioners."""

    def __init__(self, *, latent_dim: int, layers: int = 16, hidden: int = 1024) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.h = FlowSequence(AffineCoupling(latent_dim, hidden, _mask(latent_dim, i)) for i in range(layers))

    def forward(self, z):
        return self.h(z)

    def inverse(self, u):
        return self.h.inverse(u)


@hookimpl
def register_priors(register):
    register("realnvp", RealNVPPrior)
    register("gaussian", GaussianPrior)
