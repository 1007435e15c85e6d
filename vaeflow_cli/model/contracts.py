"""The components' contract (``vaeflow_cli.hookspecs``), checked where vaeflow meets a component:
at the start of training (``check_components``, on real images) and in the plugin author's kit
(``vaeflow_cli.testing``, on synthetic ones). Each check has one implementation and one tolerance,
here; the two callers only phrase the failure for their reader (a one-line VaeflowError naming the
config section, an AssertionError naming the test step).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from vaeflow_cli.model.flows import WithCondition
from vaeflow_cli.model.vaeflow import FlowModel

IDENTITY_RTOL = 1e-5
"""Allowed max |f(x) - x| / (1 + |x|) of a fresh pixel flow, forward and inverse. An identity built
from zeros, ones and eyes is exact in float32; the check runs with TF32 off (``exact_float32``),
so a GPU's 11-bit TF32 rounding is not mistaken for a flow that moves its input."""
IDENTITY_LOG_DET_ATOL = 1e-4
"""Allowed max |log det df/dx| of a fresh pixel flow, in nats per image (1e-4 nats is below 2e-7
bits/dim at 28x28)."""

IDENTITY_STAGES = {
    "fresh": "fresh, eval() mode",
    "train": "first forward pass in train() mode, where data-dependent initialisation happens",
    "after": "eval() mode after the first training forward pass",
}
"""The three states in which a pixel flow must be the identity (``identity_failure``)."""


@dataclass(frozen=True)
class IdentityFailure:
    """Where a pixel flow stopped being the identity: ``stage`` (a key of IDENTITY_STAGES),
    ``direction`` ("forward" or "inverse"), the largest relative deviation ``err`` and the largest
    |log det| ``log_det`` (nats per image) there, or ``shape`` when the output's shape was wrong."""

    stage: str
    direction: str
    err: float = 0.0
    log_det: float = 0.0
    shape: tuple | None = None

    def measured(self) -> str:
        """The numbers against the tolerances, for an error message."""
        if self.shape is not None:
            return f"{self.direction} returned shape {self.shape}"
        name = "f^-1(x)" if self.direction == "inverse" else "f(x)"
        return (
            f"max |{name} - x| / (1 + |x|) = {self.err:.3g} (allowed {IDENTITY_RTOL:g}) and max |log det| = "
            f"{self.log_det:.3g} nats (allowed {IDENTITY_LOG_DET_ATOL:g})"
        )


