"""Checks for component authors (and vaeflow's own test suite).

A flow (``forward(x) -> (y, log_det)``, ``inverse(y) -> (x, log_det)``) must invert to 1e-5 and
report the log-determinant that ``torch.autograd.functional.jacobian`` finds. Use it from pytest::

    from vaeflow_cli.testing import check_flow_component
    def test_my_flow():
        check_flow_component(MyFlow)            # a factory, as registered

Parameters are perturbed away from their initial values first, so that a flow that starts as the
identity is checked as a general bijection.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def perturb(module: nn.Module, *, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add noise to every floating-point parameter, in place: N(0, scale^2 / fan_in) for weight
    matrices and kernels (so every layer's output moves by about ``scale``), N(0, scale^2) for
    vectors and scalars."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                fan_in = p[0].numel() if p.dim() >= 2 else 1
                p.add_(scale / fan_in**0.5 * torch.randn(p.shape, generator=g).to(p))
    return module


def check_bijection(flow: nn.Module, x: torch.Tensor, *, inverse_atol: float = 1e-5, log_det_atol: float = 1e-4,
                    jacobian_samples: int = 2) -> None:
    """Assert that ``flow`` inverts on ``x`` (B, ...) and that its log-dets match autograd's Jacobian.

    The round trip runs in the module's own precision (float32); the Jacobian comparison runs on a
    float64 copy, so it tests the formula rather than rounding.
    """
    flow = flow.eval()
    with torch.no_grad():
        y, log_det = flow(x)
        x_back, log_det_inv = flow.inverse(y)
    assert y.shape == x.shape, f"forward changed the shape {tuple(x.shape)} -> {tuple(y.shape)}"
    assert log_det.shape == (x.shape[0],), f"log_det must have shape (B,) = ({x.shape[0]},), got {tuple(log_det.shape)}"
    assert log_det_inv.shape == (x.shape[0],), f"inverse log_det must have shape (B,), got {tuple(log_det_inv.shape)}"
    err = (x_back - x).abs().max().item()
    assert err <= inverse_atol, f"inverse(forward(x)) differs from x by {err:.3g} > {inverse_atol}"
    gap = (log_det + log_det_inv).abs().max().item()
    assert gap <= log_det_atol * max(1.0, log_det.abs().max().item()), f"inverse log_det is not -forward log_det (gap {gap:.3g})"

    flow64 = copy.deepcopy(flow).double()
    shape = x.shape[1:]
    for i in range(min(jacobian_samples, x.shape[0])):
        xi = x[i].double().reshape(-1)

        def f(v, flow64=flow64, shape=shape):
            return flow64(v.reshape(1, *shape))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi)  # (D, D)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign.item() != 0, "the Jacobian is singular"
        with torch.no_grad():
            got = flow64(xi.reshape(1, *shape))[1][0].item()
        assert abs(got - expected.item()) <= log_det_atol * max(1.0, abs(expected.item())), (
            f"log_det {got:.6f} differs from log|det J| = {expected.item():.6f} computed by autograd"
        )


def check_flow_component(factory, *, image_shape=(3, 4, 4), batch: int = 3, seed: int = 0, **kwargs) -> None:
    """Build a registered flow factory on a small image shape, perturb it, and check it. A factory
    whose defaults are too big for small images (a multi-scale flow, say) may carry a dict
    ``test_kwargs`` of settings that fit them; explicit ``kwargs`` override it."""
    torch.manual_seed(seed)
    kwargs = {**getattr(factory, "test_kwargs", {}), **kwargs}
    flow = perturb(factory(image_shape=tuple(image_shape), **kwargs), seed=seed)
    x = 0.5 * torch.randn(batch, *image_shape, generator=torch.Generator().manual_seed(seed))
    check_bijection(flow, x)


def check_prior_component(factory, *, latent_dim: int = 5, batch: int = 4, seed: int = 0, **kwargs) -> None:
    """Build a registered prior; check ``log_prob`` is finite, and when it is a bijection h (has
    ``inverse``) that h inverts, its log-det matches autograd, and ``from_base`` is h^-1."""
    torch.manual_seed(seed)
    prior = perturb(factory(latent_dim=latent_dim, **kwargs), seed=seed).eval()
    z = torch.randn(batch, latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        lp = prior.log_prob(z)
        assert lp.shape == (batch,) and torch.isfinite(lp).all(), f"log_prob must be finite with shape (B,), got {lp}"
        u = torch.randn(batch, latent_dim, generator=torch.Generator().manual_seed(seed + 1))
        zs = prior.from_base(u)
        assert zs.shape == (batch, latent_dim), f"from_base must return (B, latent_dim), got {tuple(zs.shape)}"
    if hasattr(prior, "inverse"):
        check_bijection(prior, z)
        with torch.no_grad():
            assert torch.allclose(prior(zs)[0], u, atol=1e-5), "from_base(u) is not h^-1(u)"
