"""benchmarks/paper_claim.py end to end on tiny models: both trainings through two budgets of a few
seconds (one after the other, and side by side in two processes), the snapshots, the scores of
every snapshot against an independent evaluation, the JSON against the Markdown, the figures; the
default single budget; bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_claim", ROOT / "benchmarks" / "paper_claim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(out: Path, tiny_config: Path, mnist_root: Path, *extra: str) -> list[str]:
    """The tiny vaeflow of conftest.TINY (one phase-1 and one phase-2 epoch configured) and a tiny
    multi-scale Glow on the same digits."""
    glow = ["data.name='mnist'", f"data.root='{mnist_root}'", "model.flow.steps=1", "model.flow.hidden_channels=8"]
    glow += ["train.baseline.batch_size=32", "train.baseline.warmup_steps=0", "train.baseline.epochs=2", "run.sample_n=4"]
    args = ["--out", str(out), "--threads", "1", "--eval-threads", "1", "--device", "cpu", "--vae-config", str(tiny_config)]
    args += ["--vae-set", "train.vae.epochs=1", "--vae-set", "train.glow.epochs=1", "--vae-set", "run.sample_n=4"]
    for s in glow:
        args += ["--glow-set", s]
    return [*args, "--grid-n", "4", "--figure-rows", "2", *extra]


@pytest.fixture()
def untrained_classifier(tmp_path) -> Path:
    """An untrained digit CNN stands in for digit_fd's classifier (training it takes a minute): the
    Frechet distances are then in random features, enough to check the plumbing."""
    from vaeflow_cli.evaluation import digitfd

    torch.manual_seed(0)
    path = tmp_path / "digit-cnn.pt"
    torch.save({"format": digitfd.FORMAT, "model": digitfd.DigitCNN().state_dict(), "accuracy": 0.0}, path)
    return path


def run_script(argv, capsys) -> dict:
    threads = torch.get_num_threads()
    try:
        result = _load_script().main(argv)
    finally:
        torch.set_num_threads(threads)
    out = Path(argv[argv.index("--out") + 1])
    assert capsys.readouterr().out.split() == [str(out / "paper_claim.json"), str(out / "paper_claim.md")]
    data = json.loads((out / "paper_claim.json").read_text())
    assert data == json.loads(json.dumps(result))
    return data


def json_numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in json_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in json_numbers(v)]
    return []


def table_cells(md: str) -> list[list[str]]:
    """The cells of every data row of the Markdown's tables (not the header or separator rows)."""
    lines = md.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: ") and lines[i + 1].startswith("|"):
            continue  # a header row
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def assert_markdown_numbers_are_in_the_json(md: str, data: dict) -> None:
    """Every number in the Markdown's table rows (the model names aside) is a number of the JSON,
    printed at the precision shown."""
    numbers = json_numbers(data)
    rows = table_cells(md)
    assert rows
    for row in rows:
        for cell in row[1:]:
            for token in re.findall(r"[-+]?\d+(?:\.\d+)?", cell.replace(",", "")):
                decimals = len(token.split(".")[1]) if "." in token else 0
                assert any(format(x, f".{decimals}f") == token.lstrip("+") for x in numbers), (token, row)


