"""The component suite: every registered component (built-in or third-party) is checked the same way."""

import math

import pytest
import torch

from vaeflow_cli.model.distributions import gaussian_log_prob
from vaeflow_cli.model.flows import WithCondition
from vaeflow_cli.registry.core import build_registry
from vaeflow_cli.testing import check_bijection, check_flow_component, check_prior, perturb
from vaeflow_plugins.glow import ActNorm, Coupling, DataInitActNorm, InvConv1x1, add_over_batch, squeeze, unsqueeze
from vaeflow_plugins.models import conditional_glow, glow_layer, multiscale_glow

REGISTRY = build_registry(allowed=None)  # every installed plugin, third-party ones too


def names(kind):
    return [pytest.param(c.factory, id=f"{c.plugin}:{c.name}") for c in REGISTRY.components[kind].values()]


@pytest.mark.parametrize("factory", names("flow"))
@pytest.mark.parametrize("image_shape", [(1, 4, 4), (3, 4, 4)])
def test_every_flow_inverts_and_matches_autograd_log_det(factory, image_shape):
    check_flow_component(factory, image_shape=image_shape)


@pytest.mark.parametrize("factory", names("prior"))
@pytest.mark.parametrize("latent_dim", [1, 4, 5])
def test_every_prior_is_a_density_and_its_bijection_checks(factory, latent_dim):
    def own_training(prior):  # a prior that trains on its own (two-stage) is checked as it trains; untrained: test_check_kit.py
        if hasattr(prior, "start_own_training"):
            prior.start_own_training()

    check_prior(factory, latent_dim=latent_dim, prepare=own_training)


@pytest.mark.parametrize("factory", names("encoder"))
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (3, 20, 12)])
def test_every_encoder_gives_gaussian_parameters(factory, image_shape):
    enc = factory(image_shape=image_shape, latent_dim=6).eval()
    with torch.no_grad():
        mean, log_std = enc(torch.rand(2, *image_shape))
    assert mean.shape == log_std.shape == (2, 6)
    assert torch.isfinite(mean).all() and torch.isfinite(log_std).all()


@pytest.mark.parametrize("factory", names("decoder"))
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (3, 20, 12)])
def test_every_decoder_gives_a_mean_in_unit_range_and_positive_std(factory, image_shape):
    dec = factory(image_shape=image_shape, latent_dim=6).eval()
    with torch.no_grad():
        mean, std = dec(torch.randn(3, 6))
    assert mean.shape == std.shape == (3, *image_shape)
    assert torch.isfinite(mean).all()
    assert (std > 0).all()


# ---------------------------------------------------------------- the Glow layer's parts


GLOW_PARTS = {
    "actnorm": (lambda: ActNorm(3), 3),
    "invconv-lu": (lambda: InvConv1x1(3, lu=True), 3),
    "invconv-dense": (lambda: InvConv1x1(3, lu=False), 3),
    "invconv-1ch": (lambda: InvConv1x1(1, lu=True), 1),
    "coupling-ch0": (lambda: Coupling((3, 4, 4), hidden=8, parity=0, split="channel"), 3),
    "coupling-ch1": (lambda: Coupling((3, 4, 4), hidden=8, parity=1, split="channel"), 3),
    "checker0": (lambda: Coupling((1, 4, 4), hidden=8, parity=0, split="checkerboard"), 1),
    "checker1": (lambda: Coupling((1, 4, 4), hidden=8, parity=1, split="checkerboard"), 1),
    "checker-rgb": (lambda: Coupling((3, 4, 4), hidden=8, parity=1, split="checkerboard"), 3),
    "glow-alternate": (lambda: glow_layer(image_shape=(3, 4, 4), depth=4, hidden_channels=8, split="alternate"), 3),
    "affine-split-ch": (lambda: Coupling((3, 4, 4), hidden=8, parity=0, split="channel", scale="tanh"), 3),
    "affine-split-checker": (lambda: Coupling((3, 4, 4), hidden=8, parity=1, split="checkerboard", scale="tanh"), 3),
    "affine-split-gray": (lambda: Coupling((1, 4, 4), hidden=8, parity=0, split="checkerboard", scale="tanh"), 1),
    "glow-affine-alternate": (lambda: glow_layer(image_shape=(3, 4, 4), depth=4, hidden_channels=8, split="alternate", coupling="affine"), 3),
    "affine0": (lambda: Coupling((4, 4, 4), hidden=8, parity=0, split="channel", scale="sigmoid"), 4),
    "affine1": (lambda: Coupling((3, 4, 4), hidden=8, parity=1, split="channel", scale="sigmoid"), 3),
    "affine-floor": (lambda: Coupling((3, 4, 4), hidden=8, parity=0, split="channel", scale="sigmoid", min_scale=0.05), 3),
    "affine-floor-checker": (lambda: Coupling((3, 4, 4), hidden=8, parity=1, split="checkerboard", scale="sigmoid", min_scale=0.3), 3),
}


