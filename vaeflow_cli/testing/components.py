"""The entry points, one per component kind: build the component from its registered factory on
small shapes and run every check that applies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from vaeflow_cli.model.contracts import starts_at_identity
from vaeflow_cli.model.flows import WithCondition, is_conditional
from vaeflow_cli.testing._helpers import Outputs, _expect, _kwargs, _max_diff, _pair, _rand, _randn, _seeded, _weighted_sum, perturb
from vaeflow_cli.testing.mathematics import check_bijection, check_flow_outputs, check_log_prob_change_of_variables
from vaeflow_cli.testing.modules import check_gradients, check_identity_at_init, check_modes_agree, check_state_dict_round_trip


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
    if is_conditional(_seeded(lambda: factory(image_shape=shape, **kwargs), seed)):
        check_conditional_flow(
            factory, image_shape=shape, batch=batch, seed=seed, pixel_flow=pixel_flow, modes_differ=modes_differ, no_grad_ok=no_grad_ok, **kwargs
        )
        return
    if pixel_flow and starts_at_identity(_seeded(lambda: factory(image_shape=shape, **kwargs), seed)):
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


def _condition(batch: int, shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder output to condition on, the same for the whole batch (so that the Jacobian of one
    item is taken at its own condition): means N(0, 0.5^2), standard deviations exp(N(0, 0.3^2)),
    each (batch, C, H, W) as views of one (1, C, H, W) draw."""
    mean, std = _randn((1, *shape), seed, 0.5), torch.exp(_randn((1, *shape), seed + 1, 0.3))
    return mean.expand(batch, *shape), std.expand(batch, *shape)


def check_conditional_flow(
    factory,
    *,
    image_shape=(3, 4, 4),
    batch: int = 3,
    seed: int = 0,
    pixel_flow: bool = True,
    modes_differ: bool | None = None,
    no_grad_ok: Iterable[str] = (),
    **kwargs,
) -> None:
    """Check a registered conditional flow factory (the ``ConditionalFlow`` protocol): for a fixed
    condition (a decoder's (mean, std), each (B, C, H, W), std > 0) every check of
    ``check_flow_component`` (with ``pixel_flow`` the identity at initialisation, for this and
    for another condition; then, perturbed and warmed up, shapes and dtypes, the bijection and both
    log-dets against autograd, eval()/train() agreement, the state_dict round trip, a gradient for
    every parameter); and, perturbed, that the output depends on the condition (a conditional flow
    that ignores it is a plain flow). Raises AssertionError."""
    shape = tuple(image_shape)
    kwargs = _kwargs(factory, kwargs)
    probe = _seeded(lambda: factory(image_shape=shape, **kwargs), seed)
    assert is_conditional(probe), f"{type(probe).__name__} does not declare conditional = True; check it with check_flow_component"
    pixel_flow = pixel_flow and starts_at_identity(probe)  # a flow decoder with its own initialisation declares it
    for k, cond in enumerate((_condition(1, shape, seed + 21), _condition(1, shape, seed + 23))):

        def fixed(*, image_shape, cond=cond, **kw):
            return WithCondition(factory(image_shape=image_shape, **kw), cond)

        fixed.test_kwargs = {}
        if pixel_flow and k == 1:
            check_identity_at_init(fixed, shape, batch=batch, seed=seed + 5, **kwargs)
            continue
        check_flow_component(
            fixed, image_shape=shape, batch=batch, seed=seed, pixel_flow=pixel_flow, modes_differ=modes_differ, no_grad_ok=no_grad_ok, **kwargs
        )
    flow = perturb(_seeded(lambda: factory(image_shape=shape, **kwargs), seed), seed=seed, scale=0.3).eval()
    x = _randn((batch, *shape), seed + 31, 0.5)
    with torch.no_grad():
        a, _ = _pair(flow(x, condition=_condition(batch, shape, seed + 21)), "forward")
        b, _ = _pair(flow(x, condition=_condition(batch, shape, seed + 23)), "forward")
    assert _max_diff(a, b) > 1e-6, "the flow's output does not depend on its condition: it is not conditional (after perturb)"


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
    """Prior protocol: log_prob (B,) and from_base (B, d), finite float32; sampling: from_base
    depends on its base points u, and log_prob is finite at the samples it gives; a bijective prior
    (with ``inverse``): forward and inverse give (B, d) and (B,), and with ``mathematics`` h is a
    bijection on R^d, its log_prob is the change of variables, and from_base = h^-1."""
    from vaeflow_cli.hookspecs import Prior

    assert isinstance(prior, Prior), f"a prior must have log_prob and from_base (vaeflow_cli.hookspecs.Prior); {type(prior).__name__} does not"
    b, d = z.shape
    prior.eval()
    with torch.no_grad():
        _expect(_seeded(lambda: prior.log_prob(z), 0), (b,), "log_prob")
        zs = _seeded(lambda: prior.from_base(u), 0)
        _expect(zs, (b, d), "from_base")
        other = _seeded(lambda: prior.from_base(u.flip(0) + 1.0), 0)
        assert _max_diff(zs, other) > 1e-6, "from_base(u) does not depend on u: every sample z = from_base(u), u ~ N(0, I), is the same"
        _expect(_seeded(lambda: prior.log_prob(zs), 0), (b,), "log_prob of the prior's own samples from_base(u)")
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
    """Check a registered prior factory (``PriorFactory``), the prior's counterpart of
    ``check_flow_component``: built, perturbed and warmed up, the protocol's shapes and dtypes
    (``log_prob`` finite float32 (B,) on latents (B, latent_dim), ``from_base`` (B, latent_dim));
    sampling (``from_base`` depends on its base points, and ``log_prob`` is finite at its
    samples); when the prior is a bijection h (has ``inverse``), forward and inverse shapes, that h
    inverts with both log-dets matching autograd (``check_bijection``), that ``log_prob`` is the
    change of variables computed independently (``check_log_prob_change_of_variables``) and that
    ``from_base`` is h^-1; a gradient for every parameter from a loss of ``log_prob``,
    eval()/train() agreement, and the state_dict round trip.

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
