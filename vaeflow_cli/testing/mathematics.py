"""The mathematical checks: bijections and their log-determinants against autograd Jacobians (in
float64), the change-of-variables formula of a prior, and the output contract of a flow."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from vaeflow_cli.testing._helpers import LOG_2PI, _expect, _pair


def _log_det_by_autograd(fn: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor) -> float:
    """log|det d fn / d v| at ``point`` (flattened, float64) by autograd's full Jacobian."""
    jac = torch.autograd.functional.jacobian(fn, point)  # (D, D)
    sign, value = torch.linalg.slogdet(jac)
    assert sign.item() != 0, "the Jacobian is singular: the map is not a bijection there"
    return value.item()


def check_bijection(flow: nn.Module, x: torch.Tensor, *, inverse_atol: float = 1e-5, log_det_atol: float = 1e-4, jacobian_samples: int = 2) -> None:
    """Assert that ``flow`` inverts on ``x`` (B, ...) and that both of its log-dets match autograd.

    ``flow(x) -> (y, log|det dy/dx|)`` and ``flow.inverse(y) -> (x, log|det dx/dy|)``, log-dets of
    shape (B,) in nats. Checked: shapes; ``max |inverse(forward(x)) - x| <= inverse_atol`` (in the
    module's own precision, float32); for the first ``jacobian_samples`` items, the forward log-det
    at x_i and the inverse log-det at y_i = f(x_i) each equal ``log|det J|`` of autograd's Jacobian
    of that direction (on a float64 copy, so the formula is tested rather than rounding), to
    ``log_det_atol`` relative to max(1, |value|); and forward + inverse log-dets cancel on every
    item. The module is put in eval() mode. Raises AssertionError."""
    flow = flow.eval()
    with torch.no_grad():
        y, log_det = _pair(flow(x), "forward")
        x_back, log_det_inv = _pair(flow.inverse(y), "inverse")
    assert y.shape == x.shape, f"forward changed the shape {tuple(x.shape)} -> {tuple(y.shape)}"
    assert log_det.shape == (x.shape[0],), f"log_det must have shape (B,) = ({x.shape[0]},), got {tuple(log_det.shape)}"
    assert log_det_inv.shape == (x.shape[0],), f"inverse log_det must have shape (B,), got {tuple(log_det_inv.shape)}"
    err = (x_back - x).abs().max().item()
    assert err <= inverse_atol, f"inverse(forward(x)) differs from x by {err:.3g} > {inverse_atol}"

    flow64 = copy.deepcopy(flow).double()
    shape = x.shape[1:]

    def fwd(v):
        return flow64(v.reshape(1, *shape))[0].reshape(-1)

    def inv(v):
        return flow64.inverse(v.reshape(1, *shape))[0].reshape(-1)

    for i in range(min(jacobian_samples, x.shape[0])):
        xi = x[i].double().reshape(-1)
        expected = _log_det_by_autograd(fwd, xi)
        with torch.no_grad():
            yi = flow64(xi.reshape(1, *shape))[0]
            got = flow64(xi.reshape(1, *shape))[1][0].item()
        assert abs(got - expected) <= log_det_atol * max(1.0, abs(expected)), (
            f"forward log_det {got:.6f} differs from log|det J| = {expected:.6f} computed by autograd (item {i})"
        )
        expected_inv = _log_det_by_autograd(inv, yi.reshape(-1))
        with torch.no_grad():
            got_inv = flow64.inverse(yi)[1][0].item()
        assert abs(got_inv - expected_inv) <= log_det_atol * max(1.0, abs(expected_inv)), (
            f"inverse log_det {got_inv:.6f} differs from log|det J| of the inverse = {expected_inv:.6f} computed by autograd "
            f"at y = forward(x) (item {i})"
        )
    gap = (log_det + log_det_inv).abs().max().item()
    assert gap <= log_det_atol * max(1.0, log_det.abs().max().item()), f"inverse log_det is not -forward log_det (gap {gap:.3g})"


def check_log_prob_change_of_variables(prior: nn.Module, z: torch.Tensor, *, atol: float = 1e-4, samples: int = 2) -> None:
    """Assert that a bijective prior's ``log_prob(z)`` (B,) equals the change of variables
    ``log N(h(z); 0, I) + log|det dh/dz|`` for h = ``prior.forward``, with the Gaussian term
    written out here and the log-determinant from autograd's Jacobian (float64 copy), for the first
    ``samples`` rows of ``z`` (B, d), to ``atol`` relative to max(1, |value|). Nats. The module
    is put in eval() mode. Raises AssertionError."""
    prior64 = copy.deepcopy(prior).eval().double()
    d = z.shape[1]
    for i in range(min(samples, z.shape[0])):
        zi = z[i].double()
        log_det = _log_det_by_autograd(lambda v: prior64(v.reshape(1, d))[0].reshape(-1), zi)
        with torch.no_grad():
            u = prior64(zi.reshape(1, d))[0].reshape(-1)
            got = prior64.log_prob(zi.reshape(1, d))[0].item()
        expected = (-0.5 * (u * u).sum() - 0.5 * d * LOG_2PI).item() + log_det
        assert abs(got - expected) <= atol * max(1.0, abs(expected)), (
            f"log_prob(z) = {got:.6f} but log N(h(z); 0, I) + log|det dh/dz| = {expected:.6f} (Jacobian by autograd, row {i}): "
            f"log_prob is not the density of h^-1(u), u ~ N(0, I)"
        )


def check_flow_outputs(flow: nn.Module, x: torch.Tensor) -> None:
    """The ``Flow`` protocol's contract on ``x`` (B, C, H, W): forward and inverse each return a
    pair, a finite float32 tensor of x's shape and a finite float32 log-det of shape (B,).
    Runs without gradients in the module's current mode. Raises AssertionError."""
    from vaeflow_cli.hookspecs import Flow

    assert isinstance(flow, Flow), f"a flow must have __call__ and inverse (vaeflow_cli.hookspecs.Flow); {type(flow).__name__} has no inverse"
    b = x.shape[0]
    with torch.no_grad():
        y, ld = _pair(flow(x), "forward")
        _expect(y, x.shape, "forward's output")
        _expect(ld, (b,), "forward's log_det")
        xb, ldi = _pair(flow.inverse(y), "inverse")
        _expect(xb, x.shape, "inverse's output")
        _expect(ldi, (b,), "inverse's log_det")