def test_squeeze_moves_2x2_blocks_to_channels_and_back():
    x = torch.arange(2 * 3 * 4 * 6.0).reshape(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3) and torch.equal(unsqueeze(s), x)
    assert s[0, :4, 0, 0].tolist() == [x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]


def test_data_dependent_actnorm_normalises_its_first_training_batch_only():
    norm = DataInitActNorm(3).train()
    x = 5 + 3 * torch.randn(16, 3, 4, 4)
    y, _ = norm(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    before = norm.bias.clone()
    norm(torch.randn(16, 3, 4, 4))
    assert torch.equal(norm.bias, before) and bool(norm.initialized)
    fresh = DataInitActNorm(3).eval()
    assert torch.equal(fresh(x)[0], x)  # no initialisation outside training


def test_multiscale_glow_is_a_density_with_a_standard_normal_base():
    """With its steps at the identity (additive couplings start there), the Glow is its learned top
    prior: x ~ N(0.5 + mean, exp(log_std)^2) per pixel, a closed form to compare against."""
    glow = multiscale_glow(image_shape=(1, 2, 2), levels=1, steps=1, hidden_channels=4, coupling="additive").eval()
    with torch.no_grad():
        glow.body.prior_mean.fill_(0.25)
        glow.body.prior_log_std.fill_(math.log(0.5))
    x = torch.rand(5, 1, 2, 2)
    z, log_det = glow(x)
    log_p = -0.5 * (z**2).flatten(1).sum(1) - 2 * math.log(2 * math.pi) + log_det
    expected = torch.distributions.Normal(0.75, 0.5).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(log_p, expected, atol=1e-5)


@pytest.mark.parametrize("part", GLOW_PARTS)
def test_glow_parts_invert_and_match_autograd(part):
    make, channels = GLOW_PARTS[part]
    check_bijection(perturb(make(), scale=0.3), torch.randn(3, channels, 4, 4))


def test_non_lu_conv_log_det_is_slogdet_times_pixels():
    conv = InvConv1x1(3, lu=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.5]]))
    _, ld = conv(torch.randn(2, 3, 5, 4))
    assert torch.allclose(ld, torch.full((2,), 20 * math.log(3.0)))


@pytest.mark.parametrize(
    "shape, split, coupling",
    [((1, 6, 6), "auto", "additive"), ((3, 6, 6), "auto", "additive"), ((3, 6, 6), "checkerboard", "affine"), ((3, 6, 6), "alternate", "affine")],
)
@pytest.mark.parametrize("lu", [True, False])
def test_glow_layer_is_exactly_the_identity_at_initialisation(shape, split, coupling, lu):
    flow = glow_layer(image_shape=shape, depth=3, hidden_channels=8, lu=lu, split=split, coupling=coupling)
    x = torch.rand(4, *shape)
    y, ld = flow(x)
    assert torch.equal(y, x)
    assert torch.equal(ld, torch.zeros(4))


