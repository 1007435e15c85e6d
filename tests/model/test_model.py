import math

import numpy as np
import pytest
import torch
from torch import nn

from vaeflow_cli.api import load_run
from vaeflow_cli.config import core as config_mod
from vaeflow_cli.data.dequantization import dequantize
from vaeflow_cli.data.images import to_uint8
from vaeflow_cli.data.splits import load_splits
from vaeflow_cli.evaluation.bounds import held_out_bpd
from vaeflow_cli.model.distributions import bits_per_dim, gaussian_log_prob
from vaeflow_cli.model.vaeflow import LogitTransform, VAEFlow, build_model, slerp
from vaeflow_cli.runtime.runs import RunDir
from vaeflow_cli.training.loop import Interrupted, train_phase
from vaeflow_plugins.glow import IdentityFlow
from vaeflow_plugins.priors import GaussianPrior

# ---------------------------------------------------------------- bits per dimension


def test_uniform_density_is_exactly_8_bits_per_dim():
    for dims in (1, 784, 3072):
        assert bits_per_dim(torch.zeros(3, dtype=torch.float64), dims).tolist() == [8.0, 8.0, 8.0]


class ConstantEncoder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.d = d
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, y):
        z = torch.zeros(y.shape[0], self.d) + 0 * self.dummy
        return z, z  # q(z|y) = N(0, I)


class ConstantDecoder(nn.Module):
    def __init__(self, shape, mean, std):
        super().__init__()
        self.shape, self.mean, self.std = shape, mean, std

    def forward(self, z):
        full = (z.shape[0], *self.shape)
        return torch.full(full, self.mean), torch.full(full, self.std)


def test_bound_matches_closed_form_for_a_known_gaussian_density():
    """q(z|y) = p(z) = N(0, I) and p(y|z) = N(0.5, 0.2^2) per pixel: ELBO = log N(y; 0.5, 0.2) exactly
    in expectation, so the bpd is a closed form computed here with math only."""
    shape, d = (1, 2, 3), 3
    model = VAEFlow(
        encoder=ConstantEncoder(d),
        decoder=ConstantDecoder(shape, 0.5, 0.2),
        prior=GaussianPrior(latent_dim=d),
        flow=IdentityFlow(image_shape=shape),
        image_shape=shape,
        latent_dim=d,
    )
    y = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.0]]).reshape(1, *shape)
    log_p = sum(-0.5 * ((v - 0.5) / 0.2) ** 2 - 0.5 * math.log(2 * math.pi) - math.log(0.2) for v in y.flatten().tolist())
    expected = (-log_p + 6 * math.log(256)) / (6 * math.log(2))
    b = model.bound(y.expand(20000, *shape), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(b.log_px_z, torch.tensor(log_p), atol=1e-4)
    assert abs(b.kl.mean().item()) < 0.05  # KL(N(0,I) || N(0,I)) = 0, estimated by one sample each
    assert abs(b.bpd.mean().item() - expected) < 0.01 * 3 / 6  # the KL noise, in bits per dim


def test_logit_transform_log_det_matches_autograd_and_inverts():
    t = LogitTransform(1e-6)
    y = torch.rand(3, 1, 3, 4, dtype=torch.float64) * 0.999
    x, log_det = t(y)
    back, inv_log_det = t.inverse(x)
    assert torch.allclose(back.double(), y, atol=1e-6)
    assert torch.allclose(log_det + inv_log_det, torch.zeros(3), atol=1e-4)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: torch.logit(1e-6 + (1 - 2e-6) * v), y[i].reshape(-1))
        assert torch.allclose(log_det[i].double(), torch.linalg.slogdet(jac)[1], rtol=1e-6)
    with pytest.raises(ValueError):
        LogitTransform(0.5)


