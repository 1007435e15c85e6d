"""The multi-scale Glow (Kingma & Dhariwal, 2018): the paper's standalone baseline and, with a
condition, vaeflow's conditional flow decoder.

One network G, two uses:

- **Standalone** (``multiscale-glow``, ``vaeflow train-baseline``): ``levels`` levels of squeeze
  -> ``steps`` x [ActNorm with data-dependent initialisation -> invertible 1x1 convolution ->
  coupling, affine with Glow's scale sigmoid(. + 2) or additive (``coupling``)] -> split, with
  learned Gaussian priors for the split-off halves and a learned top prior, all folded into the
  bijection so that its output G(x) is N(0, I) under the model.
  Inputs are centred (x - 0.5) first, as in Glow. With ``positional_channels`` its couplings and
  priors also read learned positional maps, through the conditional path below with a learned
  constant in place of the decoder's output (the conditional flow can read both).
- **Conditional** (``conditional-glow``, a VAE's ``[model.flow]``): the same G, whose coupling
  networks and split and top priors also read feature maps of the decoder's base distribution
  c = (g_mu(z), log g_sigma(z)) at their resolution (a conditional Glow, as in f-VAEs, Su & Wu
  2018, and SRFlow, Lugmayr et al. 2020), composed with the decoder's affine map:

      f(x; c) = g_mu + g_sigma * G(x; c),    log|det df/dx| = log|det dG/dx| + sum log g_sigma

  so that log p(x|z) = log N(f(x; c); g_mu, g_sigma^2) + log|det df/dx| = log N(G(x; c); 0, I) +
  log|det dG/dx|: an exact density for every z, the paper's equation 4 with the decoder's
  Gaussian as the base, and sampling x = f^-1(g_mu + T g_sigma eps; c) = G^-1(T eps; c) keeps
  the temperature in the base (section 3.5). When G ignores its condition it is the standalone
  Glow, and log p(x|z) is the Glow's log p(x): the baseline is the special case.

  Unlike the paper's Glow layer this flow is not the identity at initialisation (its ActNorm
  starts from the data, as Glow's): phase 2 starts from its own initialisation, not from the
  phase-1 bound. Measured on CIFAR-10 (docs/reproduce.md), a flow that starts as the identity
  on the decoder's standardized residual (x - g_mu) / g_sigma, or on x with the decoder's
  Gaussian as its base, learned far more slowly per step than this one.

Needs H and W divisible by 2**levels. A flow's output has its input's shape.
"""

from __future__ import annotations

import torch
from torch import nn

from vaeflow_plugins.glow import ActNorm, Coupling, DataInitActNorm, InvConv1x1, condition_maps, squeeze, unsqueeze


