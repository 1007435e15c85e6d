"""The checks of a module as a whole: gradients reach every parameter, the state dict round trip,
eval() and train() agree, a pixel flow is the identity at initialisation."""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Callable, Iterable

import torch
from torch import nn

from vaeflow_cli.testing._helpers import Outputs, _first_line, _kwargs, _max_diff, _rand, _randn, _seeded, mode_dependent_layers


def check_gradients(
    module: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], *, no_grad_ok: Iterable[str] = (), what: str = "the loss"
) -> None:
    """Assert that ``loss_fn(module)``, a finite scalar tensor, gives every parameter with
    ``requires_grad`` a finite gradient, and a non-zero one where the loss depends on it.

    * no gradient at all (the parameter is not in the autograd graph: unused, or used only through
      ``.detach()``/numpy): fails, it never trains;
    * a non-finite gradient: fails, always;
    * an all-zero gradient: checked against an independent computation, a finite difference: the
      parameter is moved by N(0, (0.1 (1 + |p|))^2) noise and ``loss_fn`` evaluated again (call it
      deterministic, e.g. under a fixed seed). A loss that changes means autograd is blocked
      (``torch.round``, a saturated clamp, a wrong custom backward): fails. A loss that stays
      bit-identical means the parameter has no effect by construction (e.g. the strictly lower part
      of a 1x1 matrix): accepted, a zero gradient is then the right one.

    ``no_grad_ok``: ``fnmatch`` patterns of parameter names (as in ``named_parameters``) that may
    get no gradient or a zero one by design (never a non-finite one). Gradients are cleared before
    and after, and moved parameters restored. The module's mode is left as it is (the entry points
    use train()). Raises AssertionError naming the parameters."""
    allowed = tuple(no_grad_ok)
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    module.zero_grad(set_to_none=True)
    try:
        loss = loss_fn(module)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "the loss must be a scalar tensor"
        assert bool(torch.isfinite(loss)), f"{what} is not finite ({loss.item()})"
        if not loss.requires_grad:
            assert not [n for n, _ in params if not any(fnmatch.fnmatchcase(n, a) for a in allowed)], (
                f"{what} does not depend on any parameter (no gradient at all); the outputs are computed without autograd "
                f"(torch.no_grad, .detach(), numpy?)"
            )
            return
        loss.backward()
        missing, zero, bad = [], [], []
        for n, p in params:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                bad.append(n)
            elif any(fnmatch.fnmatchcase(n, a) for a in allowed):
                continue
            elif p.grad is None:
                missing.append(n)
            elif not bool(p.grad.any()):
                zero.append(n)
    finally:
        module.zero_grad(set_to_none=True)
    assert not bad, f"{len(bad)} parameter(s) get a non-finite gradient from {what}: {', '.join(map(repr, bad[:5]))}"
    if zero:
        zero = _moves_the_loss(module, loss_fn, loss.detach(), zero)
    problems = []
    if missing:
        problems.append(f"{len(missing)} get no gradient ({', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''})")
    if zero:
        problems.append(
            f"{len(zero)} get an all-zero gradient although moving them changes the loss, so autograd is blocked "
            f"({', '.join(map(repr, zero[:5]))}{', ...' if len(zero) > 5 else ''})"
        )
    assert not problems, (
        f"of {len(params)} trainable parameters, {' and '.join(problems)} from {what} (after perturb): they never train; "
        f"remove them, set requires_grad=False, or declare the ones that are unused by design with no_grad_ok=('name*',)"
    )


def _moves_the_loss(module: nn.Module, loss_fn, loss: torch.Tensor, names: list[str], seed: int = 0) -> list[str]:
    """The parameters among ``names`` whose random move changes ``loss_fn(module)``: all moved at
    once first (one evaluation when none matters), then one at a time to name them; restored."""
    params = dict(module.named_parameters())

    def changes(group: list[str]) -> bool:
        g = torch.Generator().manual_seed(seed)
        saved = {n: params[n].detach().clone() for n in group}
        try:
            with torch.no_grad():
                for n in group:
                    params[n].add_(0.1 * (1 + saved[n].abs()) * torch.randn(saved[n].shape, generator=g).to(saved[n]))
                moved = loss_fn(module).detach()
        finally:
            with torch.no_grad():
                for n in group:
                    params[n].copy_(saved[n])
        return not torch.equal(moved, loss)

    if not changes(names):
        return []
    return [n for n in names if changes([n])] if len(names) > 1 else list(names)


