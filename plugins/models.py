"""The built-in model components: their registration and their config schema.

Each factory below is what a config's ``type`` selects; its keyword-only arguments are the
section's config keys, with their defaults and valid values (``Annotated[..., Range(...)]``,
``Literal[...]``). The networks live in ``resnet.py``, ``priors.py`` and ``glow.py`` and are
imported when a factory is called, so listing plugins and checking configs does not load torch
(the pattern a third-party plugin should follow too).

Encoders and decoders: Dai & Wipf's ResNet (the paper's section 4.2). Priors: the paper's RealNVP
flow prior, N(0, I), and Dai & Wipf's second-stage VAE. Flows: the paper's Glow layer, the
identity (the plain VAE) and the standalone multi-scale Glow (the paper's baseline; not the
identity at initialisation, so it serves ``vaeflow train-baseline``, not as a VAE's pixel flow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from vaeflow_cli.hookspecs import hookimpl
from vaeflow_cli.plugin_api import Range

if TYPE_CHECKING:  # pragma: no cover
    from vaeflow_cli.hookspecs import Decoder, Encoder, Flow, Prior

ImageShape = tuple[int, int, int]
Channels = Annotated[int, Range(1, 4096)]
Depth = Annotated[int, Range(1, 8)]  # scales; 2**(depth-1) is the padding multiple
Blocks = Annotated[int, Range(1, 64)]
Width = Annotated[int, Range(1, 65536)]
Norm = Literal["batch", "group", "none"]
MinStd = Annotated[float, Range(ge=0)]  # added to every standard deviation
MeanActivation = Literal["linear", "sigmoid"]


@hookimpl
def register_encoders(register):
    register("resnet", resnet_encoder)


@hookimpl
def register_decoders(register):
    register("resnet-diagonal", resnet_diagonal_decoder)
    register("resnet-isotropic", resnet_isotropic_decoder)


@hookimpl
def register_priors(register):
    register("realnvp", realnvp_prior)
    register("gaussian", gaussian_prior)
    register("two-stage-vae", two_stage_vae_prior)


@hookimpl
def register_flows(register):
    register("glow-layer", glow_layer)
    register("conditional-glow", conditional_glow)
    register("identity", identity_flow)
    register("multiscale-glow", multiscale_glow)


# -- encoders and decoders (resnet.py) --------------------------------------------------------------
# fmt: off
# (the five ResNet keys the three factories share stay on one line each: one parameter per line
# would repeat the same seven lines three times)


def resnet_encoder(*, image_shape: ImageShape, latent_dim: int,
                   base_channels: Channels = 16, depth: Depth = 3, blocks_per_scale: Blocks = 1, fc_width: Width = 512, norm: Norm = "batch",
                   ) -> Encoder:
    """q(z|y) = N(m(y), diag s(y)^2): ``depth`` scales of ``blocks_per_scale`` residual blocks
    starting at ``base_channels`` channels (doubled per scale), then a residual fully-connected
    block of width ``fc_width``; ``norm``: BatchNorm (Dai & Wipf), GroupNorm or none."""
    from vaeflow_plugins.resnet import ResNetEncoder, Trunk

    return ResNetEncoder(image_shape, latent_dim, Trunk(base_channels, depth, blocks_per_scale, fc_width, norm))


def resnet_diagonal_decoder(*, image_shape: ImageShape, latent_dim: int,
                            base_channels: Channels = 16, depth: Depth = 3, blocks_per_scale: Blocks = 1, fc_width: Width = 512, norm: Norm = "batch",
                            min_std: MinStd = 1e-3, init_std: Annotated[float, Range(gt=0)] = 0.1, mean_activation: MeanActivation = "linear",
                            ) -> Decoder:
    """p(xbar|z) = N(g_mu(z), diag g_sigma(z)^2), a per-pixel standard deviation (the paper's
    section 3.1) that starts at ``init_std`` everywhere and never goes below ``min_std``; the
    ResNet keys mirror the encoder's."""
    from vaeflow_plugins.resnet import DiagonalDecoder, Trunk

    arch = Trunk(base_channels, depth, blocks_per_scale, fc_width, norm)
    return DiagonalDecoder(image_shape, latent_dim, arch, min_std=min_std, init_std=init_std, mean_activation=mean_activation)


