"""Log-densities and the bits-per-dimension conversion (model.md, "Data and dequantization")."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag std^2) summed over all but the batch dimension -> (B,)."""
    z = (x - mean) / std
    per = -0.5 * (z * z + LOG_2PI) - torch.log(std)
    return per.flatten(1).sum(1)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over all but the batch dimension -> (B,)."""
    return (-0.5 * (x * x + LOG_2PI)).flatten(1).sum(1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of N(m, diag exp(log_std)^2), summed over all but the batch dimension -> (B,)."""
    return (0.5 * (LOG_2PI + 1.0) + log_std).flatten(1).sum(1)


def bits_per_dim(log_density: torch.Tensor, dims: int) -> torch.Tensor:
    """bpd = (-log p(y) + D log 256) / (D log 2), for a density p on [0,1)^D of dequantized images.

    A density uniform on [0,1)^D (log p = 0) gives exactly 8 bits per dimension.
    """
    return (-log_density + dims * math.log(256.0)) / (dims * math.log(2.0))