def test_bound_in_logit_space_matches_a_closed_form():
    """With model.pixel_transform = "logit" the decoder's Gaussian is on t = logit(a + (1 - 2a) y):
    log p(y|z) = log N(t; m, s) + sum log dt/dy, computed here with math only."""
    shape, d, a = (1, 2, 2), 2, 1e-3
    model = VAEFlow(
        encoder=ConstantEncoder(d),
        decoder=ConstantDecoder(shape, -1.0, 2.0),
        prior=GaussianPrior(latent_dim=d),
        flow=IdentityFlow(image_shape=shape),
        image_shape=shape,
        latent_dim=d,
        transform=LogitTransform(a),
    )
    vals = [0.001, 0.25, 0.5, 0.999]
    log_p = 0.0
    for v in vals:
        p = a + (1 - 2 * a) * v
        t = math.log(p / (1 - p))
        log_p += -0.5 * ((t + 1.0) / 2.0) ** 2 - 0.5 * math.log(2 * math.pi) - math.log(2.0) + math.log((1 - 2 * a) / (p * (1 - p)))
    y = torch.tensor(vals).reshape(1, *shape)
    b = model.bound(y, generator=torch.Generator().manual_seed(0))
    assert abs(b.log_px_z.item() - log_p) < 1e-3
    assert abs(model.iwae_log_likelihood(y, k=4, generator=torch.Generator().manual_seed(0)).item() - log_p) < 1e-3  # q = p(z): w = p(y|z)
    # decoding maps back through the transform: the decoder mean -1 is sigmoid(-1) in pixel space
    img = model.decode(torch.zeros(1, d), vae_only=True)
    assert torch.allclose(img, torch.full((1, *shape), (torch.sigmoid(torch.tensor(-1.0)).item() - a) / (1 - 2 * a)), atol=1e-6)


class ShiftFlow(nn.Module):
    """f(x) = x + 1, log-det 0: a flow that is not the identity, to see whether it runs."""

    def forward(self, x):
        return x + 1.0, x.new_zeros(x.shape[0])

    def inverse(self, x):
        return x - 1.0, x.new_zeros(x.shape[0])


def test_the_models_use_flow_decides_whether_decode_and_the_bound_run_the_flow():
    shape, d = (1, 2, 2), 2
    model = VAEFlow(
        encoder=ConstantEncoder(d),
        decoder=ConstantDecoder(shape, 0.25, 0.1),
        prior=GaussianPrior(latent_dim=d),
        flow=ShiftFlow(),
        image_shape=shape,
        latent_dim=d,
    )
    z, y = torch.zeros(1, d), torch.full((1, *shape), 0.5)
    model.use_flow = False  # a phase-1 model: f is the identity and is not run
    assert torch.equal(model.decode(z, temperature=0.0), torch.full((1, *shape), 0.25))
    assert torch.equal(model.from_decoder_space(y), y) and torch.equal(model.to_decoder_space(y)[0], y)
    assert torch.equal(model.log_px_given_z(y, z), model.log_px_given_z(y, z, use_flow=False))
    model.use_flow = True
    assert torch.equal(model.decode(z, temperature=0.0), torch.full((1, *shape), -0.75))
    assert torch.equal(model.to_decoder_space(y)[0], y + 1.0)
    assert torch.equal(model.decode(z, temperature=0.0, vae_only=True), torch.full((1, *shape), 0.25))  # vae_only: g_mu, whatever the state


def test_gaussian_log_prob_matches_torch_distributions():
    x, m, s = torch.randn(4, 2, 3), torch.randn(4, 2, 3), torch.rand(4, 2, 3) + 0.1
    ref = torch.distributions.Normal(m, s).log_prob(x).sum((1, 2))
    assert torch.allclose(gaussian_log_prob(x, m, s), ref, atol=1e-5)


# ---------------------------------------------------------------- dequantization