def resnet_isotropic_decoder(*, image_shape: ImageShape, latent_dim: int,
                             base_channels: Channels = 16, depth: Depth = 3, blocks_per_scale: Blocks = 1, fc_width: Width = 512, norm: Norm = "batch",
                             min_std: MinStd = 1e-3, mean_activation: MeanActivation = "linear",
                             ) -> Decoder:
    """p(xbar|z) = N(g_mu(z), gamma I) with one learned scalar gamma (Dai & Wipf), 1 at the start."""
    from vaeflow_plugins.resnet import IsotropicDecoder, Trunk

    arch = Trunk(base_channels, depth, blocks_per_scale, fc_width, norm)
    return IsotropicDecoder(image_shape, latent_dim, arch, min_std=min_std, mean_activation=mean_activation)


# fmt: on
# -- priors (priors.py) -----------------------------------------------------------------------------


def realnvp_prior(*, latent_dim: int, layers: Annotated[int, Range(1, 1024)] = 16, hidden: Annotated[int, Range(1, 65536)] = 1024) -> Prior:
    """The paper's flow prior: ``layers`` RealNVP affine couplings with fully-connected conditioners
    of width ``hidden`` (paper: 16 layers of width 1024)."""
    from vaeflow_plugins.priors import RealNVPPrior

    return RealNVPPrior(latent_dim=latent_dim, layers=layers, hidden=hidden)


def gaussian_prior(*, latent_dim: int) -> Prior:
    """p(z) = N(0, I)."""
    from vaeflow_plugins.priors import GaussianPrior

    return GaussianPrior(latent_dim=latent_dim)


def two_stage_vae_prior(*, latent_dim: int, hidden: Annotated[int, Range(1, 65536)] = 1024, layers: Annotated[int, Range(1, 64)] = 3) -> Prior:
    """Dai & Wipf's second-stage VAE as p(z): N(0, I) until ``vaeflow train-prior`` trains it."""
    from vaeflow_plugins.priors import TwoStageVAEPrior

    return TwoStageVAEPrior(latent_dim=latent_dim, hidden=hidden, layers=layers)


# -- pixel-space flows (glow.py) --------------------------------------------------------------------


ConditionChannels = Annotated[int, Range(1, 4096)]
PositionalChannels = Annotated[int, Range(0, 4096)]  # 0: none (the paper's Glow)
HiddenChannels = Annotated[int, Range(1, 16384)]  # a coupling's width
Levels = Annotated[int, Range(1, 10)]  # the multi-scale Glow's scales; H and W divisible by 2**levels
Steps = Annotated[int, Range(1, 1024)]  # the multi-scale Glow's steps per level
GlowCoupling = Literal["affine", "additive"]
MinScale = Annotated[float, Range(ge=0, lt=1)]  # the affine coupling's scale floor; 0: Glow's sigmoid(raw + 2)


def glow_layer(
    *,
    image_shape: ImageShape,
    depth: Annotated[int, Range(1, 1024)] = 32,
    hidden_channels: HiddenChannels = 128,
    lu: bool = True,
    split: Literal["auto", "channel", "checkerboard", "alternate"] = "auto",
    coupling: Literal["additive", "affine"] = "additive",
    checkpointing: bool = False,
    conditional: bool = False,
    condition_channels: ConditionChannels = 8,
) -> Flow:
    """The paper's Glow layer: ``depth`` blocks of ActNorm, an invertible 1x1 convolution (LU
    parametrised with ``lu``) and a coupling of width ``hidden_channels``, additive (the paper's)
    or ``coupling = "affine"`` (a tanh-bounded log-scale as well); ``split`` "auto" splits channels
    for C >= 2 and a checkerboard for C = 1, "checkerboard" splits pixels for any C, "alternate"
    takes the checkerboard and the channel split in turn (C >= 2); ``checkpointing`` recomputes
    activations in the backward pass to save memory. ``conditional``: the couplings also read
    ``condition_channels`` feature maps of the decoder's (g_mu, log g_sigma) (a conditional flow).
    The identity at initialisation."""
    from vaeflow_plugins.glow import GlowLayer

    return GlowLayer(
        image_shape=image_shape,
        depth=depth,
        hidden_channels=hidden_channels,
        lu=lu,
        split=split,
        checkpointing=checkpointing,
        coupling=coupling,
        conditional=conditional,
        condition_channels=condition_channels,
    )


