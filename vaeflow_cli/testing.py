"""The check kit for component authors (and vaeflow's own test suite).

One entry point per component kind builds the component from its registered factory on small
shapes and runs every check below that applies; use them from pytest::

    from vaeflow_cli.testing import check_flow_component, check_encoder, check_decoder, check_prior, check_dataset

    def test_my_flow():
        check_flow_component(MyFlow, image_shape=(3, 4, 4), pixel_flow=True)   # a factory, as registered

    def test_my_encoder():
        check_encoder(MyEncoder, image_shape=(1, 8, 8), latent_dim=3, width=16)  # extra kwargs: config keys

Each failure is an ``AssertionError`` whose message says what broke, by how much, and what the
rule is. The checks (each also public, for use on a module built by hand):

* **contract**: shapes, dtypes (float32) and finiteness of what the component returns, against the
  protocols of ``vaeflow_cli.hookspecs`` (``check_flow_outputs`` and the entry points);
* **bijection** (flows, bijective priors; ``check_bijection``): ``inverse(forward(x)) = x`` to
  1e-5; the forward log-det AND the inverse log-det each equal ``log|det J|`` of the Jacobian that
  ``torch.autograd.functional.jacobian`` computes (in float64, independently of the component's
  formula), and the two are opposite;
* **change of variables** (bijective priors; ``check_log_prob_change_of_variables``):
  ``log_prob(z) = log N(h(z); 0, I) + log|det dh/dz|`` with the Jacobian from autograd;
* **gradients** (``check_gradients``): every trainable parameter gets a finite gradient from a
  scalar loss of the component's outputs (a flow: its forward outputs and its log-det; an encoder
  or decoder: both outputs; a prior: ``log_prob``), non-zero wherever a finite difference shows
  that the loss depends on the parameter;
* **state_dict round trip** (``check_state_dict_round_trip``): the state dict, written with
  ``torch.save`` and read back with ``torch.load(weights_only=True)`` (as vaeflow reads
  checkpoints), loaded strictly into a fresh instance built by the same factory under another
  seed, gives bit-identical outputs in eval() and train() mode;
* **eval() and train() agree** (``check_modes_agree``): see the mode rule below;
* **identity at initialisation** (pixel flows; ``check_identity_at_init``): see the ``Flow``
  protocol; a freshly built flow gives ``f(x) = x`` and ``log_det = 0``, also in its first forward
  pass in train() mode (where data-dependent initialisation happens) and in eval() after it;
* **datasets** (``check_dataset``, ``check_dataset_missing_files``): ``image_shape``, ``splits``,
  every split a uint8 array (N, C, H, W); missing files are one ``VaeflowError`` line.

Rules the kit applies:

* **Perturbation.** Before the mathematical and gradient checks, every parameter is moved away
  from its initial value (``perturb``): a flow that starts as the identity is then checked as a
  general bijection, and a zero-initialised last layer (which at initialisation blocks the gradient
  of the layers before it) does not hide a parameter that never gets one.
* **Data-dependent initialisation.** Every entry point runs the component once in train() mode on
  a warm-up batch, without gradients, before it compares anything; checks then use other inputs.
* **Mode rule.** vaeflow evaluates in eval() mode and trains in train() mode and expects the same
  function in both, once data-dependent initialisation has happened. Exempt by design are
  components holding layers whose behaviour depends on the mode: BatchNorm (batch statistics in
  train(), running statistics in eval()), InstanceNorm with running statistics, Dropout
  (``MODE_DEPENDENT_LAYERS``; detected automatically). Pass ``modes_differ=True`` to declare any
  other exemption (say why in your test), or ``modes_differ=False`` to check a component anyway.
* **Randomness.** Every compared call runs under the same torch seed, so a component that draws
  noise (e.g. a stochastic ``log_prob``) is compared with itself.
* **Sizes.** A factory whose defaults are too big for the kit's small images may carry a dict
  ``test_kwargs`` of settings that fit them (``MultiScaleGlow.test_kwargs``); explicit keyword
  arguments to an entry point override it.

The checks run on the CPU in float32 (Jacobians in float64) and set no global state: the global
torch RNG is forked around every seeded call.
"""

