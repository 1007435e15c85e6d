"""Latent priors p(z) (paper, section 3.2).

``realnvp``: p(z) = N(h(z); 0, I) |det dh/dz| with h a stack of RealNVP affine couplings
(Dinh et al., 2016), each conditioner two fully-connected layers of width ``hidden`` with ReLU
(paper: 16 layers, width 1024). ``gaussian``: p(z) = N(0, I).
Both are bijections h: z -> u with ``forward(z) -> (u, log_det)`` and ``inverse(u) -> (z, log_det)``.
"""

from __future__ import annotations

import torch
from torch import nn

from vaeflow_cli.plugin_api import FlowSequence, gaussian_log_prob, standard_normal_log_prob


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


class MaskedAffineCoupling(nn.Module):
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

    def __init__(self, *, latent_dim: int, layers: int, hidden: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.h = FlowSequence(MaskedAffineCoupling(latent_dim, hidden, _mask(latent_dim, i)) for i in range(layers))

    def forward(self, z):
        return self.h(z)

    def inverse(self, u):
        return self.h.inverse(u)


class _ConcatMLP(nn.Module):
    """``layers`` fully-connected ReLU layers of width ``hidden``; the output layer sees the last
    hidden layer concatenated with the input (Dai & Wipf's second-stage networks)."""

    def __init__(self, d_in: int, d_out: int, hidden: int, layers: int) -> None:
        super().__init__()
        mods, d = [], d_in
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.body = nn.Sequential(*mods)
        self.out = nn.Linear(hidden + d_in, d_out)

    def forward(self, x):
        return self.out(torch.cat([self.body(x), x], dim=1))


class TwoStageVAEPrior(nn.Module):
    """Dai & Wipf's second-stage VAE as the prior p(z) (the paper's Table 1 comparison): an encoder
    q(u|z) and a decoder p(z|u) = N(g(u), gamma_z^2 I) with a learned scalar gamma_z, both 3
    fully-connected layers of width 1024 with the input concatenated before the output layer,
    u of the latent size, p(u) = N(0, I).

    Until the second stage is trained (``vaeflow train-prior``, which calls ``start_own_training``
    and so sets the ``trained`` buffer), the prior is
    N(0, I): phase 1 is then the first-stage VAE of Dai & Wipf. Afterwards log_prob(z) is the
    second stage's one-sample ELBO, a lower bound on log p(z), so the model's ELBO stays a lower
    bound on log p(x) (a bound of a bound); sampling draws u ~ N(0, I) and z = g(u)."""

    def __init__(self, *, latent_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = _ConcatMLP(latent_dim, 2 * latent_dim, hidden, layers)
        self.decoder = _ConcatMLP(latent_dim, latent_dim, hidden, layers)
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.register_buffer("trained", torch.tensor(False))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        if not bool(self.trained):
            return standard_normal_log_prob(z)
        mean, log_std = self.encoder(z).float().chunk(2, dim=1)
        log_std = log_std.clamp(-10.0, 5.0)
        u = mean + torch.exp(log_std) * torch.randn_like(mean)
        recon = self.decoder(u).float()
        log_pz_u = gaussian_log_prob(z, recon, torch.exp(self.log_gamma).expand_as(z))
        kl = 0.5 * (mean * mean + torch.exp(2 * log_std) - 1.0 - 2 * log_std).sum(1)
        return log_pz_u - kl

    def from_base(self, u: torch.Tensor) -> torch.Tensor:
        return self.decoder(u) if bool(self.trained) else u

    def start_own_training(self) -> None:
        """The second stage begins (``vaeflow train-prior``): from now on log p(z) is its ELBO."""
        self.trained.fill_(True)
