"""Held-out likelihood bounds in bits per dimension (model.md, "Evaluation"): the single-sample
ELBO bound that training reports each epoch, and the importance-weighted IWAE_K bound.

Both use fixed dequantization noise (the EVAL_EPOCH stream) and a seeded latent-noise generator,
so that the same model and data always give the same number. ``elbo_bpd`` and ``iwae_bpd_per_image``
return the bound of every image as well as the mean; ``held_out_bpd`` and ``iwae_bpd`` are those
means (the same batches, noise and summation, so the same numbers as before the per-image split).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from vaeflow_cli.data.pipeline import EVAL_EPOCH, dequantize
from vaeflow_cli.model.distributions import bits_per_dim
from vaeflow_cli.training.threads import tick

EVAL_BATCH = 256  # images (ELBO) or image x sample pairs (IWAE) per forward pass; fixed, so the
# numbers do not depend on the training batch size


@dataclass
class PerImageBpd:
    """A bound over a set of images: ``mean`` (float, bits/dim) and ``per_image`` (float64 (N,),
    bits/dim, in the images' order). ``mean`` is the sum of the per-batch float32 sums divided by
    N, the number ``held_out_bpd``/``iwae_bpd`` return; it equals per_image.mean() up to rounding."""

    mean: float
    per_image: np.ndarray


def _batches(images: np.ndarray, n: int, size: int, seed: int, device: torch.device):
    for start in range(0, n, size):
        tick()  # the thread count follows the machine's load (vaeflow_cli.training.threads)
        idx = np.arange(start, min(start + size, n))
        y = dequantize(images[idx], seed=seed, epoch=EVAL_EPOCH, indices=idx)
        yield torch.from_numpy(y).to(device)


def _collect(per_batch, n: int) -> PerImageBpd:
    """Sum (as the means always were: float32 batch sums added as Python floats) and gather the
    per-image values of a stream of (B,) bpd tensors."""
    total, parts = 0.0, []
    for bpd in per_batch:
        total += bpd.sum().item()
        parts.append(bpd.detach().to("cpu", torch.float64).numpy())
    return PerImageBpd(total / n, np.concatenate(parts) if parts else np.zeros(0))


def _count(images: np.ndarray, limit: int) -> int:
    return len(images) if limit <= 0 else min(limit, len(images))


@torch.no_grad()
def elbo_bpd(model, images: np.ndarray, *, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0) -> PerImageBpd:
    """Single-sample ELBO bound (bits/dim) of each of the first ``limit`` (0: all) uint8 ``images``
    (N, C, H, W), dequantized with the EVAL_EPOCH noise, in batches of EVAL_BATCH, one latent
    sample per image from a generator seeded with ``seed``. Returns PerImageBpd (mean, float64 (n,))."""
    was_training = model.training
    model.eval()
    n = _count(images, limit)
    g = torch.Generator().manual_seed(seed)
    with _fixed_global_rng(seed, device):
        out = _collect((model.bound(y, use_flow=use_flow, generator=g).bpd for y in _batches(images, n, EVAL_BATCH, seed, device)), n)
    model.train(was_training)
    return out


def held_out_bpd(model, images: np.ndarray, *, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0) -> float:
    """Mean single-sample ELBO bound (bits/dim) on uint8 ``images`` (the first ``limit``; 0: all)."""
    return elbo_bpd(model, images, seed=seed, use_flow=use_flow, device=device, limit=limit).mean


@contextlib.contextmanager
def _fixed_global_rng(seed: int, device: torch.device):
    """A component that draws its own noise (the two-stage prior's ELBO) gets the same numbers on
    every evaluation; training's RNG stream is restored afterwards."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def iwae_bpd_per_image(
    model, images: np.ndarray, *, k: int, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0
) -> PerImageBpd:
    """IWAE_K bound (bits/dim) of each image: -log (1/K) sum_k p(y|z_k) p(z_k) / q(z_k|y),
    z_k ~ q(z|y), converted by ``bits_per_dim``; max(1, EVAL_BATCH // K) images per forward pass.
    ``images``: uint8 (N, C, H, W). Returns PerImageBpd (mean, float64 (n,))."""
    was_training = model.training
    model.eval()
    n = _count(images, limit)
    g = torch.Generator().manual_seed(seed)
    per_batch = max(1, EVAL_BATCH // k)
    with _fixed_global_rng(seed, device):
        out = _collect(
            (
                bits_per_dim(model.iwae_log_likelihood(y, k=k, use_flow=use_flow, generator=g, chunk=min(k, EVAL_BATCH)), model.dims)
                for y in _batches(images, n, per_batch, seed, device)
            ),
            n,
        )
    model.train(was_training)
    return out


def iwae_bpd(model, images: np.ndarray, *, k: int, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0) -> float:
    """Mean IWAE_K bound (bits/dim): -log (1/K) sum_k p(y|z_k) p(z_k) / q(z_k|y), z_k ~ q(z|y)."""
    return iwae_bpd_per_image(model, images, k=k, seed=seed, use_flow=use_flow, device=device, limit=limit).mean
