"""Sampling, reconstruction and interpolation from a trained model (paper, section 3.5 and
Figures 4 and 5). Every function runs without gradients and returns float32 CPU images in [0, 1]
(non-finite values, from a diverged inverse, become 0 or 1, with one warning line on stderr that
counts those images); ``images.to_uint8`` quantizes them.
``vaeflow_cli.api.Run`` is the public face of these functions."""

from __future__ import annotations

import numpy as np
import torch

from vaeflow_cli.console import warning
from vaeflow_cli.model.vaeflow import VAEFlow, slerp
from vaeflow_cli.runtime.threads import tick

SAMPLE_BATCH = 256  # images generated at once


def unit_images(x: torch.Tensor) -> torch.Tensor:
    """Model outputs -> float32 CPU images in [0, 1]: NaN and -inf become 0, +inf becomes 1, the
    rest is clamped. ``to_uint8`` gives the same pixels for ``x`` and ``unit_images(x)``."""
    x = x.detach().float().cpu()
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def diverged(x: torch.Tensor) -> int:
    """How many of the images ``x`` (B, ...) have a non-finite value: samples whose flow inverse
    overflowed (an affine coupling's inverse divides by its scale, so activations outside the
    range the flow was trained on can grow without bound)."""
    return int((~torch.isfinite(x)).flatten(1).any(1).sum())


def warn_diverged(model: torch.nn.Module, count: int, n: int, temperature: float, what: str = "samples") -> None:
    """One warning line on stderr when ``count`` of ``n`` images (``what``: "samples", "frames",
    "reconstructions") of ``model`` drawn at ``temperature`` diverged; where the model's affine
    couplings have no floor (``unfloored``) it adds that a flow trained with ``min_scale`` rarely
    diverges."""
    if count:
        floor = ", and a flow trained with [model.flow] min_scale (a floor under its couplings' scales) rarely does" if unfloored(model) else ""
        warning(
            f"{count} of {n} {what} at T={temperature:g} have non-finite pixels (the flow's inverse diverged), "
            f"drawn black (NaN, -inf) or white (+inf); an earlier checkpoint of the run may diverge less{floor}"
        )


def unfloored(model: torch.nn.Module) -> bool:
    """Whether ``model`` has an affine coupling on Glow's scale sigmoid(r + 2) without a floor
    (``min_scale`` 0, the built-in ``Coupling``'s attributes), whose inverse can diverge."""
    return any(getattr(m, "scale", None) == "sigmoid" and getattr(m, "min_scale", None) == 0.0 for m in model.modules())


def _drawn(model: torch.nn.Module, x: torch.Tensor, temperature: float, what: str) -> torch.Tensor:
    """``unit_images(x)`` after one warning line for those of the images ``x`` (B, ...) of
    ``model`` that diverged."""
    warn_diverged(model, diverged(x), len(x), temperature, what)
    return unit_images(x)


def bin_centres(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 (k + 0.5) / 256, the centres of their dequantization bins."""
    return torch.from_numpy((images.astype(np.float32) + 0.5) / 256.0).to(device)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sample(
    model: VAEFlow,
    n: int,
    *,
    temperature: float = 0.5,
    seed: int = 0,
    vae_only: bool = False,
    batch: int = SAMPLE_BATCH,
    diverged_counts: list[int] | None = None,
) -> torch.Tensor:
    """n samples, float32 (n, C, H, W) in [0, 1], drawn ``batch`` at a time from one seeded CPU
    stream: the same seed (and ``batch``) gives the same images on any device. Samples whose
    inverse diverged (``diverged``) are kept as ``unit_images`` makes them, with one warning line;
    their number is also appended to ``diverged_counts`` when given."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    out = torch.empty((n, *model.image_shape), dtype=torch.float32)
    bad = 0
    for i in range(0, n, batch):
        tick()  # the thread count follows the machine's load (vaeflow_cli.runtime.threads)
        m = min(batch, n - i)
        x = model.sample(m, temperature=temperature, vae_only=vae_only, generator=g)
        bad += diverged(x)
        out[i : i + m] = unit_images(x)
    warn_diverged(model, bad, n, temperature)
    if diverged_counts is not None:
        diverged_counts.append(bad)
    return out


@torch.no_grad()
def interpolate_prior(model: VAEFlow, *, pairs: int, steps: int, seed: int = 0, temperature: float = 0.0) -> torch.Tensor:
    """Rows of images along spherical paths between pairs of base points u ~ N(0, I), mapped to
    z = h^-1(u) and decoded: float32 (pairs, steps, C, H, W). At temperature 0 each image is
    f^-1(g_mu(z)), so frames change only with z."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    ua = torch.randn(pairs, model.latent_dim, generator=g)
    ub = torch.randn(pairs, model.latent_dim, generator=g)
    u = slerp(ua, ub, torch.linspace(0, 1, steps)).reshape(pairs * steps, -1).to(_device(model))
    x = model.decode(model.prior.from_base(u), temperature=temperature, generator=g)
    return _drawn(model, x, temperature, "frames").reshape(pairs, steps, *model.image_shape)


@torch.no_grad()
def interpolate_images(model: VAEFlow, a: np.ndarray, b: np.ndarray, *, steps: int) -> torch.Tensor:
    """Linear path between the encoder means of uint8 images a and b (C, H, W), decoded at
    temperature 0: float32 (steps, C, H, W). The endpoints are the two images' reconstructions."""
    model.eval()
    device = _device(model)
    mean, _ = model.encode(bin_centres(np.stack([a, b]), device))  # (2, d)
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    z = (1 - t) * mean[0] + t * mean[1]  # (steps, d)
    return _drawn(model, model.decode(z, temperature=0.0), 0.0, "frames")


@torch.no_grad()
def reconstruct(model: VAEFlow, images: np.ndarray) -> torch.Tensor:
    """f^-1(g_mu(m(y))) for uint8 images (N, C, H, W) -> float32 (N, C, H, W)."""
    model.eval()
    return _drawn(model, model.decode(model.encode(bin_centres(images, _device(model)))[0], temperature=0.0), 0.0, "reconstructions")


@torch.no_grad()
def compare_grid(model: VAEFlow, *, rows: int, per_z: int, temperature: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The paper's Figure 4: for each of ``rows`` latents z ~ p(z), the VAE mean g_mu(z) followed
    by ``per_z`` Glow-layer samples x = f^-1(g_mu + T g_sigma eps) of the same z:
    float32 (rows, 1 + per_z, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    z = model.prior.from_base(torch.randn(rows, model.latent_dim, generator=g).to(_device(model)))
    mean = model.decode(z, vae_only=True)
    zz = z.repeat_interleave(per_z, 0)
    samples = _drawn(model, model.decode(zz, temperature=temperature, generator=g), temperature, "samples").reshape(rows, per_z, *model.image_shape)
    return torch.cat([unit_images(mean)[:, None], samples], 1)


@torch.no_grad()
def temperature_grid(model: VAEFlow, *, temperatures, n: int, seed: int = 0) -> torch.Tensor:
    """One row per temperature T, the same ``n`` latents z and the same noise eps in every row:
    x = f^-1(g_mu(z) + T g_sigma(z) eps): float32 (len(temperatures), n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    device = _device(model)
    z = model.prior.from_base(torch.randn(n, model.latent_dim, generator=g).to(device))
    mean, std = model.decoder(z)
    eps = torch.randn(mean.shape, generator=g).to(device=device, dtype=mean.dtype)
    base = (mean.float(), std.float())
    return torch.stack([_drawn(model, model.from_decoder_space(mean + t * std * eps, condition=base), t, "samples") for t in temperatures])