def test_glow_coupling_splits_as_documented():
    rgb = glow_layer(image_shape=(3, 4, 4), depth=2, hidden_channels=4)
    gray = glow_layer(image_shape=(1, 4, 4), depth=2, hidden_channels=4)
    assert [m.split for m in rgb.layers if isinstance(m, Coupling)] == ["channel", "channel"]
    assert [m.split for m in gray.layers if isinstance(m, Coupling)] == ["checkerboard", "checkerboard"]
    # the 1 | 2 channel split alternates which part is transformed
    couplings = [m for m in rgb.layers if isinstance(m, Coupling)]
    assert (couplings[0].moved, couplings[1].moved) == (slice(1, 3), slice(0, 1))
    # "alternate": checkerboard and channel splits in turn, each kind alternating its own parity
    mixed = [m for m in glow_layer(image_shape=(3, 4, 4), depth=4, hidden_channels=4, split="alternate").layers if isinstance(m, Coupling)]
    assert [(m.split, m.parity) for m in mixed] == [("checkerboard", 0), ("channel", 0), ("checkerboard", 1), ("channel", 1)]
    with pytest.raises(ValueError, match="alternate"):
        glow_layer(image_shape=(1, 4, 4), depth=2, hidden_channels=4, split="alternate")


def test_check_bijection_catches_a_wrong_log_det():
    class Wrong(torch.nn.Module):
        def forward(self, x):
            return 2 * x, x.new_zeros(x.shape[0])  # log-det should be D log 2

        def inverse(self, y):
            return y / 2, y.new_zeros(y.shape[0])

    with pytest.raises(AssertionError, match="autograd"):
        check_bijection(Wrong(), torch.randn(2, 1, 2, 2))


def test_check_bijection_catches_a_wrong_inverse():
    class Wrong(torch.nn.Module):
        def forward(self, x):
            return x + 1, x.new_zeros(x.shape[0])

        def inverse(self, y):
            return y - 0.999, y.new_zeros(y.shape[0])

    with pytest.raises(AssertionError, match="inverse"):
        check_bijection(Wrong(), torch.randn(2, 1, 2, 2))


def test_the_1x1_convolution_inverts_through_its_lu_factors_like_a_general_inverse():
    torch.manual_seed(3)
    conv = InvConv1x1(5, lu=True)
    with torch.no_grad():
        for p in (conv.lower, conv.upper, conv.log_s):
            p.normal_(0, 0.5)
        conv.perm.copy_(torch.eye(5)[torch.randperm(5)])
        conv.sign_s.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]))
    w, _ = conv._weight()
    expected = torch.linalg.inv(w.double())
    assert torch.allclose(conv.inverse_weight().double(), expected, atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 5, 3, 3)
    assert torch.allclose(conv.inverse(conv(x)[0])[0], x, atol=1e-5)


# ---------------------------------------------------------------- conditional flows


def _base(shape, seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, *shape, generator=g), torch.exp(0.3 * torch.randn(batch, *shape, generator=g))


def test_conditional_glow_layer_is_the_identity_at_initialisation_for_every_condition():
    flow = glow_layer(
        image_shape=(3, 4, 4), depth=3, hidden_channels=8, split="checkerboard", coupling="affine", conditional=True, condition_channels=3
    )
    x = 3 * torch.randn(3, 3, 4, 4)
    for seed in (1, 2):
        with torch.no_grad():
            y, ld = flow.eval()(x, condition=_base((3, 4, 4), seed))
            back, ldi = flow.inverse(x, condition=_base((3, 4, 4), seed))
        assert torch.equal(y, x) and torch.equal(back, x)
        assert torch.equal(ld, torch.zeros(3)) and torch.equal(ldi, torch.zeros(3))


def _plain_glow_with_paths_zeroed(glow, *, features: int):
    """Zero every path from ``glow``'s condition or positional maps (their projections, the
    couplings' condition inputs, the top prior's and the split priors' weights on the ``features``
    feature channels, their last inputs) and return the plain multi-scale Glow (3x4x4, 2 levels
    of 2 steps, width 8) holding the rest of ``glow``'s weights."""
    paths = ("condition_in", "project", "top_prior")
    with torch.no_grad():
        for name, p in glow.named_parameters():
            if any(t in name for t in paths):
                p.zero_()
            elif name.endswith("split_prior.weight"):
                p[:, -features:].zero_()
    plain = multiscale_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8).eval()
    shared = {k: v for k, v in glow.state_dict().items() if k != "position" and not any(t in k for t in paths)}
    plain.load_state_dict({k: v[:, :-features] if k.endswith("split_prior.weight") else v for k, v in shared.items()})
    return plain


