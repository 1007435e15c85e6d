"""vaeflow ood: the metrics against rank-based and threshold-by-threshold computations (and
scikit-learn where it is installed), the typicality test, the command on a tiny run, its bad
input, and benchmarks/ood.py and benchmarks/score.py on tiny runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_cli
from PIL import Image

from vaeflow_cli.evaluation.ood import aupr, auroc, fpr_at_tpr, typicality

ROOT = Path(__file__).resolve().parents[2]


def mann_whitney(inliers, outliers) -> float:
    """P(out > in) + P(out = in) / 2 over every pair."""
    a, b = np.asarray(inliers)[:, None], np.asarray(outliers)[None, :]
    return float(((b > a).sum() + 0.5 * (b == a).sum()) / (a.size * b.size))


def by_thresholds(inliers, outliers):
    """(average precision, FPR at 95% TPR) with a loop over every distinct threshold, highest first."""
    inliers, outliers = np.asarray(inliers), np.asarray(outliers)
    ap, recall_before, fpr95 = 0.0, 0.0, None
    for t in sorted(set(inliers) | set(outliers), reverse=True):
        tp, fp = (outliers >= t).sum(), (inliers >= t).sum()
        recall = tp / len(outliers)
        ap += (recall - recall_before) * tp / (tp + fp)
        recall_before = recall
        if fpr95 is None and recall >= 0.95:
            fpr95 = fp / len(inliers)
    return ap, fpr95


def score_pairs():
    rng = np.random.default_rng(0)
    for _ in range(60):
        a = rng.integers(0, 6, rng.integers(1, 40)).astype(float)  # ties on purpose
        b = rng.integers(0, 8, rng.integers(1, 40)).astype(float)
        yield a, b
    yield rng.normal(0, 1, 500), rng.normal(1, 1, 300)
    yield np.array([1.0, 2.0]), np.array([3.0, 4.0])  # separated: 1, 1, 0
    yield np.array([3.0, 4.0]), np.array([1.0, 2.0])  # reversed: 0
    yield np.ones(5), np.ones(7)  # all tied: chance


def test_auroc_aupr_and_fpr95_match_rank_and_threshold_computations():
    for a, b in score_pairs():
        assert auroc(a, b) == pytest.approx(mann_whitney(a, b), abs=1e-12)
        ap, fpr95 = by_thresholds(a, b)
        assert aupr(a, b) == pytest.approx(ap, abs=1e-12)
        assert fpr_at_tpr(a, b) == pytest.approx(fpr95, abs=1e-12)
    assert (auroc([1, 2], [3, 4]), aupr([1, 2], [3, 4]), fpr_at_tpr([1, 2], [3, 4])) == (1.0, 1.0, 0.0)
    assert auroc([3, 4], [1, 2]) == 0.0 and auroc(np.ones(5), np.ones(7)) == 0.5
    assert auroc([0.0, 1.0], [np.inf, np.nan]) == 1.0  # a non-finite score counts as the most out-of-distribution


def test_the_metrics_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    for a, b in score_pairs():
        y, s = np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]
        assert auroc(a, b) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert aupr(a, b) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
        fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
        assert fpr_at_tpr(a, b) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)


def test_typicality_scores_batches_of_m_against_the_reference():
    bpd = np.arange(23, dtype=float)
    scores = typicality(bpd, 10.0, 5, seed=4)
    order = np.random.default_rng(4).permutation(23)[:20]  # the 3 left over make no batch
    assert np.array_equal(scores, np.abs(bpd[order].reshape(4, 5).mean(1) - 10.0))
    assert len(typicality(bpd, 0.0, 30, seed=0)) == 0  # fewer images than a batch: no batch
    assert np.array_equal(np.sort(typicality(bpd, 2.5, 1, seed=0)), np.sort(np.abs(bpd - 2.5)))  # M = 1: each image alone


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(x[0]).save(folder / f"{i:04d}.png")
    return folder


def test_ood_compares_every_score_of_each_set_with_the_in_set(trained_run, tmp_path):
    from vaeflow_cli.api import load_run

    run = load_run(trained_run, device="cpu")
    test, train = run.images("test"), run.images("train")
    noise = np.random.default_rng(0).integers(0, 256, (40, 1, 28, 28), dtype=np.uint8)
    write_pngs(tmp_path / "noise", noise)
    write_pngs(tmp_path / "same", test)  # the in-distribution images again, as files: no score can tell them apart
    figure = tmp_path / "hist.png"
    argv = ["ood", "--run", trained_run, "--in", "mnist:test", "--out", tmp_path / "noise", "--out", tmp_path / "same", "--figure", figure]
    result = json.loads(run_cli(*argv, "--json", "--typicality-batch", "4").stdout)
    assert result["sets"] == {"mnist:test": 32, str(tmp_path / "noise"): 40, str(tmp_path / "same"): 32} and result["bound"] == "elbo"
    rows = {(r["out"], r["score"]): r for r in result["rows"]}
    assert len(rows) == 10
    s_in, s_noise = run.score(test), run.score(noise)
    for name in ("bpd", "complexity", "latent_bpd", "pixel_bpd"):
        r = rows[(str(tmp_path / "noise"), name)]
        assert r["auroc"] == pytest.approx(mann_whitney(s_in.column(name), s_noise.column(name)), abs=1e-12)
        assert (r["n_in"], r["n_out"]) == (32, 40) and r["mean_out"] == pytest.approx(s_noise.column(name).mean())
        same = rows[(str(tmp_path / "same"), name)]
        assert same["auroc"] == 0.5 and same["mean_in"] == same["mean_out"]
    # the typicality reference: the mean bound of the run's training images (96 < --reference-images), in batches of 4
    assert result["reference"] == {"mean": pytest.approx(run.score(train).bpd.mean()), "split": "train", "images": 96}
    t = rows[(str(tmp_path / "noise"), "typicality")]
    ref = result["reference"]["mean"]
    assert (t["n_in"], t["n_out"]) == (8, 10)
    assert t["auroc"] == pytest.approx(mann_whitney(typicality(s_in.bpd, ref, 4, 0), typicality(s_noise.bpd, ref, 4, 0)), abs=1e-12)
    assert rows[(str(tmp_path / "noise"), "bpd")]["auroc"] > 0.9  # noise costs a digit model far more bits
    with Image.open(figure) as im:
        assert im.format == "PNG" and im.size[0] > 600
    table = run_cli(*argv).stdout.decode()
    assert "AUROC" in table and "typicality, batches of 10" in table and f"figure: {figure}" in table


@pytest.mark.parametrize(
    "args, words",
    [
        (["--in", "{tmp}/missing", "--out", "mnist:test"], "no such file or folder, and not NAME:SPLIT[:ROOT]"),
        (["--in", "mnist:val", "--out", "{tmp}"], "has splits train, test, not 'val'; pick one of them as mnist:SPLIT"),
        (["--in", "mnist:test", "--out", "mnist:test"], "twice"),
        (["--in", "mnist:test", "--out", "{tmp}/empty"], "is an empty folder"),
        (["--in", "mnist:test", "--out", "nosuchdataset:test"], "nosuchdataset"),
        (["--in", "mnist:test", "--out", "{tmp}", "--figure", "{tmp}/hist.jpg"], "--figure {tmp}/hist.jpg: this command writes png"),
        (["--in", "mnist:test", "--out", "{tmp}", "--figure", "{tmp}/empty"], "--figure {tmp}/empty is an existing directory"),
        (["--in", "mnist:test", "--out", "{tmp}", "--figure", "{tmp}/new/"], "--figure {tmp}/new/ names a folder"),
        (["--in", "{tmp}", "--out", "{tmp}/"], "--in and --out name one set twice ({tmp} and {tmp}/)"),
        (["--in", "mnist:test", "--out", "mnist:test:"], "--in and --out name one set twice (mnist:test and mnist:test:)"),
    ],
)
def test_ood_bad_input_is_one_line_before_any_work(trained_run, tmp_path, args, words):
    (tmp_path / "empty").mkdir()
    write_pngs(tmp_path, np.zeros((2, 1, 28, 28), np.uint8))
    proc = run_cli("ood", "--run", trained_run, *[a.format(tmp=tmp_path) for a in args], check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and proc.stdout == b"" and len(lines) == 1 and words.format(tmp=tmp_path) in lines[0], proc.stderr
    assert "--out " + str(tmp_path / "hist") not in lines[0]  # a --figure problem names --figure (--out is a set here)
    assert not (trained_run / "eval" / "ood-histograms.png").exists() and not (tmp_path / "hist.jpg").exists()


def test_the_ood_benchmark_on_tiny_runs(trained_run, tmp_path):
    """benchmarks/ood.py on the tiny digits run and a tiny 3x32x32 run, with a folder of
    face-sized images standing in for CelebA."""
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.training.loop import train_phase

    rng = np.random.RandomState(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(14):
        Image.fromarray(rng.randint(0, 256, (36, 34, 3)).astype(np.uint8)).save(photos / f"{i:02d}.png")
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(5):
        Image.fromarray(rng.randint(0, 256, (60, 50, 3)).astype(np.uint8)).save(faces / f"{i}.jpg")
    config = tmp_path / "colour.toml"
    config.write_text(
        TINY.format(root=photos, run=tmp_path / "colour")
        .replace('name = "mnist"', 'name = "imagefolder"\nsize = 32\ntest_fraction = 0.3')
        .replace("epochs = 2", "epochs = 1")
    )
    train_phase(config_mod.resolve(config), tmp_path / "colour", "vae", progress=False)
    out = tmp_path / "bench"
    argv = ["--out", out, "--cifar-run", tmp_path / "colour", "--celeba", faces, "--celeba-crop", "40", "--digits-run", trained_run, "--n", "12"]
    proc = subprocess.run([sys.executable, ROOT / "benchmarks" / "ood.py", *map(str, argv)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "ood.json").read_text())
    colour, digits = result["results"]
    assert list(colour["sets"])[1:] == [
        "CelebA faces (40 crop, 32x32)",
        "MNIST digits, padded to 32x32, 3 channels",
        "constant colour",
        "uniform noise",
    ]
    assert list(colour["sets"].values())[1:] == [5, 12, 12, 12] and colour["model"] == "vae"
    assert list(digits["sets"])[1:] == [
        "constant grey",
        "uniform noise",
        "digits flipped left-right",
        "digits upside-down",
        "digits inverted (255 - x)",
    ]
    assert len(colour["rows"]) == 4 * 5 and len(digits["rows"]) == 5 * 5
    assert all(0 <= r["auroc"] <= 1 for r in colour["rows"] + digits["rows"] if r["auroc"] is not None)
    assert (out / "ood-colour.png").is_file() and (out / "ood-run.png").is_file()
    md = (out / "ood.md").read_text()
    assert md.count("| AUROC |") == 2 and "| uniform noise | typicality |" in md and proc.stdout.strip() == md.strip()


def test_the_score_benchmark_gives_images_per_second(trained_run):
    proc = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "score.py", "--run", str(trained_run), "--images", "40", "--repeats", "1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["images"] == 40 and result["bound"] == "elbo" and result["cli_images_per_s"] > 0 and result["in_process_images_per_s"] > 0


def test_ood_names_files_it_cannot_score_and_exits_3_after_the_table(trained_run, tmp_path):
    write_pngs(tmp_path / "out", np.random.default_rng(1).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8))
    (tmp_path / "out" / "broken.png").write_text("not an image")
    proc = run_cli(
        "ood", "--run", trained_run, "--in", "mnist:test", "--out", tmp_path / "out", "--figure", tmp_path / "h.png", "--json", check=False
    )
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vaeflow: error:")]
    assert len(errors) == 2 and "broken.png" in errors[0] and "1 file could not be scored" in errors[1]
    assert json.loads(proc.stdout)["sets"][str(tmp_path / "out")] == 6 and (tmp_path / "h.png").is_file()


def test_ood_with_a_closed_stdout_is_one_line_before_any_work(trained_run, tmp_path):
    write_pngs(tmp_path / "noise", np.zeros((2, 1, 28, 28), np.uint8))
    command = [sys.executable, "-m", "vaeflow_cli", "ood", "--run", str(trained_run), "--in", "mnist:test", "--out", str(tmp_path / "noise")]
    proc = subprocess.run(command, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "stdout is closed, and ood writes its table there" in lines[0], proc.stderr
    assert "--out FILE" not in proc.stderr and not (trained_run / "eval" / "ood-histograms.png").exists()


def test_a_set_smaller_than_a_typicality_batch_is_one_warning_line_not_a_numpy_warning(trained_run, tmp_path):
    write_pngs(tmp_path / "few", np.random.default_rng(2).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8))
    argv = ["ood", "--run", trained_run, "--in", "mnist:test", "--out", tmp_path / "few", "--figure", tmp_path / "h.png", "--json"]
    proc = run_cli(*argv, "--typicality-batch", "10", "--reference-images", "20")
    assert "RuntimeWarning" not in proc.stderr and "site-packages" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "--typicality-batch" in line]
    assert len(warnings) == 1 and f"{tmp_path / 'few'} has 6 scored images, fewer than --typicality-batch 10" in warnings[0], proc.stderr
    assert warnings[0].startswith("vaeflow: warning:") and "--typicality-batch 6 or less" in warnings[0]
    rows = {(r["out"], r["score"]): r for r in json.loads(proc.stdout)["rows"]}
    assert rows[(str(tmp_path / "few"), "typicality")]["auroc"] is None and (tmp_path / "h.png").is_file()


def test_the_histograms_of_a_far_outlying_set_do_not_squash_the_others_into_one_bin():
    """Uniform noise can score 1e12 bits/dim: the figure's range then ends near the in-distribution
    set's spread, and the outliers are drawn in the last bin."""
    import numpy as np

    from vaeflow_cli.evaluation.plots import _histogram_range

    rng = np.random.default_rng(0)
    inside, near, noise = rng.normal(3.4, 0.3, 500), rng.normal(4.5, 0.4, 500), rng.uniform(1e11, 1e12, 500)
    lo, hi = _histogram_range([inside, near, noise], 0)
    assert lo == min(inside.min(), near.min()) and near.max() < hi < 12
    width = (hi - lo) / 40
    assert np.ptp(inside) / width > 5  # the in-distribution histogram spans several bins
    assert _histogram_range([inside, near], 0) == (min(inside.min(), near.min()), max(inside.max(), near.max()))  # no outliers: the full range