@contextlib.contextmanager
def exact_float32():
    """TF32 off for CUDA matmuls and convolutions inside the block (restored after), so float32
    results are float32-exact where the arithmetic is."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def identity_failure(flow: nn.Module, x: torch.Tensor, x_after: torch.Tensor | None = None, *, on_copy: bool = True) -> IdentityFailure | None:
    """The ``Flow`` protocol's identity at initialisation (docs/model.md, "Decided here": phase 2
    starts at the phase-1 bound): a fresh pixel flow maps ``x`` (B, C, H, W), in its input space, to
    itself with log det 0, forward and inverse,

    1. ``fresh``: in eval() mode;
    2. ``train``: in its first forward pass in train() mode (data-dependent initialisation);
    3. ``after``: in eval() mode after that pass, on ``x_after`` (default ``x``).

    Within IDENTITY_RTOL and IDENTITY_LOG_DET_ATOL, without gradients, with TF32 off and the RNG
    streams forked (a flow that draws noise does not shift the caller's). ``on_copy``: stages 2
    and 3 run on a deep copy, so the flow itself stays fresh; a flow that cannot be copied is then
    checked in stage 1 only. Exceptions the flow raises propagate. Returns the first failure, or
    None when the flow is the identity in all three."""
    x_after = x if x_after is None else x_after
    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.device.type == "cuda" else []

    def failure(f: nn.Module, inputs: torch.Tensor, stage: str, direction: str) -> IdentityFailure | None:
        out = f(inputs) if direction == "forward" else f.inverse(inputs)
        y, log_det = out if isinstance(out, (tuple, list)) and len(out) == 2 else (out, None)
        if not (isinstance(y, torch.Tensor) and tuple(y.shape) == tuple(inputs.shape) and isinstance(log_det, torch.Tensor)):
            return IdentityFailure(stage, direction, shape=tuple(y.shape) if isinstance(y, torch.Tensor) else (type(out).__name__,))
        err = ((y.double() - inputs.double()).abs() / (1 + inputs.double().abs())).max().item()
        ld = log_det.double().abs().max().item()
        return None if err <= IDENTITY_RTOL and ld <= IDENTITY_LOG_DET_ATOL else IdentityFailure(stage, direction, err, ld)

    was_training = flow.training
    with torch.no_grad(), exact_float32(), torch.random.fork_rng(devices=devices):
        try:
            flow.eval()
            for direction in ("forward", "inverse"):
                found = failure(flow, x, "fresh", direction)
                if found:
                    return found
            if on_copy:
                try:
                    probe = copy.deepcopy(flow)
                except Exception:  # noqa: BLE001 -- a flow that cannot be copied is checked fresh only
                    return None
            else:
                probe = flow
            found = failure(probe.train(), x, "train", "forward")
            if found:
                return found
            probe.eval()
            for direction in ("forward", "inverse"):
                found = failure(probe, x_after, "after", direction)
                if found:
                    return found
            return None
        finally:
            flow.train(was_training)


def starts_at_identity(flow: nn.Module) -> bool:
    """Whether a pixel flow must be the identity at initialisation: every flow, unless it declares
    ``identity_at_init = False`` (a flow decoder with its own data-dependent initialisation, such
    as ``conditional-glow``, whose phase 2 starts from there; the ``Flow`` protocol)."""
    return getattr(flow, "identity_at_init", True) is not False


def check_components(model: nn.Module, y: torch.Tensor, *, identity_flow: bool = True, flow_type: str | None = None) -> None:
    """Run each component once on a few training images ``y`` (B, C, H, W) in [0, 1), in eval mode
    and without gradients, and check what it returns against the hookspecs' contract (shapes,
    finiteness of every output, a positive decoder std). A component that raises or breaks the
    contract is one line naming its config section, so a bad component fails the start of training
    before anything is written.

    ``identity_flow`` (a VAE whose pixel flow is fresh: phase 1, and phase 2 unless it resumes):
    the [model.flow] must also be the identity at initialisation on these images in decoder space
    (``identity_failure``, on a copy: the model itself is left untouched). The standalone flow
    (FlowModel) is exempt. ``flow_type``: the config's ``model.flow.type``, named in that error
    (else the class name). Raises VaeflowError."""
    from vaeflow_cli.errors import VaeflowError

    def call(section: str, fn, *args):
        try:
            return fn(*args)
        except VaeflowError:
            raise
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 -- a plugin's error, reported as one line
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise VaeflowError(
                f"[model.{section}] fails on {y.shape[0]} training images of shape {tuple(y.shape[1:])}: "
                f"{type(exc).__name__}: {first}; check the [model.{section}] options"
            ) from None

    def expect(section: str, what: str, t, shape, *, positive: bool = False) -> None:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise VaeflowError(
                f"[model.{section}] returned {what} of shape {got}, the contract (vaeflow_cli.hookspecs) "
                f"wants {tuple(shape)}; the component is broken or misconfigured"
            )
        bad = ~torch.isfinite(t) if not positive else ~(torch.isfinite(t) & (t > 0))
        if bad.any():
            kind = "finite and positive" if positive else "finite"
            example = t[bad].flatten()[0].item()
            raise VaeflowError(
                f"[model.{section}] returned {what} with {int(bad.sum())} value(s) that are not {kind} (e.g. {example:g}) on {b} "
                f"training images; the contract (vaeflow_cli.hookspecs) wants {kind} values, so training could not "
                "learn: the component is broken or misconfigured"
            )

    b = y.shape[0]
    was_training = model.training
    rng = torch.get_rng_state()  # a component that draws noise must not shift the training's stream
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, FlowModel):
                out = call("flow", model.flow, y)
                expect("flow", "log_det", out[1], (b,))
                return
            mean, log_std = call("encoder", model.encoder, y)
            expect("encoder", "mean", mean, (b, model.latent_dim))
            expect("encoder", "log_std", log_std, (b, model.latent_dim))
            g_mu, g_sigma = call("decoder", model.decoder, mean)
            expect("decoder", "mean", g_mu, y.shape)
            expect("decoder", "std", g_sigma, y.shape, positive=True)
            expect("prior", "log_prob", call("prior", model.prior.log_prob, mean), (b,))
            t, _ = model.to_decoder_space(y, use_flow=False)
            # a conditional flow is checked as the flow it is for the decoder's output at these images' codes
            flow = WithCondition(model.flow, (g_mu.float(), g_sigma.float())) if model.conditional else model.flow
            out = call("flow", flow, t)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise VaeflowError("[model.flow] must return (x, log_det) from forward; see vaeflow_cli.hookspecs")
            expect("flow", "x", out[0], y.shape)
            expect("flow", "log_det", out[1], (b,))
            if identity_flow and starts_at_identity(model.flow):
                found = call("flow", identity_failure, flow, t)
                if found:
                    _refuse_non_identity(found, f"type = {flow_type!r}" if flow_type else type(model.flow).__name__, b)
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)


_RUNTIME_STAGE = {
    "fresh": "",
    "train": " in its first training-mode pass (data-dependent initialisation)",
    "after": " in eval mode after its first training-mode pass",
}


def _refuse_non_identity(found: IdentityFailure, name: str, b: int) -> None:
    from vaeflow_cli.errors import VaeflowError

    raise VaeflowError(
        f"[model.flow] {name} is not the identity at initialisation{_RUNTIME_STAGE[found.stage]}: on {b} training images "
        f"({found.direction}) {found.measured()}; a VAE's pixel flow must start as f(x) = x "
        f'with log det 0 so that phase 2 starts at the phase-1 bound (docs/model.md, "Decided here"); use an identity-at-init '
        f'flow such as model.flow.type = "glow-layer", and train a flow like this one alone as a density with vaeflow train-baseline'
    )
