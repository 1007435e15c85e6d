"""benchmarks/paper_claim.py end to end on tiny models: both trainings, both evaluations, the table
(JSON and Markdown) and the figure."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_claim", ROOT / "benchmarks" / "paper_claim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_claim_tiny(tmp_path, tiny_config, mnist_root, capsys):
    from PIL import Image

    from vaeflow_cli.evaluation import digitfd

    # An untrained digit CNN stands in for the classifier (training it takes a minute); digit_fd is
    # then a Frechet distance in random features, enough to check the plumbing.
    torch.manual_seed(0)
    classifier = tmp_path / "digit-cnn.pt"
    torch.save({"format": digitfd.FORMAT, "model": digitfd.DigitCNN().state_dict(), "accuracy": 0.0}, classifier)
    out = tmp_path / "claim"
    threads_before = torch.get_num_threads()
    try:
        result = _load_script().main(
            [
                "--out",
                str(out),
                "--threads",
                "1",
                "--device",
                "cpu",
                "--budget-seconds",
                "0",
                "--vae-config",
                str(tiny_config),
                "--vae-set",
                "train.vae.epochs=1",
                "--vae-set",
                "train.glow.epochs=1",
                "--glow-set",
                "data.name='mnist'",
                "--glow-set",
                f"data.root='{mnist_root}'",
                "--glow-set",
                "model.flow.steps=1",
                "--glow-set",
                "model.flow.hidden_channels=8",
                "--glow-set",
                "train.baseline.batch_size=32",
                "--glow-set",
                "train.baseline.warmup_steps=0",
                "--glow-set",
                "run.sample_n=4",
                "--temperatures",
                "0.5,1.0",
                "--n-samples",
                "20",
                "--iwae-k",
                "8",
                "--grid-n",
                "4",
                "--digit-classifier",
                str(classifier),
            ]
        )
    finally:
        torch.set_num_threads(threads_before)

    json_path, md_path, png_path = out / "paper_claim.json", out / "paper_claim.md", out / "paper_claim.png"
    assert capsys.readouterr().out.split() == [str(json_path), str(md_path)]
    data = json.loads(json_path.read_text())
    assert data == json.loads(json.dumps(result))
    assert {"machine", "settings", "budget", "rows", "figure", "digit_fd_classifier_accuracy"} <= set(data)
    assert data["machine"]["threads"] == 1 and data["machine"]["usable_cores"] >= 1 and data["machine"]["torch"]
    assert data["budget"]["seconds"] == 0 and data["budget"]["source"] == "--budget-seconds"
    assert data["budget"]["measure"] == "epochs"
    assert data["settings"]["same_heldout_images"] and data["settings"]["heldout_images"] == 32
    rows = {r["model"]: r for r in data["rows"]}
    assert list(rows) == ["vaeflow_vae", "vaeflow_full", "glow"]
    for row in rows.values():
        assert {
            "bpd_elbo",
            "bpd_iwae",
            "bpd_exact",
            "bpd_kind",
            "digit_fd",
            "best_temperature",
            "digit_fd_best",
            "train_seconds",
            "train_seconds_per_phase",
            "wall_seconds",
            "epochs",
            "parameters",
        } <= set(row)
        assert set(row["digit_fd"]) == {"0.5", "1"} and row["best_temperature"] in (0.5, 1.0)
        assert row["digit_fd_best"] == min(v for v in row["digit_fd"].values() if math.isfinite(v))
        assert 0 < row["train_seconds"] <= row["wall_seconds"]
    for key in ("vaeflow_vae", "vaeflow_full"):
        assert rows[key]["bpd_exact"] is None and rows[key]["bpd_kind"] == "upper bound"
        assert math.isfinite(rows[key]["bpd_elbo"]) and rows[key]["bpd_iwae"] <= rows[key]["bpd_elbo"]
    assert rows["vaeflow_full"]["epochs"] == {"phase 1": 1, "phase 2": 1}
    assert set(rows["vaeflow_full"]["train_seconds_per_phase"]) == {"phase 1", "phase 2"}
    glow = rows["glow"]
    assert glow["bpd_elbo"] is None and glow["bpd_kind"] == "exact" and math.isfinite(glow["bpd_exact"])
    assert glow["epochs"] == 1  # a zero budget still trains one epoch

    md = md_path.read_text()
    assert "| model | parameters | ELBO bpd | IWAE_8 bpd | exact bpd | digit_fd (best T) | best T | training s | wall-clock s | epochs |" in md
    for row in rows.values():
        assert row["label"] in md
    assert "<= " in md and "threads" in md
    with Image.open(png_path) as im:
        assert im.format == "PNG" and im.width > im.height > 100
    assert (out / "samples-vaeflow_full.png").exists() and (out / "samples-glow.png").exists()
    # the yardsticks, the per-image distributions and the seconds per epoch (the Table 4 analogue)
    assert data["bpd_png"] > 0 and data["yardstick_per_image"]["PNG"]["median"] > 0
    assert set(rows["vaeflow_full"]["per_image"]) == {"ELBO", "IWAE_8"} and set(rows["glow"]["per_image"]) == {"exact"}
    assert rows["vaeflow_full"]["per_image"]["ELBO"]["p90"] >= rows["vaeflow_full"]["per_image"]["ELBO"]["median"]
    assert set(rows["vaeflow_full"]["seconds_per_epoch"]) == {"phase 1", "phase 2"} and rows["glow"]["seconds_per_epoch"]["baseline"] > 0
    assert "PNG files of the held-out images" in md and "s per epoch" in md
    # without a sample metric (colour images): no digit_fd table, the figure's temperature named
    script = _load_script()
    plain = json.loads(json.dumps(data))
    plain["settings"]["sample_metric"] = "none"
    for row in plain["rows"]:
        row["digit_fd"], row["digit_fd_best"], row["best_temperature"] = {}, None, None
    md_plain = script.markdown(plain)
    assert "digit_fd per temperature" not in md_plain and "No sample-quality score" in md_plain and "T = 0.5" in md_plain
