"""The Glow layer f of the paper (section 3.3): a no-squeeze, no-split stack of ActNorm ->
invertible 1x1 convolution -> coupling blocks in pixel space (Kingma & Dhariwal, 2018), each
coupling additive (x_b + t, the paper's) or affine ((x_b + t) * exp(tanh(.)), ``coupling = "affine"``).

Every layer maps x -> (y, log_det) in ``forward`` and y -> (x, log_det) in ``inverse``, log_det of
shape (B,). The stack is the identity at initialisation (model.md, "decided here"): ActNorm with
scale 1 and bias 0 (no data-dependent init), 1x1 convolutions equal to I, zero-initialised
coupling outputs. Phase 2 therefore starts exactly at the phase-1 bound.
"""

from __future__ import annotations

import math

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


SPLITS = ("channel", "checkerboard")
SCALES = ("none", "tanh", "sigmoid")


class Coupling(nn.Module):
    """One coupling layer: x_b <- (x_b + t) * exp(log_s) with (t, raw) = NN(x_a) and x_a unchanged
    (NICE, Dinh et al. 2014; RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018, section 3.3).

    ``split``: which entries condition and which move. "channel": x_a is the first C//2 channels
    (parity 0) or the rest (parity 1); "checkerboard": x_a is the pixels where (i + j + parity) is
    even, every channel (the only split for one-channel images; on colour images it predicts
    pixels from their neighbours where the channel split predicts colours of a pixel from each
    other).

    ``scale``: "none" is the additive coupling (log_s = 0, volume preserving; the paper's Glow
    layer); "tanh" is log_s = tanh(raw), a scale between e^-1 and e that is exactly 1 at
    initialisation; "sigmoid" is Glow's s = sigmoid(raw + 2) (log_s = logsigmoid(raw + 2), 0.88 at
    initialisation: close to, not exactly, the identity). log|det| = sum of log_s over the moved
    entries, (B,), in float32.

    ``min_scale`` m in [0, 1), "sigmoid" only: s = m + (1 - m) sigmoid(raw + 2), so the inverse
    divides by a scale of at least m: one coupling's inverse multiplies its moved entries by at most
    1/m (plus the shift). 0 (the default) is Glow's scale, whose inverse divides by
    sigmoid(raw + 2) without a floor: off the data, where sampling goes, raw can fall to -22, one
    coupling multiplies by 3e9 and the sample diverges (non-finite pixels; measured in
    docs/reproduce.md). Behrmann et al. (2021, "Understanding and Mitigating Exploding Inverses in
    Invertible Neural Networks", arXiv:2006.09347) describe this failure and argue for building
    blocks whose inverse has a bounded Lipschitz constant.

    ``condition_channels`` P > 0 makes the coupling conditional: NN's first hidden layer adds a
    1x1 convolution of condition feature maps (B, P, H, W) given to forward/inverse, so t and s
    depend on x_a and the condition (a conditional coupling, as in conditional Glow / SRFlow).
    The network's last convolution is zeroed, so with "none" or "tanh" the layer starts as the
    identity for every condition.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        hidden: int,
        parity: int,
        split: str,
        scale: str = "none",
        condition_channels: int = 0,
        min_scale: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
        if not 0.0 <= min_scale < 1.0:
            raise ValueError(f"min_scale must be in [0, 1), got {min_scale}")
        if min_scale and scale != "sigmoid":
            kind = "an additive coupling has no scale" if scale == "none" else f"scale {scale!r} is bounded already"
            raise ValueError(
                f"min_scale = {min_scale} applies to Glow's affine coupling (sigmoid scale) only ({kind}); set min_scale = 0 or coupling = 'affine'"
            )
        self.split, self.scale, self.parity = split, scale, parity % 2
        self.min_scale = float(min_scale)
        per = 1 if scale == "none" else 2  # the network's outputs per moved entry: a shift (and a log-scale)
        if split == "channel":
            if c < 2:
                raise ValueError("a channel split needs at least 2 channels; use split='checkerboard'")
            ca = c // 2
            self.cond = slice(0, ca) if self.parity == 0 else slice(ca, c)
            self.moved = slice(ca, c) if self.parity == 0 else slice(0, ca)
            n_in = ca if self.parity == 0 else c - ca
            n_out = c - n_in
        else:
            ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            self.register_buffer("mask", ((ii + jj + self.parity) % 2 == 0).float()[None, None])  # (1, 1, H, W), 1 = conditioner
            n_in = n_out = c
        self.net = coupling_net(n_in, per * n_out, hidden)
        self.condition_in = nn.Conv2d(condition_channels, hidden, 1, bias=False) if condition_channels else None
        self.conditional = bool(condition_channels)

    def _raw(self, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        inp = x[:, self.cond] if self.split == "channel" else x * self.mask
        if self.condition_in is None:
            out = self.net(inp)
        else:
            if condition is None:
                raise ValueError("this coupling is conditional: pass the condition feature maps")
            first, *rest = self.net
            out = add_over_batch(first(inp), self.condition_in(condition))  # in place: a convolution's backward does not read its output
            for layer in rest:
                out = layer(out)
        return out if self.split == "channel" else out * (1.0 - self.mask)  # zero on the conditioner pixels

    def _shift_log_scale(self, x, condition):
        raw = self._raw(x, condition)
        if self.scale == "none":
            return raw, None
        raw = raw.float()  # float32 under autocast: the log-det sums log_s
        shift, s = raw[:, 0::2], raw[:, 1::2]
        if self.scale == "tanh":
            log_s = torch.tanh(s)
        elif self.min_scale:  # log(m + (1 - m) sigmoid(s + 2)), finite for every s and every m in (0, 1)
            log_s = torch.logaddexp(torch.full_like(s, math.log(self.min_scale)), math.log1p(-self.min_scale) + F.logsigmoid(s + 2.0))
        else:
            log_s = F.logsigmoid(s + 2.0)
        if self.split == "checkerboard":
            log_s = log_s * (1.0 - self.mask)
        return shift, log_s

    def _couple(self, x, condition, sign: float):
        shift, log_s = self._shift_log_scale(x, condition)
        part = x[:, self.moved] if self.split == "channel" else x
        if log_s is None:
            moved, log_det = part + sign * shift.to(x.dtype), x.new_zeros(x.shape[0], dtype=torch.float32)
        elif sign > 0:
            moved, log_det = (part + shift.to(x.dtype)) * torch.exp(log_s).to(x.dtype), log_s.flatten(1).sum(1)
        else:
            moved, log_det = part * torch.exp(-log_s).to(x.dtype) - shift.to(x.dtype), -log_s.flatten(1).sum(1)
        if self.split == "channel":
            out = x.clone()
            out[:, self.moved] = moved
            return out, log_det
        return moved, log_det  # the conditioner pixels have shift 0 and log_s 0: unchanged

    def forward(self, x, condition: torch.Tensor | None = None):
        return self._couple(x, condition, 1.0)

    def inverse(self, y, condition: torch.Tensor | None = None):
        # the conditioner part is unchanged, so the network sees the same input both ways
        return self._couple(y, condition, -1.0)


def add_over_batch(out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``out += other`` in place, ``other`` (B, C, H, W) or (1, C, H, W) broadcast over the batch of
    ``out`` (B, C, H, W) (a positional map, the same for every image); returns ``out``. The same
    arithmetic as ``out.add_(other)``, but when ``out`` is channels_last the addition runs on its
    (B, H, W, C) view, so that the gradient of a broadcast ``other`` is a sum over the batch in
    memory order: torch's sum over the batch of a channels_last tensor took 20 ms against 0.6 ms
    for the same sum over that view (64 x 64 x 32 x 32, one CPU thread, torch 2.15)."""
    if other.shape[0] == 1 != out.shape[0] and out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
        out.permute(0, 2, 3, 1).add_(other.permute(0, 2, 3, 1))
        return out
    return out.add_(other)