def test_conditional_glow_is_the_decoder_affine_map_of_a_glow_and_the_standalone_glow_when_it_ignores_the_condition():
    """f(x; c) = mean + std * G(x; c), log|det df/dx| = log|det dG/dx| + sum log std: with every
    path from the condition zeroed, G is the standalone multi-scale Glow with the same weights, so
    the bound's Gaussian term cancels into the Glow's own N(0, I) density (model.md)."""
    torch.manual_seed(0)
    cond = perturb(conditional_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, condition_channels=3), scale=0.3, seed=4).eval()
    plain = _plain_glow_with_paths_zeroed(cond, features=3)
    mean, std = _base((3, 4, 4), 5)
    x = torch.rand(3, 3, 4, 4)
    with torch.no_grad():
        f, ld = cond(x, condition=(mean, std))
        g, ld_g = plain(x)
        back, ld_back = cond.inverse(f, condition=(mean, std))
    assert torch.allclose(f, mean + std * g, atol=1e-5)
    assert torch.allclose(ld, ld_g + torch.log(std).flatten(1).sum(1), atol=1e-4)
    log_p = gaussian_log_prob(f, mean, std) + ld
    glow_log_p = -0.5 * (g * g).flatten(1).sum(1) - 0.5 * 48 * math.log(2 * math.pi) + ld_g
    assert torch.allclose(log_p, glow_log_p, atol=1e-3)
    assert torch.allclose(back, x, atol=1e-5) and torch.allclose(ld_back, -ld, atol=1e-4)


def test_positional_glow_inverts_matches_autograd_and_learns_its_maps():
    """The standalone Glow with learned positional maps: a bijection whose log-det matches
    autograd's Jacobian, the same maps for every image (they do not depend on x, so the density
    stays exact), and the maps get a gradient from the likelihood."""
    glow = perturb(multiscale_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, positional_channels=3), scale=0.3, seed=4).eval()
    assert glow.position.shape == (1, 3, 4, 4)
    check_bijection(glow, torch.rand(3, 3, 4, 4))
    x = torch.rand(4, 3, 4, 4)
    z, log_det = glow(x)
    z1, log_det1 = glow(x[1:2])
    assert torch.allclose(z[1:2], z1, atol=1e-6) and torch.allclose(log_det[1:2], log_det1, atol=1e-5)  # one image's output is its own
    (0.5 * z.square().sum() - log_det.sum()).backward()
    assert glow.position.grad is not None and glow.position.grad.abs().sum() > 0


