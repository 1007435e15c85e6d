"""The plugin contract: the hooks through which plugins register components, and what each kind
of component must be.

Each hook is handed a ``register`` callback and calls it once per component:
``register(name, factory)``. ``factory`` is a class or function taking keyword-only arguments; its
keyword arguments ARE the component's config keys (``[model.encoder]`` etc. in TOML), their
defaults give the types that config values are checked against, and ``Annotated[...,
Range(...)]`` / ``Literal[...]`` annotations declare their allowed values (``vaeflow_cli.plugin_api``).
Besides its config keys a factory receives the context arguments named in its kind's
``...Factory`` protocol below, and returns an object satisfying the kind's component protocol.

The host owns the registry, so a name registered twice is reported with both plugins' names.
vaeflow runs every model component once on real training images before training starts and
checks the shapes below, and that a VAE's pixel flow is the identity at initialisation
(``vaeflow_cli.model.contracts.check_components``). ``vaeflow_cli.testing`` is the kit a plugin author runs
in their own tests: ``check_flow_component``, ``check_encoder``, ``check_decoder``,
``check_prior``, ``check_dataset``.

Conventions for every protocol: tensors are ``torch.float32`` unless autocast is on; ``B`` is the
batch size; images are ``(B, C, H, W)``; log-densities and log-determinants are in nats, one per
batch element, shape ``(B,)``. The mathematics is in ``docs/model.md``.

This module imports neither torch nor numpy at run time, so that registering plugins is cheap
(``vaeflow plugins`` does not load torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; no torch at import time
    import numpy as np
    import torch

__all__ = [
    "hookspec",
    "hookimpl",
    "Register",
    "Encoder",
    "Decoder",
    "Prior",
    "BijectivePrior",
    "Flow",
    "ConditionalFlow",
    "Dataset",
    "MetricsLogger",
    "EncoderFactory",
    "DecoderFactory",
    "PriorFactory",
    "FlowFactory",
    "DatasetFactory",
    "LoggerFactory",
    "register_encoders",
    "register_decoders",
    "register_priors",
    "register_flows",
    "register_datasets",
    "register_loggers",
]

hookspec = pluggy.HookspecMarker("vaeflow")
hookimpl = pluggy.HookimplMarker("vaeflow")


class Register(Protocol):
    """The callback each ``register_*`` hook receives."""

    def __call__(self, name: str, factory: Callable[..., Any]) -> None:
        """:param name: the component's name, the ``type`` (or ``[data] name``) a config selects it by;
        unique across all plugins.
        :param factory: a class or function; keyword-only arguments (the config keys plus the kind's
        context arguments) and a return value satisfying the kind's protocol."""


# -- component protocols (what a factory returns) ----------------------------------------------