def reference_dequantize(x, *, seed, epoch, indices):
    """An independent numpy implementation of the documented noise: with W = ceil(D / 4) words per
    image, word w of image i is splitmix64((i * W + w) XOR splitmix64(seed * golden XOR epoch)) and
    pixel 4w + l takes its 16-bit lane l."""
    golden, m1, m2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)

    def mix(v):
        v = v + golden
        v = (v ^ (v >> np.uint64(30))) * m1
        v = (v ^ (v >> np.uint64(27))) * m2
        return v ^ (v >> np.uint64(31))

    dims = int(np.prod(x.shape[1:]))
    words = -(-dims // 4)
    with np.errstate(over="ignore"):
        key = mix(np.uint64(seed) * golden ^ np.uint64(epoch))
        counter = np.asarray(indices, np.uint64)[:, None] * np.uint64(words) + np.arange(words, dtype=np.uint64)
        bits = mix(counter ^ key)  # (B, W)
        lanes = (bits[:, :, None] >> (np.uint64(16) * np.arange(4, dtype=np.uint64))) & np.uint64(0xFFFF)  # (B, W, 4)
        u = lanes.reshape(len(x), -1)[:, :dims].astype(np.float32) * np.float32(2.0**-16)
    return (x.astype(np.float32) + u.reshape(x.shape)) * np.float32(1 / 256)


def test_rust_dequantization_matches_the_reference_bit_for_bit_on_any_thread_count():
    x = np.random.RandomState(1).randint(0, 256, size=(37, 3, 5, 7)).astype(np.uint8)
    idx = np.random.RandomState(2).randint(0, 10**9, size=37)
    ref = reference_dequantize(x, seed=11, epoch=5, indices=idx)
    for threads in (0, 1, 2, 3):
        assert np.array_equal(dequantize(x, seed=11, epoch=5, indices=idx, threads=threads), ref)
    out = np.zeros_like(ref)
    assert dequantize(x, seed=11, epoch=5, indices=idx, out=out) is out and np.array_equal(out, ref)


def test_dequantization_is_in_the_bin_reproducible_and_centred():
    x = np.random.RandomState(0).randint(0, 256, size=(64, 3, 8, 8)).astype(np.uint8)
    x[0] = 255
    idx = np.arange(100, 164)
    y = dequantize(x, seed=3, epoch=2, indices=idx)
    assert y.dtype == np.float32
    assert (y >= x / 256.0).all() and (y < (x.astype(np.float64) + 1) / 256.0).all()
    # the same image gets the same noise whichever batch it is in
    part = dequantize(x[10:20], seed=3, epoch=2, indices=idx[10:20])
    assert np.array_equal(part, y[10:20])
    assert not np.array_equal(dequantize(x, seed=3, epoch=3, indices=idx), y)
    assert not np.array_equal(dequantize(x, seed=4, epoch=2, indices=idx), y)
    noise = y * 256.0 - x
    assert abs(noise.mean() - 0.5) < 0.01 and abs(noise.var() - 1 / 12) < 0.005


# ---------------------------------------------------------------- training


@pytest.fixture()
def tiny(tiny_config):
    return config_mod.resolve(tiny_config)


def test_elbo_is_finite_and_improves_over_a_few_steps(tiny):
    torch.manual_seed(0)
    data = load_splits(tiny)
    model = build_model(tiny, data.image_shape)
    before = held_out_bpd(model, data.train, seed=0, use_flow=False, device=torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    idx = np.arange(32)
    y = torch.from_numpy(dequantize(data.train[idx], seed=0, epoch=0, indices=idx))
    for _ in range(15):
        loss = model.bound(y, use_flow=False).bpd.mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_bpd(model, data.train, seed=0, use_flow=False, device=torch.device("cpu"))
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.1


@pytest.mark.parametrize("transform", ["none", "logit"])
def test_phase_two_starts_at_the_phase_one_bound_and_trains_only_the_glow_layer(tiny, tmp_path, transform):
    tiny = config_mod.resolve(base=tiny, overrides=[f"model.pixel_transform='{transform}'"])
    run = tmp_path / "two-phase"
    train_phase(tiny, run, "vae", progress=False)
    vae_state = {k: v.clone() for k, v in RunDir(run).load_checkpoint("vae")["model"].items()}
    train_phase(tiny, run, "glow", progress=False)
    records = RunDir(run).read_metrics()
    vae_final = [r for r in records if r["phase"] == "vae"][-1]["test_bpd"]
    glow_start = [r for r in records if r["phase"] == "glow" and r["epoch"] == 0][0]["test_bpd"]
    assert glow_start == pytest.approx(vae_final, abs=1e-6)
    glow_state = RunDir(run).load_checkpoint("glow")["model"]
    frozen = [k for k in vae_state if not k.startswith("flow.")]
    assert all(torch.equal(vae_state[k], glow_state[k]) for k in frozen)  # BN statistics included
    assert any(not torch.equal(vae_state[k], glow_state[k]) for k in vae_state if k.startswith("flow."))


def test_interrupted_training_resumes_exactly(tiny, tmp_path):
    tiny = config_mod.resolve(base=tiny, overrides=["train.threads=1"])  # bit for bit at a fixed thread count (docs/gpu.md, CPU threads)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train_phase(tiny, straight, "vae", progress=False)
    with pytest.raises(Interrupted):
        train_phase(tiny, broken, "vae", progress=False, max_steps=4)  # mid-way through epoch 2 of 2 (3 steps each)
    assert RunDir(broken).load_checkpoint("vae")["step"] == 1
    train_phase(tiny, broken, "vae", progress=False, resume=True)
    a, b = RunDir(straight).load_checkpoint("vae"), RunDir(broken).load_checkpoint("vae")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    timings = ("seconds", "data_wait_seconds", "data_wait_share")  # wall-clock measurements differ run to run
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timings} for r in rs]  # noqa: E731
    assert strip(RunDir(straight).read_metrics()) == strip(RunDir(broken).read_metrics())


