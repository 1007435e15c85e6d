"""Sampling and interpolation from a trained run (paper, section 3.5 and Figure 5)."""

from __future__ import annotations

import numpy as np
import torch

from vaeflow_cli.images import to_uint8
from vaeflow_cli.model import VAEFlow, slerp

SAMPLE_BATCH = 256  # images generated at once


@torch.no_grad()
def sample_images(model: VAEFlow, n: int, *, temperature: float = 0.5, seed: int = 0,
                  vae_only: bool = False, batch: int = SAMPLE_BATCH) -> np.ndarray:
    """n samples as uint8 (n, C, H, W), drawn ``batch`` at a time from one seeded stream (so
    memory beyond the output stays bounded); the same seed gives the same images on any device."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    out = np.empty((n, *model.image_shape), dtype=np.uint8)
    for i in range(0, n, batch):
        m = min(batch, n - i)
        out[i:i + m] = to_uint8(model.sample(m, temperature=temperature, vae_only=vae_only, generator=g))
    return out


@torch.no_grad()
def interpolate_prior(model: VAEFlow, *, pairs: int, steps: int, seed: int = 0,
                      temperature: float = 0.0) -> np.ndarray:
    """Rows of images along spherical paths between pairs of base points u ~ N(0, I), mapped to
    z = h^-1(u) and decoded: uint8 (pairs, steps, C, H, W). At temperature 0 each image is
    f^-1(g_mu(z)), so frames change only with z."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    ua = torch.randn(pairs, model.latent_dim, generator=g)
    ub = torch.randn(pairs, model.latent_dim, generator=g)
    u = slerp(ua, ub, torch.linspace(0, 1, steps)).reshape(pairs * steps, -1).to(device)
    x = model.decode(model.prior.from_base(u), temperature=temperature, generator=g)
    return to_uint8(x).reshape(pairs, steps, *model.image_shape)


@torch.no_grad()
def interpolate_images(model: VAEFlow, a: np.ndarray, b: np.ndarray, *, steps: int) -> np.ndarray:
    """Linear path between the encoder means of uint8 images a and b (C, H, W), decoded at
    temperature 0: uint8 (steps, C, H, W). The endpoints are the two images' reconstructions."""
    model.eval()
    device = next(model.parameters()).device
    y = torch.from_numpy((np.stack([a, b]).astype(np.float32) + 0.5) / 256.0).to(device)
    mean, _ = model.encode(y)  # (2, d)
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    z = (1 - t) * mean[0] + t * mean[1]  # (steps, d)
    return to_uint8(model.decode(z, temperature=0.0))


@torch.no_grad()
def reconstruct(model: VAEFlow, images: np.ndarray) -> np.ndarray:
    """f^-1(g_mu(m(y))) for uint8 images (N, C, H, W) -> uint8 (N, C, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    y = torch.from_numpy((images.astype(np.float32) + 0.5) / 256.0).to(device)
    return to_uint8(model.decode(model.encode(y)[0], temperature=0.0))


@torch.no_grad()
def compare_grid(model: VAEFlow, *, rows: int, per_z: int, temperature: float = 0.5, seed: int = 0) -> np.ndarray:
    """The paper's Figure 4: for each of ``rows`` latents z ~ p(z), the VAE mean g_mu(z) followed
    by ``per_z`` Glow-layer samples x = f^-1(g_mu + T g_sigma eps) of the same z:
    uint8 (rows, 1 + per_z, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    z = model.prior.from_base(torch.randn(rows, model.latent_dim, generator=g).to(device))
    mean = model.decode(z, vae_only=True)
    zz = z.repeat_interleave(per_z, 0)
    samples = model.decode(zz, temperature=temperature, generator=g).reshape(rows, per_z, *model.image_shape)
    return to_uint8(torch.cat([mean[:, None], samples], 1))


@torch.no_grad()
def temperature_grid(model: VAEFlow, *, temperatures, n: int, seed: int = 0) -> np.ndarray:
    """One row per temperature T, the same ``n`` latents z and the same noise eps in every row:
    x = f^-1(g_mu(z) + T g_sigma(z) eps): uint8 (len(temperatures), n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    z = model.prior.from_base(torch.randn(n, model.latent_dim, generator=g).to(device))
    mean, std = model.decoder(z)
    eps = torch.randn(mean.shape, generator=g).to(device=device, dtype=mean.dtype)
    rows = [model.from_decoder_space(mean + t * std * eps) for t in temperatures]
    return to_uint8(torch.stack(rows))