@runtime_checkable
class Encoder(Protocol):
    """The amortised posterior q(z|y) = N(mean, diag(exp(log_std))^2) (paper, section 2.1)."""

    def __call__(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:param y: dequantized images in [0, 1), (B, C, H, W).
        :returns: ``(mean, log_std)``, each (B, latent_dim); ``log_std`` is the natural log of the
        standard deviation."""


@runtime_checkable
class Decoder(Protocol):
    """The diagonal Gaussian p(xbar|z) = N(mean, diag(std)^2), the base distribution of the pixel
    flow (paper, equation 3)."""

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:param z: latents, (B, latent_dim).
        :returns: ``(mean, std)`` in the flow's output space (after the pixel transform), each
        (B, C, H, W); ``std > 0``."""


@runtime_checkable
class Prior(Protocol):
    """The latent prior p(z) (a learned flow prior in the paper, section 3.2).

    Optional: a method ``start_own_training()`` (no arguments, returns None), which vaeflow calls
    when a phase that trains the prior on its own starts (``vaeflow train-prior``), before its first
    step; a prior whose density changes from then on (a two-stage VAE's second stage) switches there
    and keeps the switch in its state dict."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:param z: latents, (B, latent_dim). :returns: log p(z) in nats, (B,)."""

    def from_base(self, u: torch.Tensor) -> torch.Tensor:
        """:param u: draws from N(0, I), (B, latent_dim). :returns: z, (B, latent_dim), distributed
        as p(z) (the sampling path; temperature scales ``u`` upstream)."""


@runtime_checkable
class BijectivePrior(Prior, Protocol):
    """A prior that is a bijection h: z -> u with u ~ N(0, I); checked as a flow by the kit."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:returns: ``(u, log|det du/dz|)``, shapes (B, latent_dim) and (B,)."""

    def inverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:returns: ``(z, log|det dz/du|)``, shapes (B, latent_dim) and (B,)."""


@runtime_checkable
class Flow(Protocol):
    """A bijection f on images (the paper's Glow layer, section 3.1): xbar = f(x).

    Identity at initialisation: a flow used as a VAE's pixel flow must satisfy f(x) = x and
    log_det = 0 before training, so that phase 2 starts at the phase-1 bound (``docs/model.md``,
    "Decided here"). vaeflow checks this on two real training images when ``train-vae`` starts and
    when phase 2 starts with a fresh flow (not when it resumes): in eval mode and in a first
    train-mode pass on a copy, where data-dependent initialisation happens. A flow that breaks it
    is refused with one line naming ``[model.flow]``. Check it in your tests with
    ``vaeflow_cli.testing.check_flow_component(factory, pixel_flow=True)``. A flow meant only as a
    standalone density (``train-baseline``) need not satisfy it, and neither does a flow that
    declares a false attribute ``identity_at_init`` (a flow decoder with its own data-dependent
    initialisation, such as the built-in ``conditional-glow``: its phase 2 starts from that
    initialisation instead of the phase-1 bound)."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:param x: images in the pixel transform's space, (B, C, H, W).
        :returns: ``(xbar, log|det dxbar/dx|)``, shapes (B, C, H, W) and (B,)."""

    def inverse(self, xbar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:returns: ``(x, log|det dx/dxbar|)``, shapes (B, C, H, W) and (B,); inverts ``__call__``."""


@runtime_checkable
class ConditionalFlow(Protocol):
    """A bijection f(.; c) on images for every condition c, where c is the decoder's base
    distribution for the same latent: ``condition = (mean, std)`` = (g_mu(z), g_sigma(z)), each
    (B, C, H, W) with ``std > 0`` (vaeflow's conditional flow decoder; docs/model.md, "The
    conditional flow decoder"). The model's density is then
    log p(x|z) = log N(f(x; c); g_mu(z), g_sigma(z)^2) + log|det df/dx|, exact for every z, and
    sampling is x = f^-1(g_mu + T g_sigma eps; c).

    A conditional flow declares itself with a true attribute ``conditional`` (vaeflow reads it
    once, when the model is built); everything the ``Flow`` protocol says holds for each fixed
    condition: shapes, log-dets, the identity at initialisation for every condition (so phase 2
    starts at the phase-1 bound) unless it declares ``identity_at_init = False`` (the built-in
    ``conditional-glow`` does: its ActNorm initialises from the data). Check it with
    ``vaeflow_cli.testing.check_flow_component(factory, pixel_flow=True)``, which detects the
    attribute and runs ``check_conditional_flow``: every flow check at fixed conditions, and that
    the output depends on the condition."""

    conditional: bool
    """True: forward and inverse take the condition."""

    def __call__(self, x: torch.Tensor, condition: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:param x: images in the pixel transform's space, (B, C, H, W).
        :param condition: ``(mean, std)`` of the decoder for these images' latents, each (B, C, H, W).
        :returns: ``(xbar, log|det dxbar/dx|)``, shapes (B, C, H, W) and (B,)."""

    def inverse(self, xbar: torch.Tensor, condition: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:returns: ``(x, log|det dx/dxbar|)``, shapes (B, C, H, W) and (B,); inverts ``__call__``
        for the same condition."""


@runtime_checkable
class Dataset(Protocol):
    """An image dataset with named splits.

    A dataset made of image files may also have ``file_decoding() -> dict``: the ``crop``,
    ``size`` and ``max_pixels`` with which it passes its files to
    ``plugin_api.decode_with_fallback``. Commands that take a user's image files for a run
    (``interpolate --from/--to``) then decode them the same way; without it, those files must
    already be the model's size."""

    image_shape: tuple[int, int, int]
    """(C, H, W), C in {1, 3}."""
    splits: Sequence[str]
    """The split names this dataset has, e.g. ``("train", "test")``."""

    def split(self, name: str) -> np.ndarray:
        """:param name: one of ``splits``. :returns: uint8 images, (N, C, H, W), values 0..255.
        :raises vaeflow_cli.plugin_api.VaeflowError: missing or corrupt files (one line: what,
        where, how to fix)."""


@runtime_checkable
class MetricsLogger(Protocol):
    """An experiment tracker fed the records of ``metrics.jsonl``, one per epoch, and every
    ``[run] log_every`` optimizer steps a step record (on the main process only).

    Optional: a method ``log_image(name, image, *, step)`` (returns None), which vaeflow calls at
    each epoch's end with the epoch's sample grid (the PNG it writes to RUN/samples/): ``name`` is
    ``"<phase>/samples"``, ``image`` a uint8 numpy array (H, W, C), C 1 or 3, ``step`` the global
    optimizer step of that epoch's record. A logger without it receives the records alone. It is
    guarded as ``log`` is: one that raises is one warning, and the logger is off for the phase."""

    def log(self, record: Mapping[str, Any]) -> None:
        """:param record: an epoch record, as written to ``metrics.jsonl``: ``phase`` (str),
        ``epoch`` (int), ``step`` (int, the global optimizer step) and numeric values such as
        ``train_bpd`` / ``test_bpd`` (bits/dim); or a step record: ``phase``, ``step`` and
        ``train_bpd_step``, the mean training loss (bits/dim) of the steps since the previous step
        record (under torchrun, of rank 0's batches)."""

    def close(self) -> None:
        """Flush and release; called once at the end of a phase, also when it stops early."""


# -- factory protocols (what is registered) ------------------------------------------------------


class EncoderFactory(Protocol):
    def __call__(self, *, image_shape: tuple[int, int, int], latent_dim: int, **config: Any) -> Encoder: ...


class DecoderFactory(Protocol):
    def __call__(self, *, image_shape: tuple[int, int, int], latent_dim: int, **config: Any) -> Decoder: ...


class PriorFactory(Protocol):
    def __call__(self, *, latent_dim: int, **config: Any) -> Prior: ...


class FlowFactory(Protocol):
    def __call__(self, *, image_shape: tuple[int, int, int], **config: Any) -> Flow: ...


class DatasetFactory(Protocol):
    def __call__(self, *, root: str, **config: Any) -> Dataset: ...


class LoggerFactory(Protocol):
    def __call__(self, *, run_dir: str, phase: str, config: Mapping[str, Any]) -> MetricsLogger: ...


# -- the hooks ------------------------------------------------------------------------------------


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders q(z|y).

    :param register: call ``register(name, factory)`` once per encoder; ``factory`` is an
        ``EncoderFactory`` returning an ``Encoder``."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register Gaussian decoders p(xbar|z): the base distribution of the pixel flow.

    :param register: call ``register(name, factory)`` once per decoder; ``factory`` is a
        ``DecoderFactory`` returning a ``Decoder`` whose standard deviations are positive.
    :returns: nothing; components go through ``register``."""


@hookspec
def register_priors(register: Register) -> None:
    """Register latent priors p(z), selected by ``[model.prior] type``.

    :param register: call ``register(name, factory)`` once per prior; ``factory`` is a
        ``PriorFactory`` returning a ``Prior``. A prior that is a bijection to N(0, I) should
        also satisfy ``BijectivePrior``: the check kit then tests it as a flow."""


@hookspec
def register_flows(register: Register) -> None:
    """Register pixel-space bijections (the Glow layer f), selected by ``[model.flow] type``.

    :param register: call ``register(name, factory)`` once per flow; ``factory`` is a ``FlowFactory``
        returning a ``Flow`` (the identity at initialisation, unless it is meant only for
        ``vaeflow train-baseline``) or a ``ConditionalFlow`` (a flow decoder that also reads the
        decoder's base distribution)."""


@hookspec
def register_datasets(register: Register) -> None:
    """:param register: call ``register(name, factory)`` once per image dataset (selected by
    ``[data] name``); ``factory`` is a ``DatasetFactory`` returning a ``Dataset``."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register experiment trackers, selected by ``[run] loggers = ["name", ...]``.

    :param register: call ``register(name, factory)`` once per logger; ``factory`` is a
        ``LoggerFactory`` returning a ``MetricsLogger``.

    Import heavy libraries (wandb, mlflow) inside the factory, not at module level."""