@pytest.mark.parametrize("transform", ["none", "logit"])
def test_sampling_is_deterministic_under_a_seed_and_interpolation_hits_reconstructions(tiny, tmp_path, transform):
    tiny = config_mod.resolve(base=tiny, overrides=[f"model.pixel_transform='{transform}'"])
    run = tmp_path / "s"
    train_phase(tiny, run, "vae", progress=False)
    train_phase(tiny, run, "glow", progress=False)
    r = load_run(run, device="cpu")
    assert r.phase == "glow" and r.image_shape == (1, 28, 28)
    a = r.sample(6, temperature=0.5, seed=7)
    assert a.dtype == torch.float32 and a.shape == (6, 1, 28, 28) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, r.sample(6, temperature=0.5, seed=7))
    assert not torch.equal(a, r.sample(6, temperature=0.5, seed=8))
    vae = r.sample(6, seed=7, vae_only=True)
    assert not torch.equal(a, vae)

    imgs = load_splits(tiny).test[:2]
    path = r.interpolate(imgs[0], imgs[1], 5)
    rec = r.reconstruct(imgs)
    assert path.shape == (5, 1, 28, 28)
    # the same pixels (the float values differ in the last bits: other batch compositions)
    assert np.array_equal(to_uint8(path[[0, -1]]), to_uint8(rec))
    rows = r.interpolate_prior(2, 4, seed=0)
    assert rows.shape == (2, 4, 1, 28, 28)


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    path = slerp(a, b, torch.linspace(0, 1, 6))
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)


def test_device_dequantization_is_bit_identical_to_rust():
    from vaeflow_cli.data.dequantization import dequantize_on_device

    x = np.random.RandomState(3).randint(0, 256, size=(9, 3, 5, 3)).astype(np.uint8)
    idx = np.array([0, 5, 2**40, 7, 99, 3, 1, 2, 12345678901])
    for seed, epoch in ((0, 0), (7, 3), (2**40 + 1, 2**32 - 1)):
        want = dequantize(x, seed=seed, epoch=epoch, indices=idx)
        got = dequantize_on_device(torch.from_numpy(x), torch.from_numpy(idx), seed=seed, epoch=epoch).numpy()
        assert np.array_equal(got, want), (seed, epoch)