def condition_maps(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The decoder's base distribution as feature maps for a conditional flow: (g_mu, log g_sigma)
    stacked on channels, (B, 2C, H, W), in the dtype of ``mean``."""
    return torch.cat([mean, torch.log(std)], 1)


# ------------------------------------------------------------------ the Glow layer


class GlowLayer(FlowSequence):
    """f: data space -> decoder space; ``depth`` blocks of ActNorm -> 1x1 conv -> coupling, no
    squeeze, no split (the paper's section 3.3).

    ``hidden_channels``: width of the coupling networks (the paper does not state it; model.md
    explains why the shipped configs use 128 or less). ``split="auto"`` picks the channel split
    for C >= 2 and the checkerboard split for C = 1; "alternate" takes the checkerboard and the
    channel split in turn. ``coupling``: "additive" (the paper's) or "affine" (a tanh-bounded
    log-scale, ``Coupling`` with scale "tanh").

    ``conditional``: the couplings also see the decoder's base distribution, through feature maps
    of (g_mu, log g_sigma) (``condition_channels`` of them, one 3x3 convolution computed once per
    call); forward and inverse then take ``condition=(mean, std)``, each (B, C, H, W). The
    identity at initialisation either way.
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
        conditional: bool = False,
        condition_channels: int = 8,
    ) -> None:
        c = image_shape[0]
        scale = {"additive": "none", "affine": "tanh"}[coupling]
        if split == "auto":
            split = "channel" if c >= 2 else "checkerboard"
        if split == "alternate" and c < 2:
            raise ValueError("split='alternate' needs at least 2 channels; use split='checkerboard'")
        cc = condition_channels if conditional else 0
        blocks = []
        for i in range(depth):
            if split == "alternate":  # checkerboard 0, channel 0, checkerboard 1, channel 1, ...
                kind, parity = ("checkerboard", "channel")[i % 2], i // 2
            else:
                kind, parity = split, i
            blocks += [
                ActNorm(c),
                InvConv1x1(c, lu=lu),
                Coupling(tuple(image_shape), hidden=hidden_channels, parity=parity, split=kind, scale=scale, condition_channels=cc),
            ]
        super().__init__(blocks)
        self.checkpointing = checkpointing
        self.conditional = conditional
        self.condition_net = nn.Conv2d(2 * c, cc, 3, padding=1) if conditional else None

    def _features(self, condition):
        if not self.conditional:
            return None
        if condition is None:
            raise ValueError("this Glow layer is conditional: pass condition=(mean, std) of the decoder")
        return self.condition_net(condition_maps(*condition))

    def _run(self, x, features, layers, inverse: bool):
        log_det = x.new_zeros(x.shape[0], dtype=torch.float32)
        for layer in layers:
            step = layer.inverse if inverse else layer
            if isinstance(layer, Coupling) and layer.conditional:
                if self.checkpointing and not inverse and torch.is_grad_enabled():
                    x, ld = _checkpointed(layer, x, features)
                else:
                    x, ld = step(x, features)
            elif self.checkpointing and not inverse and torch.is_grad_enabled():
                x, ld = _checkpointed(layer, x)
            else:
                x, ld = step(x)
            log_det = log_det + ld
        return x, log_det

    def forward(self, x, condition=None):
        """x (B, C, H, W) -> (xbar, log|det dxbar/dx|). With ``checkpointing`` (model.flow.checkpointing)
        and gradients on, each layer's activations are recomputed in the backward pass instead of
        stored: the coupling networks' full-resolution hidden maps are most of phase 2's memory,
        so larger batches fit."""
        return self._run(x, self._features(condition), self.layers, inverse=False)

    def inverse(self, xbar, condition=None):
        return self._run(xbar, self._features(condition), list(reversed(self.layers)), inverse=True)


def _checkpointed(layer, *args):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(layer, *args, use_reentrant=False)


class IdentityFlow(FlowSequence):
    """f = identity: the plain VAE with no Glow layer (what phase 1 trains)."""

    def __init__(self, *, image_shape: tuple[int, int, int]) -> None:
        super().__init__([])


# ------------------------------------------------------------------ the multi-scale Glow's parts (multiscale.py)


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


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 block of pixels to channels."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)
