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

from vaeflow_cli.plugin_api import FlowSequence, global_mean, global_sum

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

    With ``lu=True`` W = P L (U + diag(sign * exp(log_s))) (Glow's LU parametrisation): the
    log-determinant is sum(log_s), and the inverse W^-1 = U'^-1 L^-1 P^T comes from two
    triangular solves on those factors (float64), not from a general matrix inverse. Without LU
    the inverse is torch.linalg.inv. Initialised to W = I.
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

    def inverse_weight(self) -> torch.Tensor:
        """W^-1 (C, C): by triangular solves on the LU factors, or a general inverse without LU."""
        if not self.lu:
            return torch.linalg.inv(self.weight.double()).to(self.weight.dtype)
        c = self.log_s.shape[0]
        eye = torch.eye(c, device=self.log_s.device, dtype=torch.float64)
        lower = self.lower.double() * self.lower_mask.double() + eye
        upper = self.upper.double() * self.lower_mask.T.double() + torch.diag(self.sign_s.double() * torch.exp(self.log_s.double()))
        l_inv_pt = torch.linalg.solve_triangular(lower, self.perm.double().T, upper=False, unitriangular=True)  # L^-1 P^T
        return torch.linalg.solve_triangular(upper, l_inv_pt, upper=True).to(self.log_s.dtype)  # U'^-1 L^-1 P^T

    def inverse(self, y):
        _, log_det = self._weight()
        hw = y.shape[2] * y.shape[3]
        return F.conv2d(y, self.inverse_weight()[:, :, None, None]), (-hw * log_det).expand(y.shape[0])


def coupling_net(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    """Glow's coupling network conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3, last conv zeroed."""
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)


class AdditiveCoupling(nn.Module):
    """x_b <- x_b + NN(x_a), volume preserving (log|det| = 0) (NICE; Glow's additive coupling).

    ``split="channel"``: x_a is the first C//2 channels (parity 0) or the rest (parity 1).
    ``split="checkerboard"``: x_a is the pixels where (i + j + parity) is even, for images with
    one channel, where a channel split is impossible (model.md, decided here).
    """

    outputs_per_channel = 1  # the network's outputs per transformed channel: a shift

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
            self.net = coupling_net(n_cond, self.outputs_per_channel * (c - n_cond), hidden)
        elif split == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            mask = ((ii + jj + self.parity) % 2 == 0).float()[None, None]  # (1, 1, H, W), 1 = conditioner
            self.register_buffer("mask", mask)
            self.net = coupling_net(c, self.outputs_per_channel * c, hidden)
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


class SplitAffineCoupling(AdditiveCoupling):
    """x_b <- (x_b + t(x_a)) * exp(s(x_a)), s = tanh(raw) (so each layer scales by e^-1 to e), with
    the channel or checkerboard split of ``AdditiveCoupling``; log|det| = sum of s over the
    transformed entries. The network's last conv is zeroed, so s = t = 0 and the layer starts as
    exactly the identity (unlike Glow's sigmoid(raw + 2) scale). The scale depends on the
    neighbouring pixels, so the layer can widen or narrow the decoder's Gaussian locally (edges
    against flat regions), which an additive coupling cannot."""

    outputs_per_channel = 2  # a shift and a log-scale per transformed channel

    def _scale_shift(self, x):
        if self.split == "channel":
            h = self.net(x[:, self.cond]).float()
        else:
            h = (self.net(x * self.mask) * (1.0 - self.mask)).float()  # zero on the conditioner pixels
        shift, raw = h[:, 0::2], h[:, 1::2]
        return torch.tanh(raw), shift

    def forward(self, x):
        log_scale, shift = self._scale_shift(x)
        if self.split == "channel":
            out = x.clone()
            out[:, self.moved] = (x[:, self.moved] + shift.to(x.dtype)) * torch.exp(log_scale).to(x.dtype)
            return out, log_scale.flatten(1).sum(1)
        return (x + shift.to(x.dtype)) * torch.exp(log_scale).to(x.dtype), log_scale.flatten(1).sum(1)

    def inverse(self, y):
        # the conditioner part is unchanged, so the network sees the same input both ways
        log_scale, shift = self._scale_shift(y)
        if self.split == "channel":
            out = y.clone()
            out[:, self.moved] = y[:, self.moved] * torch.exp(-log_scale).to(y.dtype) - shift.to(y.dtype)
            return out, -log_scale.flatten(1).sum(1)
        return y * torch.exp(-log_scale).to(y.dtype) - shift.to(y.dtype), -log_scale.flatten(1).sum(1)


class GlowLayer(FlowSequence):
    """f: data space -> decoder space; ``depth`` blocks of ActNorm -> 1x1 conv -> additive coupling.

    ``hidden_channels``: width of the coupling networks (the paper does not state it; model.md
    explains why the shipped configs use 128 or less). ``split="auto"`` picks the channel split
    for C >= 2 and the checkerboard split for C = 1.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        depth: int,
        hidden_channels: int,
        lu: bool,
        split: str,
        checkpointing: bool,
        coupling: str = "additive",
    ) -> None:
        c = image_shape[0]
        couple = {"additive": AdditiveCoupling, "affine": SplitAffineCoupling}[coupling]
        if split == "auto":
            split = "channel" if c >= 2 else "checkerboard"
        if split == "alternate" and c < 2:
            raise ValueError("split='alternate' needs at least 2 channels; use split='checkerboard'")
        blocks = []
        for i in range(depth):
            if split == "alternate":  # checkerboard 0, channel 0, checkerboard 1, channel 1, ...
                kind, parity = ("checkerboard", "channel")[i % 2], i // 2
            else:
                kind, parity = split, i
            blocks += [ActNorm(c), InvConv1x1(c, lu=lu), couple(tuple(image_shape), hidden=hidden_channels, parity=parity, split=kind)]
        super().__init__(blocks)
        self.checkpointing = checkpointing

    def forward(self, x):
        """With ``checkpointing`` (model.flow.checkpointing) and gradients on, each layer's
        activations are recomputed in the backward pass instead of stored: the coupling networks'
        full-resolution hidden maps are most of phase 2's memory, so larger batches fit."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return super().forward(x)
        from torch.utils.checkpoint import checkpoint

        log_det = x.new_zeros(x.shape[0], dtype=torch.float32)
        for layer in self.layers:
            x, ld = checkpoint(layer, x, use_reentrant=False)
            log_det = log_det + ld
        return x, log_det


class IdentityFlow(FlowSequence):
    """f = identity: the plain VAE with no Glow layer (what phase 1 trains)."""

    def __init__(self, *, image_shape: tuple[int, int, int]) -> None:
        super().__init__([])


# ------------------------------------------------------------------ the standalone Glow baseline


class DataInitActNorm(ActNorm):
    """ActNorm with Glow's data-dependent initialisation: on the first forward pass in training
    mode, bias and log-scale are set so that the output has zero mean and unit variance per
    channel. The ``initialized`` buffer is saved with the weights, so a resumed run keeps them.

    Under torchrun the statistics are those of the GLOBAL batch (every rank's shard, all-reduced
    with vaeflow_cli.model.flows.global_mean), so every replica gets the same values, the ones a single
    process computes on the whole batch: DDP broadcasts the weights only once, before this
    initialisation, and would otherwise leave each rank with its own. Every rank therefore runs
    this first training forward pass together (as DDP's training steps do)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self._initialize(x)
        return super().forward(x)

    def _initialize(self, x: torch.Tensor) -> None:
        c = x.shape[1]
        xd = x.detach().double().transpose(0, 1).reshape(c, -1)  # (C, B*H*W) of this rank
        n = xd.shape[1]
        local = torch.cat([xd.mean(1), (xd * xd).mean(1)]) if n else xd.new_zeros(2 * c)
        moments = global_mean(local, weight=n)  # E[x], E[x^2] per channel over the global batch
        total = int(global_sum(xd.new_tensor([float(n)])).item())  # pixels per channel, all ranks
        mean, second = moments[:c], moments[c:]
        if total > 1:  # the unbiased estimate, as Tensor.std computes it on one process
            std = ((second - mean * mean).clamp_min(0.0) * total / (total - 1)).sqrt().clamp_min(1e-6)
        else:
            std = torch.ones_like(mean)
        self.bias.copy_(-mean.reshape(1, c, 1, 1).to(self.bias))
        self.log_scale.copy_(-torch.log(std).reshape(1, c, 1, 1).to(self.log_scale))
        self.initialized.fill_(True)


class AffineCoupling(nn.Module):
    """Glow's affine coupling: x_b <- (x_b + t(x_a)) * sigmoid(s(x_a) + 2), channel split in half;
    log|det| = sum log sigmoid(s + 2). The network's last conv is zeroed, so the layer starts
    close to (not exactly) the identity."""

    def __init__(self, channels: int, *, hidden: int, parity: int) -> None:
        super().__init__()
        ca = channels // 2
        self.parity = parity % 2
        self.cond = slice(0, ca) if self.parity == 0 else slice(ca, channels)
        self.moved = slice(ca, channels) if self.parity == 0 else slice(0, ca)
        n_cond = ca if self.parity == 0 else channels - ca
        self.net = coupling_net(n_cond, 2 * (channels - n_cond), hidden)

    def _scale_shift(self, x):
        h = self.net(x[:, self.cond]).float()  # float32 under autocast: the log-det sums log_scale
        shift, raw = h[:, 0::2], h[:, 1::2]
        log_scale = F.logsigmoid(raw + 2.0)
        return log_scale, shift

    def forward(self, x):
        log_scale, shift = self._scale_shift(x)
        out = x.clone()
        out[:, self.moved] = (x[:, self.moved] + shift) * torch.exp(log_scale)
        return out, log_scale.flatten(1).sum(1)

    def inverse(self, y):
        log_scale, shift = self._scale_shift(y)
        out = y.clone()
        out[:, self.moved] = y[:, self.moved] * torch.exp(-log_scale) - shift
        return out, -log_scale.flatten(1).sum(1)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 block of pixels to channels."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class _GlowLevel(nn.Module):
    """One level: squeeze, K steps of flow, then (except at the top) split off half the channels,
    whose learned Gaussian prior N(mu(h), sigma(h)^2) given the kept half h is folded in as an
    affine map to N(0, I), and recurse on h. The top level's learned prior (Glow's learntop) is a
    per-channel-and-position mean and log-scale. The output has the input's shape and is N(0, I)
    under the model, so the whole Glow is one bijection with a standard normal base."""

    def __init__(self, channels: int, height: int, width: int, *, levels: int, steps: int, hidden: int, coupling: str, lu: bool) -> None:
        super().__init__()
        c = 4 * channels
        affine = {"affine": True, "additive": False}[coupling]  # checked by multiscale_glow's declared constraints
        blocks = []
        for k in range(steps):
            blocks += [DataInitActNorm(c), InvConv1x1(c, lu=lu)]
            if affine:
                blocks.append(AffineCoupling(c, hidden=hidden, parity=k))
            else:
                blocks.append(AdditiveCoupling((c, height // 2, width // 2), hidden=hidden, parity=k, split="channel"))
        self.steps = FlowSequence(blocks)
        self.top = levels == 1
        if self.top:
            self.prior_mean = nn.Parameter(torch.zeros(1, c, height // 2, width // 2))
            self.prior_log_std = nn.Parameter(torch.zeros(1, c, height // 2, width // 2))
        else:
            self.split_prior = nn.Conv2d(c // 2, c, 3, padding=1)  # Glow's Conv2dZeros: starts at N(0, I)
            nn.init.zeros_(self.split_prior.weight)
            nn.init.zeros_(self.split_prior.bias)
            self.next = _GlowLevel(c // 2, height // 2, width // 2, levels=levels - 1, steps=steps, hidden=hidden, coupling=coupling, lu=lu)

    def forward(self, x):
        h, log_det = self.steps(squeeze(x))
        if self.top:
            out = (h - self.prior_mean) * torch.exp(-self.prior_log_std)
            return unsqueeze(out), log_det - self.prior_log_std.sum().expand(x.shape[0])
        kept, z = h.chunk(2, dim=1)
        mean, log_std = self.split_prior(kept).float().chunk(2, dim=1)
        eps = (z - mean) * torch.exp(-log_std)
        rest, ld = self.next(kept)
        return unsqueeze(torch.cat([rest, eps], 1)), log_det + ld - log_std.flatten(1).sum(1)

    def inverse(self, y):
        y = squeeze(y)
        if self.top:
            h = y * torch.exp(self.prior_log_std) + self.prior_mean
            log_det = self.prior_log_std.sum().expand(y.shape[0])
        else:
            rest, eps = y.chunk(2, dim=1)
            kept, log_det = self.next.inverse(rest)
            mean, log_std = self.split_prior(kept).float().chunk(2, dim=1)
            h = torch.cat([kept, eps * torch.exp(log_std) + mean], 1)
            log_det = log_det + log_std.flatten(1).sum(1)
        x, ld = self.steps.inverse(h)
        return unsqueeze(x), log_det + ld


class MultiScaleGlow(nn.Module):
    """The standalone Glow of Kingma & Dhariwal (2018), the paper's baseline: ``levels`` levels
    (L) of squeeze -> ``steps`` (K) x [ActNorm (data-dependent init) -> 1x1 conv -> affine or
    additive coupling] -> split, with learned split priors and a learned top prior. Registered as a
    flow: x -> (z, log_det) with z ~ N(0, I) under the model (the learned priors are folded into
    the bijection), so ``vaeflow train-baseline`` trains it alone as a density model. It is not
    the identity at initialisation, so vaeflow refuses it as a VAE's pixel-space flow (the
    ``Flow`` contract in vaeflow_cli.hookspecs). Inputs are centred (x - 0.5) first, as in Glow.
    Needs H and W divisible by 2^levels."""

    def __init__(self, *, image_shape: tuple[int, int, int], levels: int, steps: int, hidden_channels: int, coupling: str, lu: bool) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"multiscale-glow with levels={levels} needs H and W divisible by {2**levels}, got {h}x{w}")
        self.body = _GlowLevel(c, h, w, levels=levels, steps=steps, hidden=hidden_channels, coupling=coupling, lu=lu)

    def forward(self, x):
        return self.body(x - 0.5)

    def inverse(self, z):
        x, log_det = self.body.inverse(z)
        return x + 0.5, log_det
