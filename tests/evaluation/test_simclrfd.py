"""simclr_fd: SimCLR's loss and augmentations against independent computations, and the metric end
to end in ``evaluate`` on a tiny colour run (the network trained in seconds: EPOCHS, BATCH and SIDE
patched down), its cache and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import call_main
from test_evaluate import train_colour_run  # the tiny run of cifar_fd's test: 8x8 colour images in class folders

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation import fid, simclrfd
from vaeflow_cli.evaluation.evaluate import evaluate_run


def test_nt_xent_is_the_mean_over_rows_of_minus_log_softmax_of_the_positive():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    t = 0.3
    rows = [r / r.norm() for r in [*a, *b]]  # the 2B projections, unit length
    n = len(a)
    losses = []
    for i, zi in enumerate(rows):
        positive = (i + n) % (2 * n)  # the other view of the same image
        logits = {j: float(zi @ zj) / t for j, zj in enumerate(rows) if j != i}
        losses.append(-(logits[positive] - math.log(sum(math.exp(v) for v in logits.values()))))
    assert simclrfd.nt_xent(a, b, temperature=t).item() == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    # two identical views far from every other image: the loss is near its floor, log(1) = 0
    eye = torch.eye(4, dtype=torch.float64) * 10
    assert simclrfd.nt_xent(eye, eye, temperature=0.05).item() < 1e-6


def test_augment_keeps_the_shape_and_the_value_range_and_is_seeded():
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1)) - 0.5
    out = simclrfd.augment(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert out.min() >= -0.5 and out.max() <= 0.5
    assert torch.equal(out, simclrfd.augment(x, torch.Generator().manual_seed(2)))  # the generator decides
    g = torch.Generator().manual_seed(2)
    first, second = simclrfd.augment(x, g), simclrfd.augment(x, g)
    assert not torch.equal(first, second) and not torch.equal(first, x)  # two views differ, and differ from the image
    extreme = simclrfd.augment(torch.full((4, 3, 8, 8), 0.5), torch.Generator().manual_seed(3))  # white: still in range
    assert extreme.min() >= -0.5 and extreme.max() <= 0.5


@pytest.fixture()
def small_network(monkeypatch):
    """The network trained in seconds: two epochs of batches of 16 images seen at 8x8."""
    monkeypatch.setattr(simclrfd, "EPOCHS", 2)
    monkeypatch.setattr(simclrfd, "BATCH", 16)
    monkeypatch.setattr(simclrfd, "SIDE", 8)


def test_simclr_fd_scores_colour_samples_and_caches_its_network(tmp_path, small_network, monkeypatch):
    """simclr_fd end to end on a tiny run of colour images: one score per temperature for the VAE
    alone and the full model, the sweep plot and the table line; the held-out images against
    themselves score 0; the network is cached in RUN/eval with the training images' fingerprint
    and the input side, reused as it is, refused when either changed."""
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.table import format_table

    _, cfg, run = train_colour_run(tmp_path)  # class folders mean nothing to simclr_fd; the layout is cifar_fd's test's

    r = evaluate_run(run, metrics=["simclr_fd"], n_samples=20, temperatures=[0.5, 1.0])
    for label in ("vae", "full"):
        assert set(r[f"simclr_fd_{label}"]) == {"0.5", "1"} and all(math.isfinite(v) and v > 0 for v in r[f"simclr_fd_{label}"].values())
    assert 0.0 <= r["simclr_fd_pair_accuracy"] <= 1.0 and r["n_samples"] == 20
    assert open(r["simclr_fd_plot"], "rb").read(4) == b"\x89PNG" and r["simclr_fd_plot"].endswith("simclr_fd-temperature-test.png")
    table = (run / "eval" / "evaluate-test.txt").read_text()
    assert table == format_table(r) + "\n" and "simclr_fd (20 samples" in table and "not Inception" in table and "SimCLR pair accuracy" in table

    cache = run / "eval" / "simclr-cnn.pt"
    state = torch.load(cache, weights_only=True)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert state["format"] == simclrfd.FORMAT and state["side"] == 8 and state["images"] == simclrfd.fingerprint(train)
    assert state["accuracy"] == r["simclr_fd_pair_accuracy"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network was trained again")

    monkeypatch.setattr(simclrfd, "train_network", no_training)
    net, accuracy = simclrfd.load_or_train(cache, train, test)  # from the cache: the same weights
    assert accuracy == r["simclr_fd_pair_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), state["model"].values(), strict=True))
    assert evaluate_run(run, metrics=["simclr_fd"], n_samples=20, temperatures=[0.5, 1.0])["simclr_fd_full"] == r["simclr_fd_full"]
    mu, sigma = fid.statistics(simclrfd.features(net, test))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)  # the held-out images against themselves

    # the cache is checked: other training images, another input side, a damaged file; each one line that says what to do
    with pytest.raises(VaeflowError, match=r"trained on other images than this run's.*delete it") as exc:
        simclrfd.load_or_train(cache, train[1:], test)
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(simclrfd, "SIDE", 16)
    with pytest.raises(VaeflowError, match=r"resized to 8, not 16.*delete it"):
        simclrfd.load_or_train(cache, train, test)
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(VaeflowError, match=r"simclr_fd classifier cache .* cannot be loaded.*delete it") as exc:
        simclrfd.load_or_train(cache, train, test)
    assert "\n" not in str(exc.value)


def test_simclr_fd_of_a_digit_run_is_one_line(trained_run, capsys):
    code, out, err = call_main(["evaluate", "--run", trained_run, "--metrics", "bpd,simclr_fd", "--n-samples", "8"], capsys)  # before any work
    assert code == 2 and out == "", (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "simclr_fd scores RGB images, not (1, 28, 28); use digit_fd for digits" in err
    assert not (trained_run / "eval" / "simclr-cnn.pt").exists()


@pytest.mark.parametrize("side", [1, 4, 7])
def test_images_smaller_than_the_network_needs_are_refused_in_one_line(tmp_path, side):
    images = np.zeros((6, 3, side, side), np.uint8)
    for call in (
        lambda: simclrfd.load_or_train(tmp_path / "simclr-cnn.pt", images, images),
        lambda: simclrfd.features(simclrfd.ContrastiveCNN(), images),
    ):
        with pytest.raises(VaeflowError) as exc:
            call()
        message = str(exc.value)
        assert "\n" not in message and f"{side}x{side}" in message and "at least 8x8" in message, message
    assert not (tmp_path / "simclr-cnn.pt").exists()


def test_too_few_images_are_refused_in_one_line(tmp_path):
    images = np.zeros((6, 3, 8, 8), np.uint8)
    with pytest.raises(VaeflowError, match="needs at least 2, the run has 1"):
        simclrfd.load_or_train(tmp_path / "simclr-cnn.pt", images[:1], images)
    with pytest.raises(VaeflowError, match="at least 2 held-out images, the run has 1"):
        simclrfd.load_or_train(tmp_path / "simclr-cnn.pt", images, images[:1])