from __future__ import annotations

import copy
import fnmatch
import io
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODE_DEPENDENT_LAYERS",
    "perturb",
    "mode_dependent_layers",
    "check_bijection",
    "check_log_prob_change_of_variables",
    "check_flow_outputs",
    "check_gradients",
    "check_state_dict_round_trip",
    "check_modes_agree",
    "check_identity_at_init",
    "check_flow_component",
    "check_encoder",
    "check_decoder",
    "check_prior",
    "check_prior_component",
    "check_dataset",
    "check_dataset_missing_files",
]

LOG_2PI = math.log(2 * math.pi)

MODE_DEPENDENT_LAYERS: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm*
    nn.modules.instancenorm._InstanceNorm,  # only with track_running_stats=True (see mode_dependent_layers)
    nn.modules.dropout._DropoutNd,  # Dropout*, AlphaDropout, FeatureAlphaDropout
)
"""Layer types whose output depends on train()/eval() by design; a component holding one is exempt
from ``check_modes_agree`` unless the caller says otherwise."""

Outputs = Callable[[nn.Module], Mapping[str, torch.Tensor]]


# ------------------------------------------------------------------ helpers


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
    from vaeflow_cli.constraints import declared_constraints, problem

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


# ------------------------------------------------------------------ mathematical checks


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


# ------------------------------------------------------------------ module checks


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


