"""The model of Morrow & Chiu: a VAE (encoder, Gaussian decoder, learned prior) whose decoder
distribution is the base of a Glow layer f in pixel space (paper eqs. 3-4; model.md).

    log p(y|z) = log N(f(y); g_mu(z), g_sigma(z)^2) + log|det df/dy|
    ELBO(y)    = E_q[log p(y|z)] - KL(q(z|y) || p(z))

The model's forward is its bound: ``loss = model(y).bpd.mean()`` is the training loss of every
phase. ``model.use_flow`` is the phase's state, set once where the phase's model is built or
loaded (``runtime.phases.Phase.use_flow``): False gives the phase-1 model (f = identity), which
phase 1 trains without running f.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vaeflow_cli.config.constraints import problem
from vaeflow_cli.config.core import as_config
from vaeflow_cli.config.schema import CONSTRAINTS
from vaeflow_cli.model.distributions import LOG_2PI, bits_per_dim, gaussian_entropy, gaussian_log_prob, standard_normal_log_prob
from vaeflow_cli.model.flows import is_conditional


@dataclass
class Bound:
    """Single-sample ELBO terms per image, in nats; each (B,)."""

    log_px_z: torch.Tensor  # log p(y|z) at z ~ q(z|y)
    log_pz: torch.Tensor  # log p(z)
    entropy: torch.Tensor  # H[q(z|y)], analytic
    dims: int

    @property
    def elbo(self) -> torch.Tensor:
        return self.log_px_z + self.log_pz + self.entropy

    @property
    def kl(self) -> torch.Tensor:
        return -(self.log_pz + self.entropy)

    @property
    def bpd(self) -> torch.Tensor:
        """Upper bound on bits per dimension of the discrete images (model.md); the sum of
        ``latent_bpd`` and ``pixel_bpd``."""
        return bits_per_dim(self.elbo, self.dims)

    @property
    def latent_bpd(self) -> torch.Tensor:
        """The latent part of the bound, KL(q(z|y) || p(z)) in bits per dimension, (B,): what
        the code z costs. 0 for a flow alone."""
        return self.kl / (self.dims * math.log(2.0))

    @property
    def pixel_bpd(self) -> torch.Tensor:
        """The pixel part of the bound, -log p(y|z) (the decoder with its flow) plus the
        dequantization's D log 256, in bits per dimension, (B,): ``bpd - latent_bpd``."""
        return bits_per_dim(self.log_px_z, self.dims)


def training_loss(bound: Bound, *, kl_weight: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
    """The training loss of a batch, a scalar in bits/dim: the mean bound ``bound.bpd.mean()``,
    unless the phase sets a KL warm-up or free bits (``train.<phase>.kl_warmup_steps``,
    ``train.<phase>.free_bits``), which change only the latent term's part of the gradient:

        loss = mean(pixel_bpd) + kl_weight * max(free_bits, mean(KL)) / (D log 2)

    ``kl_weight`` in [0, 1] (the warm-up of Bowman et al., 2016 and Sonderby et al., 2016),
    ``free_bits`` in nats per image (the free bits of Kingma et al., 2016, "Improved Variational
    Inference with Inverse Autoregressive Flow", on the whole KL): below it the KL costs nothing
    in the loss, so a short phase 1 puts information into z before the decoder learns to do
    without it. Either makes the loss differ from the bound; the held-out bound reported is always
    the ELBO."""
    if kl_weight == 1.0 and free_bits == 0.0:
        return bound.bpd.float().mean()
    kl = bound.kl.float().mean()
    if free_bits > 0:
        kl = torch.clamp(kl, min=free_bits)
    return bound.pixel_bpd.float().mean() + kl_weight * kl / (bound.dims * math.log(2.0))


class LogitTransform(nn.Module):
    """The fixed elementwise bijection t = logit(alpha + (1 - 2 alpha) y) of dequantized pixels
    y in [0, 1) (RealNVP's data transform: Dinh et al., 2017, section 4.1), applied before the
    Glow layer in both phases, so that the decoder's Gaussian lives in logit space.
    forward(y) -> (t, log|det dt/dy|) and inverse(t) -> (y, log|det dy/dt|), shapes (B, C, H, W)
    and (B,), log-determinants in float32 nats.

    Why (measured; docs/design.md, "The model, and the choices the paper leaves open"): the pixels of 8-bit digits are near 0 or near 1, and a Gaussian
    in [0, 1) must then put a standard deviation near 1/(256 sqrt 12) on the background and a
    mean accurate to a thousandth there; in logit space the saturated values are spread over a few
    units and a Gaussian fits them at a sensible scale."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        _check_model_key("model.logit_alpha", alpha)
        self.alpha = alpha

    def _log_det(self, p: torch.Tensor) -> torch.Tensor:  # log dt/dy at p = alpha + (1 - 2 alpha) y
        return (math.log1p(-2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)

    def forward(self, y):
        p = self.alpha + (1 - 2 * self.alpha) * y.float()
        return torch.log(p) - torch.log1p(-p), self._log_det(p)

    def inverse(self, t):
        p = torch.sigmoid(t.float())
        return (p - self.alpha) / (1 - 2 * self.alpha), -self._log_det(p)


class IdentityTransform(nn.Module):
    """No pixel transform: the decoder's Gaussian lives on y in [0, 1) itself (the paper's text)."""

    def forward(self, y):
        return y, y.new_zeros(y.shape[0], dtype=torch.float32)

    def inverse(self, t):
        return t, t.new_zeros(t.shape[0], dtype=torch.float32)


def pixel_transform(name: str, alpha: float = 1e-6) -> nn.Module:
    """``model.pixel_transform``: "none" or "logit" (with ``model.logit_alpha``).
    :raises ValueError: a name or alpha outside the config's declared constraints."""
    _check_model_key("model.pixel_transform", name)
    return LogitTransform(alpha) if name == "logit" else IdentityTransform()


