"""evaluate (bpd, IWAE, FID) and timing."""

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli, write_idx
from vaeflow_cli import config as config_mod
from vaeflow_cli import fid
from vaeflow_cli.evaluate import evaluate_run
from vaeflow_cli.train import train_phase


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digits):
    """A tiny two-phase run on 96 training / 32 test digits."""
    tmp = tmp_path_factory.mktemp("evalrun")
    root = tmp / "mnist"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", digits[:96])
    write_idx(root / "t10k-images-idx3-ubyte", digits[96:128])
    path = tmp / "tiny.toml"
    path.write_text(TINY.format(root=root, run=tmp / "run"))
    cfg = config_mod.resolve(path)
    train_phase(cfg, tmp / "run", "vae", progress=False)
    train_phase(cfg, tmp / "run", "glow", progress=False)
    return tmp / "run"


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    """A weights file of the real file's keys and shapes, made here (random values): exercises the
    whole FID pipeline; it is not the standard network, so evaluate marks it non-standard."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
         mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    state = net.state_dict()
    for k, v in state.items():
        if k.endswith("conv.weight"):
            torch.nn.init.kaiming_normal_(v, nonlinearity="relu")  # features of order 1, not 1e-8
    path = tmp_path_factory.mktemp("weights") / "inception-test.pth"
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- likelihood bounds


def test_bpd_and_iwae_bounds_of_both_models(trained_run):
    r = evaluate_run(trained_run, metrics=["bpd", "iwae"], iwae_k=16)
    for model in ("vae", "full"):
        elbo, iwae = r[f"bpd_elbo_{model}"], r[f"bpd_iwae_{model}"]
        assert math.isfinite(elbo) and math.isfinite(iwae)
        assert iwae <= elbo  # a tighter bound: fewer bits
    # the ELBO number is the one training logged for the last epoch (same noise, same images)
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert r["bpd_elbo_full"] == pytest.approx(metrics[-1]["test_bpd"], rel=1e-6)
    assert r["iwae_k"] == 16 and r["images"] == 32 and r["split"] == "test"
    saved = json.loads((trained_run / "eval" / "evaluate-test.json").read_text())
    assert saved["bpd_iwae_full"] == r["bpd_iwae_full"]
    assert "<=" in (trained_run / "eval" / "evaluate-test.txt").read_text()


def test_iwae_tightens_with_k_and_k1_estimates_the_elbo(trained_run):
    from vaeflow_cli.data import load_split
    from vaeflow_cli.likelihood import held_out_bpd, iwae_bpd
    from vaeflow_cli.runs import load_run_model

    model, cfg, _ = load_run_model(trained_run)
    images = load_split(cfg, "test")
    cpu = torch.device("cpu")
    k1 = np.mean([iwae_bpd(model, images, k=1, seed=s, use_flow=True, device=cpu) for s in range(8)])
    elbo = np.mean([held_out_bpd(model, images, seed=s, use_flow=True, device=cpu) for s in range(8)])
    assert k1 == pytest.approx(elbo, abs=0.05)  # same expectation, different estimators of the entropy
    k4, k64 = (iwae_bpd(model, images, k=k, seed=0, use_flow=True, device=cpu) for k in (4, 64))
    assert k64 < k4 < k1


# ---------------------------------------------------------------- FID


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    # diagonal covariances: sum (mu1 - mu2)^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    d1, d2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((m1 - m2) ** 2).sum() + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum()
    assert fid.frechet_distance(m1, np.diag(d1), m2, np.diag(d2)) == pytest.approx(expected, rel=1e-10)
    # general covariances: scipy's matrix square root of S1 S2, as pytorch-fid computes it
    from scipy import linalg

    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.trace(s1 + s2 - 2 * covmean)
    assert fid.frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(expected, rel=1e-8)
    # identical Gaussians are at distance 0, and a shift adds its squared length
    assert fid.frechet_distance(m1, np.diag(d1), m1, np.diag(d1)) == pytest.approx(0, abs=1e-10)
    assert fid.frechet_distance(m1, np.diag(d1), m1 + 2, np.diag(d1)) == pytest.approx(4 * 5, rel=1e-10)
    # from samples: the statistics use the unbiased covariance
    x = rng.normal(size=(50, 3))
    mu, sigma = fid.statistics(x)
    assert np.allclose(sigma, np.cov(x.T)) and np.allclose(mu, x.mean(0))


def test_fid_end_to_end_with_a_locally_made_weights_file(trained_run, local_weights):
    r = evaluate_run(trained_run, metrics=["fid"], n_samples=24, temperatures=[0.0, 0.5, 1.0],
                     fid_weights=local_weights)
    assert set(r["fid"]) == {"0", "0.5", "1"} and all(v > 0 and math.isfinite(v) for v in r["fid"].values())
    assert r["fid_model"] == "full" and r["n_samples"] == 24
    assert r["fid_weights"]["standard"] is False and len(r["fid_weights"]["sha256"]) == 64
    assert r["versions"]["torch-fidelity"]
    plot = trained_run / "eval" / "fid-temperature-test.png"
    assert r["fid_plot"] == str(plot) and plot.read_bytes().startswith(b"\x89PNG")
    stats = list((trained_run / "eval").glob("fid-stats-test-*.npz"))
    assert len(stats) == 1
    # the cached statistics are reused and give the same number; the held-out set against itself is ~0
    again = evaluate_run(trained_run, metrics=["fid"], n_samples=24, temperatures=[0.5], fid_weights=local_weights)
    assert again["fid"] == pytest.approx(r["fid"]["0.5"], rel=1e-9)
    net = fid.build_extractor(local_weights)
    from vaeflow_cli.data import load_split

    real = load_split(config_mod.resolve(trained_run / "config.toml"), "test")
    mu, sigma = fid.statistics(fid.features(net, real))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-5 * np.trace(sigma)  # rank-deficient: rounding only


def test_fid_without_weights_fails_with_one_clear_line(trained_run):
    env = {k: v for k, v in os.environ.items() if k != fid.WEIGHTS_ENV}
    proc = run_cli("evaluate", "--run", trained_run, "--metrics", "fid", env={**env, fid.WEIGHTS_ENV: ""}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fid.WEIGHTS_FILE in lines[0] and "--fid-weights" in lines[0]
    proc = run_cli("evaluate", "--run", trained_run, "--metrics", "fid", "--fid-weights", trained_run / "nope.pth", check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("evaluate", "--run", trained_run, "--metrics", "bpd,fdi", check=False)
    assert proc.returncode == 2 and "fdi" in proc.stderr


def test_evaluate_json_on_stdout(trained_run):
    out = run_cli("evaluate", "--run", trained_run, "--metrics", "bpd", "--json").stdout
    r = json.loads(out)
    assert {"bpd_elbo_vae", "bpd_elbo_full", "split", "versions"} <= set(r)


# ---------------------------------------------------------------- timing


def test_timing_gives_finite_times_for_all_three_models(tiny_config):
    out = run_cli("timing", "--config", tiny_config, "--steps", "2", "--warmup", "1", "--json",
                  "--glow-levels", "2", "--glow-steps", "2", "--glow-width", "8").stdout
    r = json.loads(out)
    for key in ("vae_s_per_epoch", "glow_layer_s_per_epoch", "glow_baseline_s_per_epoch", "speedup"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert r["batch_size"] == 32 and r["image_shape"] == [1, 28, 28] and r["steps_per_epoch"] == 3
    assert r["speedup"] == pytest.approx(r["glow_baseline_s_per_epoch"] / ((r["vae_s_per_epoch"] + r["glow_layer_s_per_epoch"]) / 2))


# ---------------------------------------------------------------- the paper's figures and joint training


def test_figure4_and_temperature_figures_have_the_documented_layout(trained_run):
    from PIL import Image

    from vaeflow_cli.runs import load_run_model
    from vaeflow_cli.sampling import compare_grid, temperature_grid

    path = run_cli("sample", "--run", trained_run, "--compare", "--n", "3", "--per-z", "4").stdout.decode().strip()
    assert Image.open(path).size == (5 * 30 + 2, 3 * 30 + 2)  # rows: z; columns: VAE mean + 4 samples
    path = run_cli("sample", "--run", trained_run, "--temperatures", "0,0.5,1", "--n", "4").stdout.decode().strip()
    assert Image.open(path).size == (4 * 30 + 2, 3 * 30 + 2)  # rows: T; columns: the same 4 latents
    model, _, _ = load_run_model(trained_run)
    grid = compare_grid(model, rows=2, per_z=3, seed=5)
    g = torch.Generator().manual_seed(5)
    z = model.prior.from_base(torch.randn(2, model.latent_dim, generator=g))
    from vaeflow_cli.images import to_uint8

    with torch.no_grad():
        assert np.array_equal(grid[:, 0], to_uint8(model.decode(z, vae_only=True)))  # column 0: g_mu(z)
        rows = temperature_grid(model, temperatures=[0.0, 1.0], n=2, seed=5)
        assert np.array_equal(rows[0], to_uint8(model.decode(z, temperature=0.0)))  # T = 0: f^-1(g_mu(z))
    assert not np.array_equal(rows[0], rows[1])


def test_joint_training_runs_a_step_and_changes_every_parameter(trained_run, tmp_path):
    import shutil

    from vaeflow_cli.runs import RunDir
    from vaeflow_cli.train import Interrupted

    run = tmp_path / "joint"
    shutil.copytree(trained_run, run)
    cfg = config_mod.resolve(run / "config.toml", ["train.joint.lr=1e-3"])
    with pytest.raises(Interrupted):
        train_phase(cfg, run, "joint", progress=False, max_steps=1)
    before, after = RunDir(run).load_checkpoint("glow")["model"], RunDir(run).load_checkpoint("joint")["model"]
    from vaeflow_cli.runs import load_run_model

    model, _, phase = load_run_model(run)
    assert phase == "joint"
    names = [n for n, _ in model.named_parameters()]
    assert {n.split(".")[0] for n in names} == {"encoder", "decoder", "prior", "flow"}
    # a 1-channel 1x1 convolution's strictly lower/upper LU parts are empty (masked): no gradient
    masked = {n for n in names if n.endswith((".lower", ".upper")) and before[n].numel() == 1}
    unchanged = [n for n in names if n not in masked and torch.equal(before[n], after[n])]
    assert not unchanged, f"joint training left {unchanged} unchanged"


def test_digit_fd_and_training_curves(trained_run):
    r = evaluate_run(trained_run, metrics=["digit_fd"], n_samples=64)
    assert r["digit_fd_classifier_accuracy"] > 0.9  # the features come from a working classifier
    assert math.isfinite(r["digit_fd_vae"]) and math.isfinite(r["digit_fd_full"]) and r["digit_fd_full"] > 0
    assert (trained_run / "eval" / "digit-cnn.pt").exists()
    from vaeflow_cli import digitfd
    from vaeflow_cli.data import load_split

    net, _ = digitfd.load_or_train(trained_run / "eval" / "digit-cnn.pt")
    real = load_split(config_mod.resolve(trained_run / "config.toml"), "test")
    mu, sigma = fid.statistics(digitfd.features(net, real))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    path = run_cli("plot", "--run", trained_run).stdout.decode().strip()
    assert path.endswith("training-curves.png") and open(path, "rb").read(4) == b"\x89PNG"
