"""Held-out likelihood bounds in bits per dimension (model.md, "Evaluation"): the single-sample
ELBO bound that training reports each epoch, and the importance-weighted IWAE_K bound.

Both use fixed dequantization noise (the EVAL_EPOCH stream) and a seeded latent-noise generator,
so that the same model and data always give the same number.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from vaeflow_cli.data import EVAL_EPOCH, dequantize
from vaeflow_cli.distributions import bits_per_dim

EVAL_BATCH = 256  # images (ELBO) or image x sample pairs (IWAE) per forward pass; fixed, so the
# numbers do not depend on the training batch size


def _batches(images: np.ndarray, n: int, size: int, seed: int, device: torch.device):
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        y = dequantize(images[idx], seed=seed, epoch=EVAL_EPOCH, indices=idx)
        yield torch.from_numpy(y).to(device)


@torch.no_grad()
def held_out_bpd(model, images: np.ndarray, *, seed: int, use_flow: bool, device: torch.device,
                 limit: int = 0) -> float:
    """Mean single-sample ELBO bound (bits/dim) on uint8 ``images`` (the first ``limit``; 0: all)."""
    was_training = model.training
    model.eval()
    n = len(images) if limit <= 0 else min(limit, len(images))
    g = torch.Generator().manual_seed(seed)
    with _fixed_global_rng(seed, device):
        total = sum(model.bound(y, use_flow=use_flow, generator=g).bpd.sum().item()
                    for y in _batches(images, n, EVAL_BATCH, seed, device))
    model.train(was_training)
    return total / n


@contextlib.contextmanager
def _fixed_global_rng(seed: int, device: torch.device):
    """A component that draws its own noise (the two-stage prior's ELBO) gets the same numbers on
    every evaluation; training's RNG stream is restored afterwards."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def iwae_bpd(model, images: np.ndarray, *, k: int, seed: int, use_flow: bool, device: torch.device,
             limit: int = 0) -> float:
    """Mean IWAE_K bound (bits/dim): -log (1/K) sum_k p(y|z_k) p(z_k) / q(z_k|y), z_k ~ q(z|y)."""
    was_training = model.training
    model.eval()
    n = len(images) if limit <= 0 else min(limit, len(images))
    g = torch.Generator().manual_seed(seed)
    per_batch = max(1, EVAL_BATCH // k)
    total = 0.0
    with _fixed_global_rng(seed, device):
        for y in _batches(images, n, per_batch, seed, device):
            log_p = model.iwae_log_likelihood(y, k=k, use_flow=use_flow, generator=g, chunk=min(k, EVAL_BATCH))
            total += bits_per_dim(log_p, model.dims).sum().item()
    model.train(was_training)
    return total / n