def _check_model_key(key: str, value) -> None:
    """The config's declared constraint on ``key`` (config.schema.CONSTRAINTS, the one home of the
    rule), for callers that build the model without a config. Raises ValueError."""
    found = problem(value, CONSTRAINTS[key])
    if found:
        raise ValueError(f"{key} {found}, got {value!r}")


class VAEFlow(nn.Module):
    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        flow: nn.Module,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        transform: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.prior, self.flow = encoder, decoder, prior, flow
        self.transform = transform if transform is not None else IdentityTransform()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.dims = math.prod(self.image_shape)
        self.use_flow = True
        """Whether the bound runs the Glow layer f (False: phase 1, where f is the identity and is not
        run). A plain attribute, not saved in checkpoints: the phase decides it."""
        self.conditional = is_conditional(flow)
        """Whether f is a conditional flow f(.; c) that reads the decoder's base distribution
        c = (g_mu(z), g_sigma(z)) (the ``ConditionalFlow`` protocol, vaeflow_cli.hookspecs)."""

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> Bound:
        """The one-sample ELBO of dequantized images y in [0, 1), (B, C, H, W) float32, with this
        phase's model (``use_flow``): ``model(y).bpd`` is the per-image loss in bits/dim, (B,)."""
        return self.bound(y, generator=generator)

    # ---------------------------------------------------------------- likelihood

    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of q(z|y), each (B, d), in float32 whatever the autocast precision."""
        mean, log_std = self.encoder(y)
        return mean.float(), log_std.float()

    def _run_flow(self, x: torch.Tensor, condition, *, inverse: bool = False):
        """f(x) or f^-1(x), with ``condition`` = (g_mu, g_sigma) for a conditional flow."""
        step = self.flow.inverse if inverse else self.flow
        if not self.conditional:
            return step(x)
        if condition is None:
            raise ValueError("the flow is conditional: pass condition=(mean, std), the decoder's output for the same z")
        return step(x, condition=condition)

    def to_decoder_space(self, y: torch.Tensor, *, use_flow: bool | None = None, condition=None) -> tuple[torch.Tensor, torch.Tensor]:
        """xbar = f(t(y)) and log|det dxbar/dy| (B,) in float32: the pixel transform t (identity
        or logit), then the Glow layer f unless ``use_flow`` (None: the model's ``use_flow``) is
        off (phase 1: f = identity). ``condition``: the decoder's (mean, std), each (B, C, H, W),
        which a conditional flow reads."""
        use_flow = self.use_flow if use_flow is None else use_flow
        xbar, log_det = self.transform(y)
        if use_flow:
            xbar, flow_log_det = self._run_flow(xbar, condition)
            log_det = log_det.float() + flow_log_det.float()
        return xbar.float(), log_det.float()

    def from_decoder_space(self, xbar: torch.Tensor, *, use_flow: bool | None = None, condition=None) -> torch.Tensor:
        """y = t^-1(f^-1(xbar)), the inverse of ``to_decoder_space`` (log-det not needed); f^-1 runs
        when ``use_flow`` (None: the model's ``use_flow``) is on."""
        use_flow = self.use_flow if use_flow is None else use_flow
        if use_flow:
            xbar = self._run_flow(xbar, condition, inverse=True)[0]
        return self.transform.inverse(xbar)[0]

    def log_px_given_z(self, y: torch.Tensor, z: torch.Tensor, *, use_flow: bool | None = None) -> torch.Tensor:
        """log p(y|z) -> (B,); the Glow layer's log-det and the Gaussian term are summed in float32
        (``use_flow`` None: the model's ``use_flow``). A conditional flow reads the decoder's output
        for the same z."""
        mean, std = self.decoder(z)  # (B, C, H, W) each
        mean, std = mean.float(), std.float()
        xbar, log_det = self.to_decoder_space(y, use_flow=use_flow, condition=(mean, std))
        return gaussian_log_prob(xbar, mean, std) + log_det

    def bound(self, y: torch.Tensor, *, use_flow: bool | None = None, generator: torch.Generator | None = None) -> Bound:
        """One-sample ELBO of dequantized images y in [0,1) (B, C, H, W); ``use_flow`` None: the
        model's ``use_flow``."""
        use_flow = self.use_flow if use_flow is None else use_flow
        mean, log_std = self.encode(y)
        eps = _randn(mean.shape, generator, mean)
        z = mean + torch.exp(log_std) * eps  # (B, d)
        return Bound(
            log_px_z=self.log_px_given_z(y, z, use_flow=use_flow), log_pz=self.prior.log_prob(z), entropy=gaussian_entropy(log_std), dims=self.dims
        )

    def iwae_log_likelihood(
        self, y: torch.Tensor, *, k: int, use_flow: bool | None = None, generator: torch.Generator | None = None, chunk: int = 64
    ) -> torch.Tensor:
        """IWAE_K lower bound on log p(y), (B,) nats (Burda et al.): log (1/K) sum_k w_k with
        w_k = p(y|z_k) p(z_k) / q(z_k|y), z_k ~ q(z|y). The Glow layer runs once per image (unless
        ``use_flow``, by default the model's, is off); the decoder runs on ``chunk`` samples per
        image at a time. IWAE_1 is an unbiased estimate of the ELBO and IWAE_K increases with K
        toward log p(y). A conditional flow depends on z, so it runs once per image and sample."""
        use_flow = self.use_flow if use_flow is None else use_flow
        per_sample_flow = use_flow and self.conditional
        mean, log_std = self.encode(y)  # (B, d)
        xbar, log_det = self.to_decoder_space(y, use_flow=use_flow and not per_sample_flow)
        b, d = mean.shape
        log_w = []
        for start in range(0, k, chunk):
            kc = min(chunk, k - start)
            eps = _randn((b, kc, d), generator, mean)
            z = (mean[:, None] + torch.exp(log_std)[:, None] * eps).reshape(b * kc, d)
            dec_mean, dec_std = self.decoder(z)
            dec_mean, dec_std = dec_mean.float(), dec_std.float()
            x_k, ld_k = xbar.repeat_interleave(kc, 0), 0.0
            if per_sample_flow:
                x_k, flow_log_det = self._run_flow(x_k, (dec_mean, dec_std))
                x_k, ld_k = x_k.float(), flow_log_det.float().reshape(b, kc)
            log_px = gaussian_log_prob(x_k, dec_mean, dec_std).reshape(b, kc) + ld_k
            log_pz = self.prior.log_prob(z).reshape(b, kc)
            log_q = (-0.5 * (eps * eps + LOG_2PI) - log_std[:, None]).sum(-1)
            log_w.append(log_px + log_det[:, None] + log_pz.float() - log_q.float())
        return torch.logsumexp(torch.cat(log_w, 1), 1) - math.log(k)

    # ---------------------------------------------------------------- sampling (paper, section 3.5)

    def decode(self, z: torch.Tensor, *, temperature: float = 0.5, vae_only: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0,1]-ish space from latents: xbar = g_mu + T g_sigma eps, x = t^-1(f^-1(xbar))
        (t: the pixel transform; f^-1 only where the model's ``use_flow`` is on, so a phase-1 model
        decodes with f = identity); ``vae_only`` returns t^-1(g_mu(z)) (the paper's Figure 4, left
        column)."""
        mean, std = self.decoder(z)
        if vae_only:
            return self.from_decoder_space(mean, use_flow=False)
        xbar = mean + temperature * std * _randn(mean.shape, generator, mean)
        return self.from_decoder_space(xbar, condition=(mean.float(), std.float()))

    def sample(self, n: int, *, temperature: float = 0.5, vae_only: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """u ~ N(0, I), z = h^-1(u), then ``decode``. -> (n, C, H, W)."""
        device = next(self.parameters()).device
        u = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self.decode(self.prior.from_base(u), temperature=temperature, vae_only=vae_only, generator=generator)


class FlowModel(nn.Module):
    """A flow alone as a density model, log p(y) = log N(f(y); 0, I) + log|det df/dy|: the
    standalone Glow baseline (``vaeflow train-baseline``). Its likelihood is exact, so ``bound``
    puts all of it in ``log_px_z`` (no latent: log p(z) = entropy = 0) and bpd is the exact value."""

    def __init__(self, *, flow: nn.Module, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.flow = flow
        self.image_shape = tuple(image_shape)
        self.dims = math.prod(self.image_shape)
        self.use_flow = True  # the flow is the whole model: always run

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> Bound:
        """The exact log-likelihood of y as a ``Bound`` (see ``bound``): ``model(y).bpd`` is the loss."""
        return self.bound(y, generator=generator)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        z, log_det = self.flow(y)
        return standard_normal_log_prob(z.float()) + log_det.float()

    def iwae_log_likelihood(
        self, y: torch.Tensor, *, k: int = 1, use_flow: bool | None = None, generator: torch.Generator | None = None, chunk: int = 64
    ) -> torch.Tensor:
        """A flow's likelihood is exact: every IWAE_K equals log p(y)."""
        return self.log_prob(y)

    def bound(self, y: torch.Tensor, *, use_flow: bool | None = None, generator: torch.Generator | None = None) -> Bound:
        log_p = self.log_prob(y)
        zero = torch.zeros_like(log_p)
        return Bound(log_px_z=log_p, log_pz=zero, entropy=zero, dims=self.dims)

    def sample(self, n: int, *, temperature: float = 0.5, vae_only: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """x = f^-1(T * eps), eps ~ N(0, I) (Glow's temperature)."""
        device = next(self.parameters()).device
        z = temperature * torch.randn(n, *self.image_shape, generator=generator).to(device)
        return self.flow.inverse(z)[0]


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise; drawn on the CPU from ``generator`` when one is given, so that a seed
    gives the same numbers on every device."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (B, d) at fractions t (K,) -> (B, K, d)."""
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((an * bn).sum(1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]  # (B, 1, 1)
    t = t[None, :, None]
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / so


def build_model(cfg: dict, image_shape: tuple[int, int, int], registry=None, *, baseline: bool = False):
    """The model described by a resolved config's [model] section: the VAE with its flow decoder,
    or with ``baseline`` the [model.flow] alone as a density (FlowModel)."""
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()
    cfg = as_config(cfg, source="the config given to build_model")
    m = cfg.model
    d = m.latent_dim

    def make(kind, section, **context):
        part = m.part(section)
        return registry.get(kind, part.name).build(f"[model.{section}]", cfg.origin(f"model.{section}"), **context, **part.kwargs())

    shape = tuple(image_shape)
    if baseline:
        flow = make("flow", "flow", image_shape=shape)
        if is_conditional(flow):
            from vaeflow_cli.errors import VaeflowError

            switch = "--set model.flow.conditional=false, or " if m.flow.options.get("conditional") is True else ""
            raise VaeflowError(
                f"[model.flow] type = {m.flow.name!r} is a conditional flow: it reads a VAE's decoder output, so it cannot be "
                f"trained alone as a density; train it as the VAE's flow decoder (vaeflow train-vae, then vaeflow train-glow), or "
                f'choose an unconditional flow for the baseline ({switch}type = "multiscale-glow")'
            )
        return FlowModel(flow=flow, image_shape=shape)
    return VAEFlow(
        encoder=make("encoder", "encoder", image_shape=shape, latent_dim=d),
        decoder=make("decoder", "decoder", image_shape=shape, latent_dim=d),
        prior=make("prior", "prior", latent_dim=d),
        flow=make("flow", "flow", image_shape=shape),
        image_shape=shape,
        latent_dim=d,
        transform=pixel_transform(m.pixel_transform, m.logit_alpha),
    )