def check_state_dict_round_trip(module: nn.Module, make_fresh: Callable[[], nn.Module], outputs: Outputs, *, seed: int = 0) -> None:
    """Assert that ``module``'s state is all in its state dict.

    The state dict goes through ``torch.save`` into memory and back with
    ``torch.load(weights_only=True)`` (how vaeflow reads checkpoints: tensors and plain
    containers only), is loaded strictly into ``make_fresh()`` (a new instance from the same factory,
    which the entry points build under another seed), and ``outputs`` (a function of a module
    returning named tensors) must then be bit-identical for both, in eval() mode and in train()
    mode (where a Python flag such as "already initialised from data" shows). Each call runs under
    the torch seed ``seed``, without gradients. Restores ``module``'s mode. Raises AssertionError."""
    was_training = module.training
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    try:
        loaded = torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- what the weights-only unpickler refuses
        raise AssertionError(
            f"the state_dict cannot be read back with torch.load(weights_only=True), as vaeflow reads checkpoints "
            f"({_first_line(exc)}); keep only tensors (and plain Python values) in it, e.g. no custom get_extra_state objects"
        ) from None
    fresh = make_fresh()
    try:
        fresh.load_state_dict(loaded)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(
            f"load_state_dict into a fresh instance from the same factory fails ({_first_line(exc)}): "
            f"its state dict depends on something other than the factory's arguments"
        ) from None
    try:
        for mode in ("eval", "train"):
            with torch.no_grad():
                a = _seeded(lambda mode=mode: dict(outputs(module.train(mode == "train"))), seed)
                b = _seeded(lambda mode=mode: dict(outputs(fresh.train(mode == "train"))), seed)
            for k in a:
                if not (a[k].shape == b[k].shape and torch.equal(torch.nan_to_num(a[k]), torch.nan_to_num(b[k]))):
                    raise AssertionError(
                        f"after a state_dict round trip (torch.save, torch.load(weights_only=True), load_state_dict into a fresh "
                        f"instance built with another seed) {k!r} differs in {mode}() mode by up to {_max_diff(a[k], b[k]):.3g}: some "
                        f"state that changes the outputs is not in state_dict(): a tensor attribute that should be a registered "
                        f"buffer, a buffer registered with persistent=False, or a Python attribute (e.g. set by data-dependent "
                        f"initialisation); a resumed run or a loaded checkpoint would compute something else"
                    )
    finally:
        module.train(was_training)


def check_modes_agree(module: nn.Module, outputs: Outputs, *, seed: int = 0, atol: float = 1e-6, modes_differ: bool | None = None) -> None:
    """Assert that ``outputs`` (a function of a module returning named tensors) agree in eval()
    and train() mode, to ``atol`` relative to max(1, |value|), each call under the torch seed
    ``seed`` and without gradients. Call it after any data-dependent initialisation has happened
    (the entry points run a warm-up batch in train() mode first, then compare on other inputs).

    The mode rule: ``modes_differ=None`` exempts a module holding ``MODE_DEPENDENT_LAYERS``
    (BatchNorm, InstanceNorm with running statistics, Dropout), which differ by design;
    ``True`` declares an exemption (nothing is checked); ``False`` checks whatever it holds.
    Restores the module's mode. Raises AssertionError."""
    layers = mode_dependent_layers(module)
    if modes_differ or (modes_differ is None and layers):
        return
    was_training = module.training
    try:
        with torch.no_grad():
            ev = _seeded(lambda: dict(outputs(module.eval())), seed)
            tr = _seeded(lambda: dict(outputs(module.train())), seed)
    finally:
        module.train(was_training)
    for k in ev:
        d = _max_diff(ev[k], tr[k])
        scale = max(1.0, ev[k].abs().max().item() if ev[k].numel() else 1.0)
        if not d <= atol * scale:
            held = f"it holds mode-dependent layers {layers[:3]} but modes_differ=False" if layers else "it holds no BatchNorm-like or Dropout layer"
            raise AssertionError(
                f"{k!r} differs between eval() and train() mode by up to {d:.3g} (after a first forward pass in train() mode, so "
                f"data-dependent initialisation is done; {held}): vaeflow trains in train() and evaluates in eval() mode and "
                f"expects one function; if the difference is by design, declare it with modes_differ=True"
            )


def check_identity_at_init(factory, image_shape=(3, 4, 4), *, batch: int = 4, seed: int = 0, **kwargs) -> None:
    """Assert the ``Flow`` protocol's identity at initialisation: a flow freshly built by
    ``factory(image_shape=image_shape, **kwargs)`` (``test_kwargs`` first; not perturbed) maps
    random inputs x (B, C, H, W) to themselves with log_det = 0, forward and inverse:

    1. in eval() mode, fresh;
    2. in its first forward pass in train() mode (where data-dependent initialisation happens);
    3. in eval() mode after that pass, on other inputs.

    The inputs mix values in [0, 1) (the "none" pixel transform) and N(0, 5^2) values (logit
    space); a conditional flow is checked at a decoder output (mean, std) drawn at random. The check
    and its tolerances are the ones training applies to real images
    (``vaeflow_cli.model.contracts.identity_failure``: ``|f(x) - x| <= IDENTITY_RTOL * (1 + |x|)``
    entrywise and ``|log_det| <= IDENTITY_LOG_DET_ATOL`` nats per image). Raises AssertionError
    naming the step that failed."""
    from vaeflow_cli.model.contracts import IDENTITY_STAGES, identity_failure
    from vaeflow_cli.model.flows import WithCondition, is_conditional

    shape = tuple(image_shape)
    kwargs = _kwargs(factory, kwargs)
    flow = _seeded(lambda: factory(image_shape=shape, **kwargs), seed)
    if is_conditional(flow):  # the identity for a decoder output drawn at random (check_conditional_flow tries two)
        flow = WithCondition(flow, (_randn((1, *shape), seed + 21, 0.5), torch.exp(_randn((1, *shape), seed + 22, 0.3))))

    def inputs(s):
        half = max(1, batch // 2)
        return torch.cat([_rand((half, *shape), s), _randn((max(1, batch - half), *shape), s + 1, 5.0)])

    found = identity_failure(flow, inputs(seed + 7), inputs(seed + 9), on_copy=False)
    if found is not None:
        raise AssertionError(
            f"the flow is not the identity at initialisation ({IDENTITY_STAGES[found.stage]}, {found.direction}): {found.measured()}; "
            f"a VAE's pixel flow must start as f(x) = x with log_det = 0 so that phase 2 starts at the phase-1 bound "
            f"(vaeflow_cli.hookspecs.Flow, docs/model.md); a flow meant only as a standalone density (vaeflow train-baseline) "
            f"is checked with pixel_flow=False"
        )
