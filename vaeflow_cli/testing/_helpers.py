"""Helpers the checks share: perturbation, seeded calls, small tensors, messages."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)

MODE_DEPENDENT_LAYERS: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm*
    nn.modules.instancenorm._InstanceNorm,  # only with track_running_stats=True (see mode_dependent_layers)
    nn.modules.dropout._DropoutNd,  # Dropout*, AlphaDropout, FeatureAlphaDropout
)
"""Layer types whose output depends on train()/eval() by design; a component holding one is exempt
from ``check_modes_agree`` unless the caller says otherwise."""

Outputs = Callable[[nn.Module], Mapping[str, torch.Tensor]]


def perturb(module: nn.Module, *, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add noise to every floating-point parameter, in place: N(0, scale^2 / fan_in) for weight
    matrices and kernels (so every layer's output moves by about ``scale``), N(0, scale^2) for
    vectors and scalars. Buffers are left alone. Returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                fan_in = p[0].numel() if p.dim() >= 2 else 1
                p.add_(scale / fan_in**0.5 * torch.randn(p.shape, generator=g).to(p))
    return module


def mode_dependent_layers(module: nn.Module) -> list[str]:
    """Names (as in ``named_modules``; "" for ``module`` itself) of the submodules whose output
    depends on train()/eval() by design (``MODE_DEPENDENT_LAYERS``; an InstanceNorm only when it
    tracks running statistics)."""
    found = []
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
            continue
        if isinstance(m, MODE_DEPENDENT_LAYERS):
            found.append(name)
    return found


def _seeded(fn: Callable[[], Any], seed: int) -> Any:
    """``fn()`` with the global CPU RNG seeded to ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _randn(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _rand(shape, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def _kwargs(factory, kwargs: Mapping[str, Any]) -> dict:
    """The factory's ``test_kwargs`` overridden by ``kwargs``, checked against the constraints its
    signature declares (as a config would be): AssertionError naming the first one broken."""
    from vaeflow_cli.config.constraints import declared_constraints, problem

    assert callable(factory), f"a component factory must be callable, not {type(factory).__name__}"
    out = {**dict(getattr(factory, "test_kwargs", {}) or {}), **kwargs}
    declared = declared_constraints(factory)
    for key, value in out.items():
        found = problem(value, declared.get(key, []))
        assert found is None, f"{key}={value!r} {found} (declared by {getattr(factory, '__name__', factory)!r})"
    return out


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    d = (a.double() - b.double()).abs()
    d = torch.where(torch.isnan(a) & torch.isnan(b), torch.zeros_like(d), d)
    return d.max().item() if d.numel() else 0.0


def _weighted_sum(outputs: Mapping[str, torch.Tensor], keys: Iterable[str], seed: int) -> torch.Tensor:
    """sum_k <w_k, outputs[k]> with fixed random weights w_k: a scalar that depends on every entry,
    with no structural cancellation (a plain sum of a volume-preserving map's outputs could hide one)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, k in enumerate(keys):
        t = outputs[k]
        total = total + (_randn(t.shape, seed + 101 * (i + 1)).to(t.device, torch.float64) * t.double()).sum()
    return total


def _expect(t, shape, what: str, *, positive: bool = False) -> None:
    """t is a finite float32 tensor of ``shape`` (and > 0 with ``positive``), else AssertionError."""
    assert isinstance(t, torch.Tensor), f"{what} must be a torch.Tensor, got {type(t).__name__}"
    assert tuple(t.shape) == tuple(shape), f"{what} must have shape {tuple(shape)} (vaeflow_cli.hookspecs), got {tuple(t.shape)}"
    assert t.dtype == torch.float32, f"{what} must be torch.float32 outside autocast (vaeflow_cli.hookspecs), got {t.dtype}"
    assert bool(torch.isfinite(t).all()), f"{what} has non-finite values (NaN or inf)"
    if positive:
        assert bool((t > 0).all()), f"{what} must be > 0, its minimum is {t.min().item():.3g}"


def _pair(out, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(out, (tuple, list)) and len(out) == 2, f"{what} must return a pair of tensors (vaeflow_cli.hookspecs), got {type(out).__name__}"
    return out[0], out[1]