def test_training_with_device_dequantization_matches_host(tiny, tmp_path):
    host = dict(tiny, train={**tiny["train"], "dequantize": "host"})
    dev = dict(tiny, train={**tiny["train"], "dequantize": "device"})
    train_phase(host, tmp_path / "h", "vae", progress=False)
    train_phase(dev, tmp_path / "d", "vae", progress=False)
    a, b = RunDir(tmp_path / "h").load_checkpoint("vae"), RunDir(tmp_path / "d").load_checkpoint("vae")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_standalone_glow_baseline_trains_from_a_config_and_its_bpd_is_exact(tiny, tmp_path):
    """train-baseline trains [model.flow] alone; its per-epoch number is the exact likelihood
    (a flow has no bound gap), checked against log N(f(y); 0, I) + log_det computed here."""
    from vaeflow_cli.model.distributions import standard_normal_log_prob
    from vaeflow_cli.model.vaeflow import FlowModel

    tiny = config_mod.resolve(base=tiny, overrides=["train.baseline.epochs=2", "train.baseline.batch_size=32", "train.baseline.lr=1e-3"]).to_dict()
    tiny["model"]["flow"] = {"type": "multiscale-glow", "levels": 2, "steps": 2, "hidden_channels": 8, "coupling": "affine", "lu": True}
    tiny = config_mod.resolve(base=tiny)
    assert tiny.model.flow.name == "multiscale-glow"
    run = tmp_path / "baseline"
    result = train_phase(tiny, run, "baseline", progress=False)
    records = [r for r in RunDir(run).read_metrics() if r["phase"] == "baseline"]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["test_bpd"] < records[0]["test_bpd"]
    loaded = load_run(run, device="cpu")
    model = loaded.model
    assert loaded.phase == "baseline" and isinstance(model, FlowModel)
    data = load_splits(tiny)
    idx = np.arange(len(data.test))
    y = torch.from_numpy(dequantize(data.test, seed=0, epoch=2**32 - 1, indices=idx))
    with torch.no_grad():
        z, log_det = model.flow(y)
        expected = bits_per_dim(standard_normal_log_prob(z) + log_det, 784).mean().item()
    assert result.test_bpd == pytest.approx(expected, rel=1e-5)
    # the ActNorms were initialised from data and are saved initialised
    assert all(v.item() for k, v in RunDir(run).load_checkpoint("baseline")["model"].items() if k.endswith("initialized"))
    samples = to_uint8(loaded.sample(3, temperature=0.7, seed=0))
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == np.uint8
    # a standalone flow's run has no VAE: phase 1 or 2 there is one line, before anything is written
    from vaeflow_cli.errors import VaeflowError

    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for phase in ("vae", "glow"):
        with pytest.raises(VaeflowError, match=r"holds a standalone flow \(vaeflow train-baseline\).*choose a new --run"):
            train_phase(None, run, phase, progress=False)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_to_uint8_floors_clamps_and_maps_non_finite_values_to_fixed_pixels():
    from vaeflow_cli.data.images import to_uint8

    x = torch.tensor([[[[0.0, 0.5, 0.999, 1.5, -0.2, float("nan"), float("inf"), float("-inf")]]]])
    assert to_uint8(x).tolist() == [[[[0, 128, 255, 255, 0, 0, 255, 0]]]]