def check_budget_run(data: dict, out: Path, budgets: list[float]) -> None:
    """What every --budgets run must give: snapshots, monotone budget points, equal settings."""
    assert data["settings"]["budgets"] == budgets and data["settings"]["budget_source"] == "--budgets"
    assert data["machine"]["threads"] == 1 and data["settings"]["heldout_images"] == 32 and data["settings"]["same_heldout_images"]
    phase1 = data["vaeflow_phase1"]
    assert Path(phase1["snapshot"]).is_file() and phase1["epochs"] == 1 and phase1["seconds"] > 0
    for model in ("vaeflow", "glow"):
        points = [b[model] for b in data["budgets"]]
        assert all(p["available"] for p in points)  # phase 1 of the tiny model takes well under a second
        assert [p["budget_seconds"] for p in points] == budgets
        for p, b in zip(points, budgets, strict=True):
            assert Path(p["snapshot"]).is_file() and p["snapshot"].endswith(f"{model}-{b:g}s.pt")
            assert p["seconds"] >= b  # a budget stops at the first step boundary after it
        seconds = [p["seconds"] for p in points]
        steps = [p["global_step"] for p in points]
        assert seconds == sorted(seconds) and seconds[0] < seconds[1] and steps[0] < steps[1]
        training = data["training"][model]
        assert training["seconds"] == pytest.approx(seconds[-1], abs=1e-3)
        curve = [c["seconds"] for c in training["curve"]]
        assert curve == sorted(curve) and curve[-1] <= training["seconds"] + 1e-3
        assert sum(c["seconds"] for c in training["calls"]) == pytest.approx(training["seconds"], abs=1e-2)
        raised = training["epochs_raised"]  # one configured epoch (vaeflow) or two (the Glow) end long before the budgets
        assert raised["raised"] and raised["final"] > raised["configured"]
    v = data["budgets"][0]["vaeflow"]
    assert v["epochs"]["phase 1"] == 1 and v["seconds_phase1"] == phase1["seconds"]
    assert v["seconds_phase2"] == pytest.approx(v["seconds"] - phase1["seconds"], abs=1e-3)
    assert v["latent_bpd"] + v["pixel_bpd"] == pytest.approx(v["bpd_elbo"], rel=1e-5)
    assert v["gap_elbo_minus_exact"] == v["bpd_elbo"] - data["budgets"][0]["glow"]["bpd_exact"]
    md = (out / "paper_claim.md").read_text()
    for b in budgets:
        assert f"## Budget {b:g} s" in md
    assert_markdown_numbers_are_in_the_json(md, data)
    from PIL import Image

    for name in ("curve.png", "samples.png", "figure4.png", "samples-vaeflow.png", "samples-glow.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 20, name


def independent_scores(data: dict, model: str, i: int) -> None:
    """The numbers of budget ``i`` are those of the snapshot loaded and scored here (load_run, elbo_bpd)."""
    from vaeflow_cli.api import load_run
    from vaeflow_cli.evaluation.bounds import elbo_bpd

    point = data["budgets"][i][model]
    run = load_run(data["runs"][model], device="cpu", checkpoint=point["snapshot"])
    vae_images = load_run(data["runs"]["vaeflow"], device="cpu", checkpoint=data["vaeflow_phase1"]["snapshot"]).images("test")
    torch.set_num_threads(data["settings"]["eval_threads"])
    b = elbo_bpd(run.model, vae_images, seed=data["settings"]["eval_seed"], device="cpu")
    if model == "vaeflow":
        assert b.mean == point["bpd_elbo"] and float(b.latent.mean()) == point["latent_bpd"] and float(b.pixel.mean()) == point["pixel_bpd"]
        assert float(np.median(b.per_image)) == point["per_image"]["ELBO"]["median"]
    else:
        assert b.mean == point["bpd_exact"] and float(np.median(b.per_image)) == point["per_image"]["exact"]["median"]


def test_two_budgets_one_after_the_other(tmp_path, tiny_config, mnist_root, untrained_classifier, capsys):
    out = tmp_path / "claim"
    argv = tiny_args(out, tiny_config, mnist_root, "--budgets", "1.5,3", "--temperatures", "0.5,1.0", "--n-samples", "8", "--iwae-k", "2")
    data = run_script([*argv, "--sample-metric", "digit_fd", "--metric-network", str(untrained_classifier)], capsys)
    check_budget_run(data, out, [1.5, 3.0])
    assert not data["settings"]["side_by_side"]
    for i in (0, 1):
        independent_scores(data, "vaeflow", i)
        independent_scores(data, "glow", i)
    # IWAE beside the ELBO, the sample score at each temperature, the best one, the same network file for both runs
    v = data["budgets"][1]["vaeflow"]
    assert v["bpd_iwae"] <= v["bpd_elbo"] + 0.05 and set(v["per_image"]) == {"ELBO", "IWAE_2"}
    for d in (data["vaeflow_phase1"], v, data["budgets"][1]["glow"]):
        assert set(d["sample_scores"]) == {"0.5", "1"} and d["sample_score_best"] == min(d["sample_scores"].values())
        assert d["best_temperature"] == float(min(d["sample_scores"], key=d["sample_scores"].get))
        assert set(d["samples_diverged"]) == {"0.5", "1"} and all(isinstance(c, int) and c >= 0 for c in d["samples_diverged"].values())
    network = data["sample_metric_network"]
    assert network["name"] == "digit_fd" and network["accuracy"] == 0.0
    glow_copy = Path(data["runs"]["glow"]) / "eval" / "digit-cnn.pt"
    assert Path(network["network"]).read_bytes() == glow_copy.read_bytes() == untrained_classifier.read_bytes()
    md = (out / "paper_claim.md").read_text()
    assert (
        "| model | training s | epochs | ELBO bpd | IWAE_2 bpd | latent / pixel bpd | exact bpd | per-image median bpd | digit_fd (best T) | best T |"
        in md
    )
    assert "## digit_fd per temperature" in md and "not FID" in md and "one after the other" in md


def test_two_budgets_side_by_side(tmp_path, tiny_config, mnist_root, capsys):
    out = tmp_path / "claim"
    argv = tiny_args(out, tiny_config, mnist_root, "--budgets", "1.5,3", "--side-by-side", "--sample-metric", "none", "--iwae-k", "0")
    data = run_script([*argv, "--temperatures", "0.7"], capsys)
    check_budget_run(data, out, [1.5, 3.0])
    assert data["settings"]["side_by_side"] and data["overlap_seconds"] > 0  # the two processes trained at the same time
    v, g = data["training"]["vaeflow"], data["training"]["glow"]
    assert min(v["ended"], g["ended"]) > max(v["started"], g["started"])
    assert (out / "worker-vaeflow.json").is_file() and (out / "training-glow.json").is_file()
    independent_scores(data, "vaeflow", 1)
    independent_scores(data, "glow", 0)
    assert "bpd_iwae" not in data["budgets"][0]["vaeflow"] and data["budgets"][0]["vaeflow"]["sample_scores"] == {}
    md = (out / "paper_claim.md").read_text()
    assert "IWAE" not in md.split("## Yardsticks")[0] and "No sample score" in md and "side by side" in md


def test_without_budgets_the_glow_gets_vaeflow_s_configured_training_time(tmp_path, tiny_config, mnist_root, capsys):
    out = tmp_path / "claim"
    data = run_script(tiny_args(out, tiny_config, mnist_root, "--sample-metric", "none", "--iwae-k", "0", "--temperatures", "0.7"), capsys)
    (point,) = [b["vaeflow"] for b in data["budgets"]]
    assert data["settings"]["budget_source"].startswith("vaeflow's two phases trained to their configured ends")
    assert point["epochs"] == {"phase 1": 1, "phase 2": 1.0} and not data["training"]["vaeflow"]["epochs_raised"]["raised"]
    assert data["settings"]["budgets"] == [point["seconds"]] == [point["budget_seconds"]]
    glow = data["budgets"][0]["glow"]
    assert glow["seconds"] >= point["seconds"] and math.isfinite(glow["bpd_exact"])
    assert_markdown_numbers_are_in_the_json((out / "paper_claim.md").read_text(), data)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budgets", "10,abc"], "--budgets '10,abc' must be comma-separated seconds"),
        (["--budgets", "0,5"], "positive finite"),
        (["--budgets", "5,5"], "names a budget twice"),
        (["--side-by-side"], "--side-by-side needs --budgets"),
        (["--iwae-k", "-1"], "--iwae-k at least 0"),
        (["--sample-metric", "fid"], "argument --sample-metric: invalid choice"),
        (["--sample-metric", "simclr_fd"], "simclr_fd scores RGB images, not (1, 28, 28)"),
        (["--sample-metric", "cifar_fd"], "cifar_fd needs a run trained on an imagefolder dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2_before_any_training(tmp_path, tiny_config, mnist_root, capsys, monkeypatch, extra, message):
    script = _load_script()
    out = tmp_path / "claim"
    monkeypatch.setattr("sys.argv", ["paper_claim.py", *tiny_args(out, tiny_config, mnist_root, *extra)])
    assert script.cli() == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and message in captured.err, captured.err
    assert not (out / "runs").exists()


def test_a_failing_training_process_stops_the_other_and_is_one_line(tmp_path, tiny_config):
    """Side by side: the Glow's process fails at once (its config is missing); vaeflow's, which would
    train for a minute, is stopped, and the error names the process and its last line."""
    from vaeflow_cli.errors import RuntimeFailure

    script = _load_script()
    out = tmp_path / "claim"
    out.mkdir()
    base = {"forced": ["train.threads=1", "train.device='cpu'"], "threads": 1, "budgets": [60.0], "snapshots": str(out / "snapshots")}
    specs = {
        "vaeflow": {**base, "model": "vaeflow", "config": str(tiny_config), "sets": [], "run": str(out / "runs" / "vaeflow")},
        "glow": {**base, "model": "glow", "config": str(tmp_path / "missing.toml"), "sets": [], "run": str(out / "runs" / "glow")},
    }
    started = time.perf_counter()
    with pytest.raises(RuntimeFailure, match=r"the glow training process exited with status 2: error: config file .*missing.toml' not found") as exc:
        script.train_side_by_side(specs, out)
    assert "\n" not in str(exc.value) and time.perf_counter() - started < 50
    assert not (out / "training-vaeflow.json").exists()  # stopped before its budget