def conditional_glow(
    *,
    image_shape: ImageShape,
    levels: Levels = 3,
    steps: Steps = 8,
    hidden_channels: HiddenChannels = 64,
    coupling: GlowCoupling = "affine",
    lu: bool = True,
    condition_channels: ConditionChannels = 8,
    condition_couplings: bool = True,
    positional_channels: PositionalChannels = 0,
    min_scale: MinScale = 0.0,
) -> Flow:
    """vaeflow's conditional flow decoder: f(x; c) = g_mu + g_sigma * G(x; c), with G a
    multi-scale Glow (``levels`` levels of ``steps`` steps of width ``hidden_channels``, squeeze
    and split, data-dependent ActNorm, as the standalone ``multiscale-glow``) whose split and top
    priors read ``condition_channels`` feature maps of the decoder's (g_mu, log g_sigma) at each
    level's resolution, and so do its couplings unless ``condition_couplings = false`` (then only
    the priors read the condition: cheaper steps). ``positional_channels`` P > 0: P learned
    positional maps are stacked on (g_mu, log g_sigma) before each level's projection, as the
    standalone Glow's ``positional_channels``; 0 reads the decoder alone. ``min_scale`` m > 0
    (affine coupling only): each coupling's scale is m + (1 - m) sigmoid(raw + 2), a floor that
    bounds its inverse (0 is Glow's scale, whose inverse can diverge when sampling). Not the
    identity at initialisation: phase 2 starts from its own. Needs H and W divisible by
    2**levels."""
    from vaeflow_plugins.multiscale import MultiScaleGlow

    return MultiScaleGlow(
        image_shape=image_shape,
        levels=levels,
        steps=steps,
        hidden_channels=hidden_channels,
        coupling=coupling,
        lu=lu,
        conditional=True,
        condition_channels=condition_channels,
        condition_couplings=condition_couplings,
        positional_channels=positional_channels,
        min_scale=min_scale,
    )


conditional_glow.test_kwargs = {"levels": 2, "steps": 2, "hidden_channels": 8, "condition_channels": 3}  # fits the suite's 4x4 images


def identity_flow(*, image_shape: ImageShape) -> Flow:
    """f = identity: the plain VAE with no Glow layer."""
    from vaeflow_plugins.glow import IdentityFlow

    return IdentityFlow(image_shape=image_shape)


def multiscale_glow(
    *,
    image_shape: ImageShape,
    levels: Levels = 3,
    steps: Steps = 32,
    hidden_channels: HiddenChannels = 512,
    coupling: GlowCoupling = "affine",
    lu: bool = True,
    positional_channels: PositionalChannels = 0,
    min_scale: MinScale = 0.0,
) -> Flow:
    """The standalone Glow of Kingma & Dhariwal (the paper's baseline; ``vaeflow train-baseline``):
    ``levels`` levels of ``steps`` steps with learned split and top priors folded into the
    bijection; needs H and W divisible by 2**levels. Not the identity at initialisation.
    ``positional_channels`` P > 0: its couplings and split and top priors also read P learned
    positional maps per level (the conditional flow decoder's condition path with a learned
    constant in place of the decoder's output); 0 is the paper's Glow. ``min_scale`` m > 0 (affine
    coupling only): each coupling's scale is m + (1 - m) sigmoid(raw + 2), a floor that bounds its
    inverse; 0 is Glow's scale."""
    from vaeflow_plugins.multiscale import MultiScaleGlow

    return MultiScaleGlow(
        image_shape=image_shape,
        levels=levels,
        steps=steps,
        hidden_channels=hidden_channels,
        coupling=coupling,
        lu=lu,
        positional_channels=positional_channels,
        min_scale=min_scale,
    )


multiscale_glow.test_kwargs = {"levels": 2, "steps": 2, "hidden_channels": 8}  # fits the component suite's 4x4 images
