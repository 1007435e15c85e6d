"""The hooks through which plugins (built-in and third-party) register components.

Each hook is handed a ``register`` callback and calls it once per component:
``register(name, factory)``. ``factory`` is a class or function taking keyword-only arguments;
its keyword arguments ARE the component's config keys (``[model.encoder]`` etc. in TOML), and
their defaults give the types that config values are checked against.

The host owns the registry, so a name registered twice is reported with both plugins' names.
What each kind of factory receives besides its config keys, and what it must return:

- encoder:  ``factory(*, image_shape, latent_dim, **cfg)`` -> ``nn.Module``; ``forward(y)`` returns
  ``(mean, log_std)`` of q(z|y), each (B, latent_dim).
- decoder:  ``factory(*, image_shape, latent_dim, **cfg)`` -> ``nn.Module``; ``forward(z)`` returns
  ``(mean, std)`` of the Gaussian p(xbar|z), each (B, C, H, W).
- prior:    ``factory(*, latent_dim, **cfg)`` -> ``nn.Module`` with ``log_prob(z)`` (B,) and
  ``from_base(u)`` mapping u ~ N(0, I) to z. A prior that is a bijection h: z -> u also has
  ``forward(z) -> (u, log_det)`` and ``inverse(u) -> (z, log_det)`` and is checked as a flow.
- flow:     ``factory(*, image_shape, **cfg)`` -> ``nn.Module`` bijection f on images with
  ``forward(x) -> (y, log_det)`` and ``inverse(y) -> (x, log_det)``, log_det of shape (B,).
  It must be the identity at initialisation (phase 2 then starts at the phase-1 bound).
- dataset:  ``factory(*, root, **cfg)`` -> object with ``image_shape`` (C, H, W) and
  ``split(name) -> numpy uint8 array (N, C, H, W)`` for ``name`` in ``splits``.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("vaeflow")
hookimpl = pluggy.HookimplMarker("vaeflow")

Register = Callable[..., None]
"""``register(name: str, factory: Callable[..., Any]) -> None``"""


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders q(z|y): ``register(name, factory)``."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register Gaussian decoders p(xbar|z): ``register(name, factory)``."""


@hookspec
def register_priors(register: Register) -> None:
    """Register latent priors p(z): ``register(name, factory)``."""


@hookspec
def register_flows(register: Register) -> None:
    """Register pixel-space bijections (the Glow layer f): ``register(name, factory)``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register image datasets selected by ``[data] name``: ``register(name, factory)``."""