def _zero_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """Glow's Conv2dZeros: a 3x3 convolution that starts at zero (a prior that starts at N(0, I))."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class _Level(nn.Module):
    """One level: squeeze, K steps of flow, then (except at the top) split off half the channels,
    whose Gaussian prior N(mu, sigma^2) given the kept half (and the condition) is folded in as an
    affine map to N(0, I), and recurse on the kept half. The top level's prior is a learned mean
    and log-scale per channel and position (Glow's learntop), plus a function of the condition.

    ``condition_in``: channels of the raw condition maps at this level's input resolution (0:
    unconditional); they are squeezed with the image and projected to ``features`` channels once
    per call, then shared by the level's prior and, with ``condition_couplings``, its couplings."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        levels: int,
        steps: int,
        hidden: int,
        scale: str,
        lu: bool,
        data_init: bool,
        condition_in: int,
        features: int,
        condition_couplings: bool = True,
        min_scale: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = 4 * channels, height // 2, width // 2
        p = features if condition_in else 0
        self.coupling_features = p if condition_couplings else 0
        self.project = nn.Conv2d(4 * condition_in, p, 3, padding=1) if condition_in else None
        norm = DataInitActNorm if data_init else ActNorm
        self.norms = nn.ModuleList(norm(c) for _ in range(steps))
        self.convs = nn.ModuleList(InvConv1x1(c, lu=lu) for _ in range(steps))
        self.couplings = nn.ModuleList(
            Coupling((c, h, w), hidden=hidden, parity=k, split="channel", scale=scale, condition_channels=self.coupling_features, min_scale=min_scale)
            for k in range(steps)
        )
        self.top = levels == 1
        if self.top:
            self.prior_mean = nn.Parameter(torch.zeros(1, c, h, w))
            self.prior_log_std = nn.Parameter(torch.zeros(1, c, h, w))
            self.top_prior = _zero_conv(p, 2 * c) if p else None
        else:
            self.split_prior = _zero_conv(c // 2 + p, c)
            self.next = _Level(
                c // 2,
                h,
                w,
                levels=levels - 1,
                steps=steps,
                hidden=hidden,
                scale=scale,
                lu=lu,
                data_init=data_init,
                condition_in=4 * condition_in,
                features=features,
                condition_couplings=condition_couplings,
                min_scale=min_scale,
            )

    def _features(self, condition):
        squeezed = squeeze(condition) if self.project is not None else None
        return squeezed, (self.project(squeezed) if squeezed is not None else None)

    def _coupling_features(self, feats):
        return feats if self.coupling_features else None

    def _prior(self, kept_or_none, feats, like):
        """(mean, log_std) of the split-off half (given the kept half) or of the top's output."""
        if self.top:
            mean, log_std = self.prior_mean, self.prior_log_std
            if feats is not None:
                dm, dl = self.top_prior(feats).float().chunk(2, dim=1)
                mean, log_std = mean + dm, log_std + dl
            return mean.expand_as(like), log_std.expand_as(like)
        if feats is not None:  # a positional map has batch 1: broadcast it to the batch
            kept_or_none = torch.cat([kept_or_none, feats.expand(kept_or_none.shape[0], -1, -1, -1)], 1)
        return self.split_prior(kept_or_none).float().chunk(2, dim=1)

    def forward(self, x, condition=None):
        squeezed, feats = self._features(condition)
        h = squeeze(x)
        log_det = h.new_zeros(h.shape[0], dtype=torch.float32)
        cf = self._coupling_features(feats)
        for norm, conv, coupling in zip(self.norms, self.convs, self.couplings, strict=True):
            h, a = norm(h)
            h, b = conv(h)
            h, c = coupling(h, cf)
            log_det = log_det + a + b + c
        if self.top:
            mean, log_std = self._prior(None, feats, h)
            return unsqueeze((h - mean) * torch.exp(-log_std)), log_det - log_std.flatten(1).sum(1)
        kept, z = h.chunk(2, dim=1)
        mean, log_std = self._prior(kept, feats, z)
        eps = (z - mean) * torch.exp(-log_std)
        rest, ld = self.next(kept, squeezed)
        return unsqueeze(torch.cat([rest, eps], 1)), log_det + ld - log_std.flatten(1).sum(1)

    def inverse(self, y, condition=None):
        squeezed, feats = self._features(condition)
        y = squeeze(y)
        if self.top:
            mean, log_std = self._prior(None, feats, y)
            h, log_det = y * torch.exp(log_std) + mean, log_std.flatten(1).sum(1)
        else:
            rest, eps = y.chunk(2, dim=1)
            kept, log_det = self.next.inverse(rest, squeezed)
            mean, log_std = self._prior(kept, feats, eps)
            h = torch.cat([kept, eps * torch.exp(log_std) + mean], 1)
            log_det = log_det + log_std.flatten(1).sum(1)
        cf = self._coupling_features(feats)
        for norm, conv, coupling in zip(reversed(self.norms), reversed(self.convs), reversed(self.couplings), strict=True):
            h, c = coupling.inverse(h, cf)
            h, b = conv.inverse(h)
            h, a = norm.inverse(h)
            log_det = log_det + a + b + c
        return unsqueeze(h), log_det


class MultiScaleGlow(nn.Module):
    """The multi-scale Glow G, standalone or conditional (see the module docstring).

    ``levels`` (L), ``steps`` (K) and ``hidden_channels`` as in Glow; ``coupling``: "affine"
    (Glow's s = sigmoid(raw + 2)) or "additive"; ``min_scale`` m > 0 (affine only): s = m + (1 - m)
    sigmoid(raw + 2), a floor that bounds each coupling's inverse (``glow.Coupling``); ``lu``:
    LU-parametrised 1x1 convolutions.
    ``conditional``: forward and inverse take ``condition=(mean, std)``, the decoder's base
    distribution, each (B, C, H, W), and return f = mean + std * G(x; c) (forward) and its
    inverse; ``condition_channels`` feature maps of the condition per level, read by the split and
    top priors and, with ``condition_couplings`` (default), by every coupling. Standalone,
    forward(x) -> (G(x), log|det dG/dx|) with G(x) ~ N(0, I) under the model.
    ``positional_channels`` P > 0: the same condition path reads a learned constant, P maps of
    shape (P, H, W) (initialised to 1, one for every image), squeezed to each level and projected
    there: a learned positional encoding that every coupling and prior sees (Glow's learned top
    prior, ``learntop``, is the special case at the top level's prior). Standalone it is the whole
    condition (P feature maps per level); with ``conditional`` the maps are stacked on the
    decoder's (g_mu, log g_sigma) before the projection. The density stays exact: the maps do not
    depend on x. Shapes: out as x, log-dets (B,). Raises ValueError for H or W not divisible by
    2**levels."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        levels: int,
        steps: int,
        hidden_channels: int,
        coupling: str,
        lu: bool,
        conditional: bool = False,
        condition_channels: int = 8,
        condition_couplings: bool = True,
        positional_channels: int = 0,
        min_scale: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        name = "conditional-glow" if conditional else "multiscale-glow"
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"{name} with levels={levels} needs H and W divisible by {2**levels}, got {h}x{w}")
        self.conditional = conditional
        # The learned positional maps (batch 1, broadcast to the batch where they meet the image).
        # They start constant: the zero padding of each level's 3x3 projection tells the couplings
        # and priors where the image's borders are, and the maps learn the rest (measured against
        # N(0, 1) and 0.1 N(0, 1) starts on CIFAR-10, docs/reproduce.md).
        self.position = nn.Parameter(torch.ones(1, positional_channels, h, w)) if positional_channels else None
        if conditional:
            # Not the identity at initialisation (data-dependent ActNorm): as a flow decoder its
            # phase 2 starts from its own initialisation (the Flow protocol, vaeflow_cli.hookspecs).
            # The standalone Glow declares nothing, so it stays refused as a VAE's pixel flow.
            self.identity_at_init = False
        self.body = _Level(
            c,
            h,
            w,
            levels=levels,
            steps=steps,
            hidden=hidden_channels,
            scale="none" if coupling == "additive" else "sigmoid",
            lu=lu,
            data_init=True,
            condition_in=(2 * c if conditional else 0) + positional_channels,
            features=condition_channels if conditional else positional_channels,
            condition_couplings=condition_couplings,
            min_scale=min_scale,
        )

    def _maps(self, condition):
        if not self.conditional:
            return self.position  # None for the paper's Glow
        if condition is None:
            raise ValueError("this flow is conditional: pass condition=(mean, std) of the decoder")
        maps = condition_maps(*condition)
        if self.position is None:
            return maps
        return torch.cat([maps, self.position.expand(maps.shape[0], -1, -1, -1).to(maps.dtype)], 1)

    def forward(self, x, condition=None):
        maps = self._maps(condition)
        out, log_det = self.body(x - 0.5, maps)
        if not self.conditional:
            return out, log_det
        mean, std = condition
        return mean + std * out, log_det + torch.log(std).flatten(1).sum(1)

    def inverse(self, y, condition=None):
        maps = self._maps(condition)
        if self.conditional:
            mean, std = condition
            x, log_det = self.body.inverse((y - mean) / std, maps)
            return x + 0.5, log_det - torch.log(std).flatten(1).sum(1)
        x, log_det = self.body.inverse(y, maps)
        return x + 0.5, log_det