def test_positional_glow_whose_maps_are_unread_is_the_paper_glow():
    """With the projections of its positional maps at zero (and the split priors' weights on them),
    the positional Glow is the plain multi-scale Glow with the same weights: the maps add only the
    path from a learned constant."""
    torch.manual_seed(0)
    pos = perturb(multiscale_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, positional_channels=3), scale=0.3, seed=4).eval()
    plain = _plain_glow_with_paths_zeroed(pos, features=3)
    x = torch.rand(3, 3, 4, 4)
    with torch.no_grad():
        (z, ld), (z_plain, ld_plain) = pos(x), plain(x)
    assert torch.allclose(z, z_plain, atol=1e-5) and torch.allclose(ld, ld_plain, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("other_batch", [1, 4])
def test_add_over_batch_is_the_broadcast_addition_with_its_gradients(channels_last, other_batch):
    """add_over_batch adds in its own memory order; values and both gradients are plain autograd's."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3, 2).contiguous(memory_format=fmt).requires_grad_()
    other = torch.randn(other_batch, 5, 3, 2).contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(4, 5, 3, 2)
    out = add_over_batch(x * 1.0, other)  # in place on a non-leaf, as in the coupling
    assert out.is_contiguous(memory_format=fmt)
    (out * weight).sum().backward()
    gx, go = x.grad.clone(), other.grad.clone()
    x.grad = other.grad = None
    ref = x * 1.0 + other
    (ref * weight).sum().backward()
    assert torch.allclose(out, ref) and torch.allclose(gx, x.grad) and torch.allclose(go, other.grad, atol=1e-6)


def test_conditional_glow_with_positional_maps_inverts_matches_autograd_and_learns_its_maps():
    """The conditional flow decoder with learned positional maps beside the decoder's output: for a
    fixed condition a bijection whose log-det matches autograd's Jacobian, one image's output is
    its own, and the maps get a gradient."""
    glow = perturb(
        conditional_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, condition_channels=3, positional_channels=2), scale=0.3, seed=4
    ).eval()
    assert glow.position.shape == (1, 2, 4, 4)
    mean, std = _base((3, 4, 4), 5)
    check_bijection(WithCondition(glow, (mean[:1], std[:1])), torch.rand(2, 3, 4, 4))
    x = torch.rand(3, 3, 4, 4)
    f, log_det = glow(x, condition=(mean, std))
    f1, log_det1 = glow(x[1:2], condition=(mean[1:2], std[1:2]))
    assert torch.allclose(f[1:2], f1, atol=1e-5) and torch.allclose(log_det[1:2], log_det1, atol=1e-4)
    (-(gaussian_log_prob(f, mean, std) + log_det).sum()).backward()
    assert glow.position.grad is not None and glow.position.grad.abs().sum() > 0


def test_conditional_glow_whose_positional_maps_are_unread_is_the_conditional_glow():
    """With each level's projection weights on the positional maps at zero (the maps are stacked
    after (g_mu, log g_sigma), and squeezing keeps each input channel's four sub-pixels together,
    so they are the last 4**level * P inputs), the flow is the conditional Glow without them."""
    torch.manual_seed(0)
    kw = {"image_shape": (3, 4, 4), "levels": 2, "steps": 2, "hidden_channels": 8, "condition_channels": 3}
    pos = perturb(conditional_glow(**kw, positional_channels=2), scale=0.3, seed=4).eval()
    cond = conditional_glow(**kw).eval()
    state = {}
    with torch.no_grad():
        for k, v in pos.state_dict().items():
            if k == "position":
                continue
            if k.endswith("project.weight"):
                kept = cond.state_dict()[k].shape[1]
                v[:, kept:].zero_()
                v = v[:, :kept]
            state[k] = v
    cond.load_state_dict(state)
    mean, std = _base((3, 4, 4), 6)
    x = torch.rand(3, 3, 4, 4)
    with torch.no_grad():
        (f, ld), (f_cond, ld_cond) = pos(x, condition=(mean, std)), cond(x, condition=(mean, std))
    assert torch.allclose(f, f_cond, atol=1e-5) and torch.allclose(ld, ld_cond, atol=1e-4)


class _FixedFeatures(torch.nn.Module):
    """A conditional coupling with its condition feature maps held fixed (broadcast to the batch)."""

    def __init__(self, coupling, features):
        super().__init__()
        self.coupling = coupling
        self.register_buffer("features", features)

    def forward(self, x):
        return self.coupling(x, self.features.expand(x.shape[0], -1, -1, -1))

    def inverse(self, y):
        return self.coupling.inverse(y, self.features.expand(y.shape[0], -1, -1, -1))


def test_conditional_coupling_inverts_and_matches_autograd_at_a_fixed_condition():
    for split in ("channel", "checkerboard"):
        for scale in ("none", "tanh", "sigmoid"):
            coupling = perturb(Coupling((3, 4, 4), hidden=8, parity=1, split=split, scale=scale, condition_channels=2), scale=0.3)
            check_bijection(_FixedFeatures(coupling, torch.randn(1, 2, 4, 4)), torch.randn(3, 3, 4, 4))


def test_a_conditional_coupling_without_its_condition_is_refused():
    coupling = Coupling((3, 4, 4), hidden=8, parity=0, split="channel", condition_channels=2)
    with pytest.raises(ValueError, match="conditional"):
        coupling(torch.randn(2, 3, 4, 4))


def _scale_bias(coupling: Coupling, value: float) -> Coupling:
    """The coupling with its network's log-scale outputs pinned at ``value`` (the shift at 0)."""
    last = coupling.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[1::2] = value
    return coupling