def check_identity_at_init(
    factory, image_shape=(3, 4, 4), *, batch: int = 4, seed: int = 0, atol: float = 1e-5, log_det_atol: float = 1e-4, **kwargs
) -> None:
    """Assert the ``Flow`` protocol's identity at initialisation: a flow freshly built by
    ``factory(image_shape=image_shape, **kwargs)`` (``test_kwargs`` first; not perturbed) maps
    random inputs x (B, C, H, W) to themselves with log_det = 0, forward and inverse:

    1. in eval() mode, fresh;
    2. in its first forward pass in train() mode (where data-dependent initialisation happens);
    3. in eval() mode after that pass, on other inputs.

    The inputs mix values in [0, 1) (the "none" pixel transform) and N(0, 5^2) values (logit
    space). Tolerances: ``|f(x) - x| <= atol * (1 + |x|)`` entrywise and ``|log_det| <=
    log_det_atol`` nats per image. Raises AssertionError naming the step that failed."""
    shape = tuple(image_shape)
    kwargs = _kwargs(factory, kwargs)
    flow = _seeded(lambda: factory(image_shape=shape, **kwargs), seed)

    def inputs(s):
        half = max(1, batch // 2)
        return torch.cat([_rand((half, *shape), s), _randn((max(1, batch - half), *shape), s + 1, 5.0)])

    def check(x, when, direction):
        with torch.no_grad():
            y, ld = _pair(flow(x) if direction == "forward" else flow.inverse(x), direction)
        assert tuple(y.shape) == tuple(x.shape), f"{direction} changed the shape {tuple(x.shape)} -> {tuple(y.shape)}"
        err = ((y.double() - x.double()).abs() / (1 + x.double().abs())).max().item()
        ld_max = ld.double().abs().max().item()
        if not (err <= atol and ld_max <= log_det_atol):
            name = "f^-1(x)" if direction == "inverse" else "f(x)"
            raise AssertionError(
                f"the flow is not the identity at initialisation ({when}, {direction}): max |{name} - x| / (1 + |x|) = {err:.3g} "
                f"(allowed {atol:g}) and max |log_det| = {ld_max:.3g} nats (allowed {log_det_atol:g}); a VAE's pixel flow must "
                f"start as f(x) = x with log_det = 0 so that phase 2 starts at the phase-1 bound (vaeflow_cli.hookspecs.Flow, "
                f"docs/model.md); a flow meant only as a standalone density (vaeflow train-baseline) is checked with pixel_flow=False"
            )

    x1, x2 = inputs(seed + 7), inputs(seed + 9)
    flow.eval()
    check(x1, "fresh, eval() mode", "forward")
    check(x1, "fresh, eval() mode", "inverse")
    flow.train()
    check(x1, "first forward pass in train() mode, where data-dependent initialisation happens", "forward")
    flow.eval()
    check(x2, "eval() mode after the first training forward pass", "forward")
    check(x2, "eval() mode after the first training forward pass", "inverse")


# ------------------------------------------------------------------ entry points, one per kind


def _run_module_checks(
    make: Callable[[int], nn.Module],
    *,
    seed: int,
    warm_up: Callable[[nn.Module], Any],
    outputs: Outputs,
    loss_outputs: Outputs,
    loss_what: str,
    no_grad_ok: Iterable[str],
    modes_differ: bool | None,
    prepare: Callable[[nn.Module], Any] | None,
    contract: Callable[[nn.Module], Any],
) -> nn.Module:
    """Build (seed), perturb, prepare, warm up in train() mode, then: the protocol's ``contract``
    (eval mode), modes agree, state_dict round trip into make(seed + 1), gradients of a weighted
    sum of ``loss_outputs``. Returns the module (eval mode)."""
    module = perturb(make(seed), seed=seed)
    if prepare is not None:
        prepare(module)
    module.train()
    with torch.no_grad():
        _seeded(lambda: warm_up(module), seed + 3)
    contract(module.eval())
    check_modes_agree(module, outputs, seed=seed, modes_differ=modes_differ)
    check_state_dict_round_trip(module, lambda: make(seed + 1), outputs, seed=seed)
    module.train()

    def loss(m):
        out = loss_outputs(m)
        return _weighted_sum(out, tuple(out), seed)

    check_gradients(module, lambda m: _seeded(lambda: loss(m), seed), no_grad_ok=no_grad_ok, what=loss_what)
    return module.eval()


def check_flow_component(
    factory,
    *,
    image_shape=(3, 4, 4),
    batch: int = 3,
    seed: int = 0,
    pixel_flow: bool = False,
    modes_differ: bool | None = None,
    no_grad_ok: Iterable[str] = (),
    **kwargs,
) -> None:
    """Check a registered flow factory (``FlowFactory``) on images of ``image_shape`` (C, H, W):
    with ``pixel_flow`` the identity at initialisation first (``check_identity_at_init``; pass it
    for any flow meant as a VAE's ``[model.flow]``, where vaeflow enforces it when training
    starts); then, perturbed and warmed up, the protocol's shapes and dtypes, the bijection and both
    log-dets against autograd (``check_bijection``), eval()/train() agreement, the state_dict
    round trip, and a gradient for every parameter from a loss of the forward outputs and log-det.

    ``kwargs`` are the factory's config keys (over its ``test_kwargs``); ``modes_differ`` and
    ``no_grad_ok`` as in ``check_modes_agree`` / ``check_gradients``. Raises AssertionError."""
    shape = tuple(image_shape)
    kwargs = _kwargs(factory, kwargs)
    if pixel_flow:
        check_identity_at_init(factory, shape, seed=seed, **kwargs)
    x = _randn((batch, *shape), seed, 0.5)
    x_warm = _randn((max(batch, 2), *shape), seed + 11, 0.5)
    y_in = _randn((batch, *shape), seed + 13, 0.5)

    def outputs(flow):
        fx, ld = _pair(flow(x), "forward")
        ix, ild = _pair(flow.inverse(y_in), "inverse")
        return {"forward": fx, "log_det": ld, "inverse": ix, "inverse log_det": ild}

    flow = _run_module_checks(
        lambda s: _seeded(lambda: factory(image_shape=shape, **kwargs), s),
        seed=seed,
        warm_up=lambda m: m(x_warm),
        outputs=outputs,
        loss_outputs=lambda m: dict(zip(("forward", "log_det"), m(x), strict=False)),
        loss_what="a loss of the forward outputs and log_det",
        no_grad_ok=no_grad_ok,
        modes_differ=modes_differ,
        prepare=None,
        contract=lambda m: check_flow_outputs(m, x),
    )
    check_bijection(flow, x)


# (the two signatures stay wrapped: one parameter per line would repeat eight lines)
# fmt: off
def check_encoder(factory, *, image_shape=(1, 8, 8), latent_dim: int = 3, batch: int = 3, seed: int = 0,
                  modes_differ: bool | None = None, no_grad_ok: Iterable[str] = (), **kwargs) -> None:
    """Check a registered encoder factory (``EncoderFactory``): on dequantized images in [0, 1)
    (B, C, H, W) it returns ``(mean, log_std)``, each finite float32 (B, latent_dim); every
    parameter gets a gradient from a loss of both; eval()/train() agreement (BatchNorm exempt, see
    the mode rule); the state_dict round trip. Raises AssertionError."""
    from vaeflow_cli.hookspecs import Encoder

    shape, kwargs = tuple(image_shape), _kwargs(factory, kwargs)
    _check_gaussian_module(
        lambda: factory(image_shape=shape, latent_dim=latent_dim, **kwargs),
        "encoder",
        Encoder,
        _rand((batch, *shape), seed),
        _rand((max(batch, 2), *shape), seed + 11),
        ("mean", "log_std"),
        (batch, latent_dim),
        seed=seed,
        modes_differ=modes_differ,
        no_grad_ok=no_grad_ok,
    )


def check_decoder(factory, *, image_shape=(1, 8, 8), latent_dim: int = 3, batch: int = 3, seed: int = 0,
                  modes_differ: bool | None = None, no_grad_ok: Iterable[str] = (), **kwargs) -> None:
    """Check a registered decoder factory (``DecoderFactory``): on latents (B, latent_dim) it
    returns ``(mean, std)``, each finite float32 (B, C, H, W), ``std > 0``; every parameter gets a
    gradient from a loss of both; eval()/train() agreement (BatchNorm exempt); the state_dict
    round trip. Raises AssertionError."""
    from vaeflow_cli.hookspecs import Decoder

    shape, kwargs = tuple(image_shape), _kwargs(factory, kwargs)
    _check_gaussian_module(
        lambda: factory(image_shape=shape, latent_dim=latent_dim, **kwargs),
        "decoder",
        Decoder,
        _randn((batch, latent_dim), seed),
        _randn((max(batch, 2), latent_dim), seed + 11),
        ("mean", "std"),
        (batch, *shape),
        seed=seed,
        modes_differ=modes_differ,
        no_grad_ok=no_grad_ok,
    )


# fmt: on


def _check_gaussian_module(
    build: Callable[[], nn.Module],
    kind: str,
    protocol: type,
    x: torch.Tensor,
    x_warm: torch.Tensor,
    names: tuple[str, str],
    shape: tuple[int, ...],
    *,
    seed: int,
    modes_differ: bool | None,
    no_grad_ok: Iterable[str],
) -> None:
    """An encoder or decoder: a module mapping ``x`` to the two parameters ``names`` of a diagonal
    Gaussian, each of ``shape`` (a standard deviation positive), run through every module check."""

    def outputs(module):
        return dict(zip(names, _pair(module(x), f"the {kind}"), strict=True))

    def contract(module):
        assert isinstance(module, protocol), f"{type(module).__name__} is not callable (vaeflow_cli.hookspecs.{protocol.__name__})"
        with torch.no_grad():
            out = outputs(module)
        for name in names:
            _expect(out[name], shape, f"the {kind}'s {name}", positive=name == "std")

    _run_module_checks(
        lambda s: _seeded(build, s),
        seed=seed,
        warm_up=lambda m: m(x_warm),
        outputs=outputs,
        loss_outputs=outputs,
        loss_what=f"a loss of {names[0]} and {names[1]}",
        no_grad_ok=no_grad_ok,
        modes_differ=modes_differ,
        prepare=None,
        contract=contract,
    )


def _prior_contract(prior: nn.Module, z: torch.Tensor, u: torch.Tensor, *, mathematics: bool = True) -> None:
    """Prior protocol: log_prob (B,) and from_base (B, d), finite float32; a bijective prior (with
    ``inverse``): forward and inverse give (B, d) and (B,), and with ``mathematics`` h is a
    bijection on R^d, its log_prob is the change of variables, and from_base = h^-1."""
    from vaeflow_cli.hookspecs import Prior

    assert isinstance(prior, Prior), f"a prior must have log_prob and from_base (vaeflow_cli.hookspecs.Prior); {type(prior).__name__} does not"
    b, d = z.shape
    prior.eval()
    with torch.no_grad():
        _expect(_seeded(lambda: prior.log_prob(z), 0), (b,), "log_prob")
        zs = _seeded(lambda: prior.from_base(u), 0)
        _expect(zs, (b, d), "from_base")
        if hasattr(prior, "inverse"):
            for direction, out in (("forward", prior(z)), ("inverse", prior.inverse(u))):
                v, ld = _pair(out, direction)
                _expect(v, (b, d), f"the prior's {direction} output")
                _expect(ld, (b,), f"the prior's {direction} log_det")
    if hasattr(prior, "inverse") and mathematics:
        check_bijection(prior, z)
        check_log_prob_change_of_variables(prior, z)
        with torch.no_grad():
            back = prior(zs)[0]
            assert torch.allclose(back, u, atol=1e-5), f"from_base(u) is not h^-1(u): h(from_base(u)) differs from u by {_max_diff(back, u):.3g}"
            assert torch.allclose(prior.inverse(u)[0], zs, atol=1e-6), "from_base(u) differs from inverse(u)[0]"


def check_prior_component(factory, *, latent_dim: int = 5, batch: int = 4, seed: int = 0, **kwargs) -> None:
    """Build a registered prior (``PriorFactory``), perturb it, and check the protocol: ``log_prob``
    finite (B,), ``from_base`` (B, latent_dim); when it is a bijection h (has ``inverse``), that h
    inverts with both log-dets matching autograd, that ``log_prob`` is the change of variables
    (autograd), and that ``from_base`` is h^-1. The mathematical part of ``check_prior``, without
    the gradient, mode and round-trip checks. Raises AssertionError."""
    kwargs = _kwargs(factory, kwargs)
    prior = perturb(_seeded(lambda: factory(latent_dim=latent_dim, **kwargs), seed), seed=seed).eval()
    z = _randn((batch, latent_dim), seed)
    u = _randn((batch, latent_dim), seed + 1)
    _prior_contract(prior, z, u)


def check_prior(
    factory,
    *,
    latent_dim: int = 4,
    batch: int = 4,
    seed: int = 0,
    modes_differ: bool | None = None,
    no_grad_ok: Iterable[str] = (),
    prepare: Callable[[nn.Module], Any] | None = None,
    **kwargs,
) -> None:
    """Check a registered prior factory (``PriorFactory``): everything ``check_prior_component``
    checks, plus a gradient for every parameter from a loss of ``log_prob`` (B,) on latents
    (B, latent_dim), eval()/train() agreement, and the state_dict round trip.

    ``prepare(prior)`` runs after the build and perturbation, before anything is checked, to put a
    component with states in the one to check (e.g. a two-stage prior marked trained, whose
    untrained ``log_prob`` is N(0, I) and gives its parameters no gradient); what it changes must be
    in the state dict, since the round trip loads it into an unprepared instance. Raises
    AssertionError."""
    kwargs = _kwargs(factory, kwargs)
    z = _randn((batch, latent_dim), seed)
    u = _randn((batch, latent_dim), seed + 1)
    z_warm = _randn((max(batch, 2), latent_dim), seed + 11)

    def outputs(prior):
        out = {"log_prob": prior.log_prob(z), "from_base": prior.from_base(u)}
        if hasattr(prior, "inverse"):
            out["forward"], out["log_det"] = _pair(prior(z), "forward")
            out["inverse"], out["inverse log_det"] = _pair(prior.inverse(u), "inverse")
        return out

    prior = _run_module_checks(
        lambda s: _seeded(lambda: factory(latent_dim=latent_dim, **kwargs), s),
        seed=seed,
        warm_up=lambda m: m.log_prob(z_warm),
        outputs=outputs,
        loss_outputs=lambda m: {"log_prob": m.log_prob(z)},
        loss_what="a loss of log_prob",
        no_grad_ok=no_grad_ok,
        modes_differ=modes_differ,
        prepare=prepare,
        contract=lambda m: _prior_contract(m, z, u, mathematics=False),
    )
    _prior_contract(prior, z, u)


# ------------------------------------------------------------------ datasets


def check_dataset(factory, **kwargs) -> None:
    """Check a registered dataset factory (``DatasetFactory``) built with ``kwargs`` (e.g. ``root``):
    ``image_shape`` a tuple of three positive ints (C, H, W) with C in {1, 3}; ``splits`` a
    non-empty sequence of distinct names including "train" (what training reads); every split an
    ``np.ndarray`` of dtype uint8 and shape (N, C, H, W), N >= 1. Raises AssertionError."""
    import numpy as np

    from vaeflow_cli.hookspecs import Dataset

    ds = factory(**kwargs)
    assert isinstance(ds, Dataset), (
        f"a dataset must have image_shape, splits and split() (vaeflow_cli.hookspecs.Dataset); {type(ds).__name__} does not"
    )
    shape = ds.image_shape
    assert isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape), (
        f"image_shape must be a tuple of three positive ints (C, H, W), got {shape!r}"
    )
    assert shape[0] in (1, 3), f"image_shape's C must be 1 or 3, got {shape[0]}"
    splits = ds.splits
    assert not isinstance(splits, str) and len(splits) > 0 and all(isinstance(s, str) and s for s in splits), (
        f"splits must be a non-empty sequence of split names, got {splits!r}"
    )
    assert len(set(splits)) == len(splits), f"splits has duplicates: {list(splits)}"
    assert "train" in splits, f"splits must include 'train' (training reads it), got {list(splits)}"
    for name in splits:
        arr = ds.split(name)
        assert isinstance(arr, np.ndarray), f"split({name!r}) must return an np.ndarray, got {type(arr).__name__}"
        assert arr.dtype == np.uint8, f"split({name!r}) must be uint8 (values 0..255), got {arr.dtype}"
        assert arr.ndim == 4 and tuple(arr.shape[1:]) == shape, f"split({name!r}) must have shape (N, {', '.join(map(str, shape))}), got {arr.shape}"
        assert arr.shape[0] >= 1, f"split({name!r}) is empty"


def check_dataset_missing_files(factory, **kwargs) -> str:
    """Assert that a dataset built with ``kwargs`` pointing at missing files (e.g. an empty
    ``root``) fails as the ``Dataset`` protocol says: a ``VaeflowError`` from the factory or from
    ``split`` whose message is one non-empty line (no traceback, no newline). Returns the message
    for further checks (what, where, how to fix). Raises AssertionError."""
    from vaeflow_cli.errors import VaeflowError

    try:
        ds = factory(**kwargs)
        for name in ds.splits:
            ds.split(name)
    except VaeflowError as exc:
        msg = str(exc)
        assert msg.strip() and "\n" not in msg.strip(), f"the error must be one line, got {msg!r}"
        return msg
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(
            f"missing files must raise vaeflow_cli.errors.VaeflowError (one line: what, where, how to fix), not {_first_line(exc)}"
        ) from None
    raise AssertionError(f"no error with {kwargs!r}: a dataset whose files are missing must raise VaeflowError")
