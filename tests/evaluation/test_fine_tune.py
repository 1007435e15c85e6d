"""benchmarks/fine_tune.py end to end on the tiny two-phase run: both copies train for the same
seconds, the source run is left as it was, and every row's numbers are what ``evaluate`` gives
for that copy; bad input is one line and a non-zero exit."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "fine_tune.py"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _script(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_both_sides_train_for_the_budget_and_each_row_is_what_evaluate_gives(trained_run, tmp_path):
    import vaeflow_cli

    before = _digest(trained_run)
    out = tmp_path / "ft"
    result = json.loads(_script("--run", trained_run, "--out", out, "--seconds", "2", "--metrics", "bpd").stdout)
    assert _digest(trained_run) == before  # the source run is only copied
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["start (phase 2 as given)", "phase 2 continued", "joint fine-tune"]
    for side in ("phase 2 continued", "joint fine-tune"):
        assert rows[side]["steps"] >= 1 and 2.0 <= rows[side]["seconds"] < 60
    start = vaeflow_cli.evaluate_run(trained_run, metrics=("bpd",), device="cpu", out=tmp_path / "start.json")
    cont = vaeflow_cli.evaluate_run(out / "continue", metrics=("bpd",), device="cpu", out=tmp_path / "continue.json")
    joint = vaeflow_cli.evaluate_run(out / "joint", metrics=("bpd",), device="cpu", out=tmp_path / "joint.json")
    for row, scores, model in (
        (rows["start (phase 2 as given)"], start, "full"),
        (rows["phase 2 continued"], cont, "full"),
        (rows["joint fine-tune"], joint, "joint"),
    ):
        assert math.isfinite(row["elbo_bpd"])
        assert row["elbo_bpd"] == pytest.approx(scores[f"bpd_elbo_{model}"], abs=1e-9)
        assert row["latent_bpd"] + row["pixel_bpd"] == pytest.approx(row["elbo_bpd"], abs=1e-5)
    assert rows["phase 2 continued"]["elbo_bpd"] != rows["start (phase 2 as given)"]["elbo_bpd"]  # it trained
    md = (out / "fine_tune.md").read_text()
    assert f"{rows['joint fine-tune']['elbo_bpd']:.4f}" in md and json.loads((out / "fine_tune.json").read_text()) == result


def test_a_folder_that_is_not_a_trained_run_and_an_existing_out_are_refused_in_one_line(trained_run, tmp_path):
    proc = _script("--run", tmp_path, "--out", tmp_path / "x", check=False)
    assert proc.returncode != 0 and "is not a run whose phase 2 has trained" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    proc = _script("--run", trained_run, "--out", tmp_path / "taken", check=False)
    assert proc.returncode != 0 and "exists; give a new folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