def test_training_loss_is_the_bound_unless_a_kl_warm_up_or_free_bits_reweight_its_kl_term():
    from vaeflow_cli.model.vaeflow import Bound, training_loss
    from vaeflow_cli.training.setup import kl_weight

    g = torch.Generator().manual_seed(0)
    log_px = -torch.rand(4, generator=g) * 1000
    log_pz, entropy = -torch.rand(4, generator=g) * 50, torch.rand(4, generator=g) * 10
    bound = Bound(log_px_z=log_px, log_pz=log_pz, entropy=entropy, dims=12)
    assert torch.equal(training_loss(bound), bound.bpd.float().mean())  # bit for bit: the default loss is the bound
    kl = -(log_pz + entropy)
    scale = 12 * math.log(2.0)
    assert torch.allclose(bound.latent_bpd + bound.pixel_bpd, bound.bpd, atol=1e-5)
    assert torch.allclose(training_loss(bound, kl_weight=0.25), bound.pixel_bpd.mean() + 0.25 * kl.mean() / scale, atol=1e-6)
    free = float(kl.mean()) + 5.0  # below the free bits the KL term is constant: no gradient through it
    z = torch.zeros(4, requires_grad=True)
    training_loss(Bound(log_px_z=log_px, log_pz=log_pz + z, entropy=entropy, dims=12), free_bits=free).backward()
    assert torch.equal(z.grad, torch.zeros(4))
    assert training_loss(bound, free_bits=free).item() == pytest.approx((bound.pixel_bpd.mean() + free / scale).item(), rel=1e-6)
    assert [kl_weight(4, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


class _Diverging(torch.nn.Module):
    """A model whose sampler returns NaN in the first image of each batch and +inf in the second."""

    image_shape = (1, 2, 2)

    def sample(self, m, *, temperature, vae_only, generator):
        x = torch.rand(m, *self.image_shape, generator=generator)
        x[0::3, 0, 0, 0] = float("nan")
        x[1::3, 0, 1, 1] = float("inf")
        return x


def test_samples_whose_inverse_diverged_are_drawn_and_counted_in_one_warning_line(capsys):
    from vaeflow_cli.model.sampling import sample

    out = sample(_Diverging(), 7, temperature=0.7, seed=0, batch=3)  # batches of 3, 3 and 1: 2 + 2 + 1 diverged
    assert out.shape == (7, 1, 2, 2) and bool(torch.isfinite(out).all())
    assert out[0, 0, 0, 0] == 0.0 and out[1, 0, 1, 1] == 1.0 and out[6, 0, 0, 0] == 0.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning: 5 of 7 samples at T=0.7 have non-finite pixels (the flow's inverse diverged)" in err[0], err
    from vaeflow_cli.evaluation.samples import generate

    counts = []
    images = generate(_Diverging(), 7, temperature=1.0, seed=0, batch=3, diverged_counts=counts)
    assert counts == [5] and images.dtype == np.uint8 and images[0, 0, 0, 0] == 0 and images[1, 0, 1, 1] == 255
    capsys.readouterr()
    finite = _Diverging()
    finite.sample = lambda m, **kw: torch.rand(m, 1, 2, 2, generator=kw["generator"])
    sample(finite, 4, temperature=0.5, seed=0)
    assert capsys.readouterr().err == ""


def test_every_figure_counts_the_images_whose_inverse_diverged(tiny, capsys):
    """The Figure-4 comparison, the temperature sweep, both interpolations and the reconstructions
    draw a diverged image as the samples do (0 for NaN) and say how many in one warning line each;
    the VAE means of the comparison (no flow) are not counted."""
    from vaeflow_cli.model import sampling

    model = build_model(tiny, load_splits(tiny).image_shape).eval()
    plain = model.from_decoder_space

    def first_diverges(xbar, *, use_flow=None, condition=None):
        x = plain(xbar, use_flow=use_flow, condition=condition)
        if use_flow is not False:
            x[0] = float("nan")
        return x

    model.from_decoder_space = first_diverges
    images = np.zeros((2, *model.image_shape), dtype=np.uint8)
    grids = {
        "1 of 6 samples at T=0.5": sampling.compare_grid(model, rows=2, per_z=3, temperature=0.5),
        "1 of 3 samples at T=0.7": sampling.temperature_grid(model, temperatures=[0.7, 1.0], n=3),
        "1 of 8 frames at T=0": sampling.interpolate_prior(model, pairs=2, steps=4),
        "1 of 5 frames at T=0 ": sampling.interpolate_images(model, images[0], images[1], steps=5),
        "1 of 2 reconstructions at T=0": sampling.reconstruct(model, images),
    }
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and "1 of 3 samples at T=1 " in err[2], err  # the sweep warns once per temperature
    for (expected, grid), line in zip(grids.items(), [err[0], err[1], err[3], err[4], err[5]], strict=True):
        assert expected in line and "non-finite pixels" in line, (expected, line)
        assert bool(torch.isfinite(grid).all())
    compare = grids["1 of 6 samples at T=0.5"]
    model.from_decoder_space = plain
    finite = sampling.compare_grid(model, rows=2, per_z=3, temperature=0.5)
    assert torch.equal(compare[:, 0], finite[:, 0]) and torch.equal(compare[1], finite[1])  # the VAE means and the other row as drawn
    assert float(compare[0, 1].abs().sum()) == 0.0  # the first sample drawn black
    assert capsys.readouterr().err == ""