@pytest.mark.parametrize("m", [0.05, 0.5])
def test_affine_coupling_scale_floor_is_the_closed_form(m):
    """s = m + (1 - m) sigmoid(raw + 2): at raw = 0 that is m + (1 - m) * 0.8808; at raw = -60 the
    scale is the floor m, the inverse multiplies by exactly 1/m and the log-det is -n log(1/m),
    where Glow's scale (m = 0) multiplies by 1 / sigmoid(-58), about 1.5e25."""
    y = torch.randn(2, 4, 4, 4)
    for raw, s in ((0.0, m + (1 - m) * torch.sigmoid(torch.tensor(2.0)).item()), (-60.0, m)):
        coupling = _scale_bias(Coupling((4, 4, 4), hidden=8, parity=0, split="channel", scale="sigmoid", min_scale=m), raw)
        x, log_det = coupling.inverse(y)
        assert torch.allclose(x[:, 2:], y[:, 2:] / s, rtol=1e-5) and torch.equal(x[:, :2], y[:, :2])
        assert torch.allclose(log_det, torch.full((2,), -32 * math.log(s)), rtol=1e-5)
        back, log_det_fwd = coupling(x)
        assert torch.allclose(back, y, rtol=1e-5, atol=1e-6) and torch.allclose(log_det_fwd, -log_det, rtol=1e-5)
    glow_scale = _scale_bias(Coupling((4, 4, 4), hidden=8, parity=0, split="channel", scale="sigmoid"), -60.0)
    assert glow_scale.inverse(y)[0][:, 2:].abs().max() > 1e20


def test_a_scale_floor_keeps_the_glow_inverse_finite_where_glow_scale_diverges():
    """Every coupling of a multi-scale Glow pinned at a log-scale output of -60 (as off the data,
    where sampling goes): with Glow's scale the inverse of a standard normal draw overflows to
    non-finite values; with a floor of 0.05 it stays finite, expanded by at most 20 per coupling."""

    def pinned(min_scale):
        torch.manual_seed(0)
        glow = multiscale_glow(image_shape=(3, 8, 8), levels=2, steps=4, hidden_channels=8, min_scale=min_scale).eval()
        for module in glow.modules():
            if isinstance(module, Coupling):
                _scale_bias(module, -60.0)
        return glow

    z = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.isfinite(pinned(0.0).inverse(z)[0]).all()
        x, _ = pinned(0.05).inverse(z)
    assert torch.isfinite(x).all()


def test_a_scale_floor_is_refused_where_there_is_no_sigmoid_scale():
    with pytest.raises(ValueError, match="min_scale"):
        Coupling((3, 4, 4), hidden=8, parity=0, split="channel", scale="tanh", min_scale=0.1)
    with pytest.raises(ValueError, match="min_scale"):
        Coupling((3, 4, 4), hidden=8, parity=0, split="channel", scale="sigmoid", min_scale=1.0)
    with pytest.raises(ValueError, match="additive"):
        multiscale_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, coupling="additive", min_scale=0.1)
    with pytest.raises(ValueError, match="additive"):
        conditional_glow(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, coupling="additive", min_scale=0.1)


def test_the_glow_factories_give_every_coupling_the_floor():
    for factory in (multiscale_glow, conditional_glow):
        glow = factory(image_shape=(3, 4, 4), levels=2, steps=2, hidden_channels=8, min_scale=0.2)
        assert {m.min_scale for m in glow.modules() if isinstance(m, Coupling)} == {0.2}


def test_the_diverged_warning_suggests_a_floor_only_where_the_couplings_have_none(capsys):
    from vaeflow_cli.model.sampling import unfloored, warn_diverged

    kw = {"image_shape": (3, 4, 4), "levels": 2, "steps": 2, "hidden_channels": 8}
    assert unfloored(multiscale_glow(**kw)) and unfloored(conditional_glow(**kw))
    assert not unfloored(multiscale_glow(**kw, min_scale=0.05)) and not unfloored(multiscale_glow(**kw, coupling="additive"))
    assert not unfloored(glow_layer(image_shape=(3, 4, 4), depth=2, hidden_channels=8, coupling="affine"))  # a tanh log-scale is bounded
    warn_diverged(multiscale_glow(**kw), 1, 4, 0.5)
    warn_diverged(multiscale_glow(**kw, min_scale=0.05), 1, 4, 0.5)
    warn_diverged(multiscale_glow(**kw), 0, 4, 0.5)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "min_scale" in err[0] and "min_scale" not in err[1], err
