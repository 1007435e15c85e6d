"""benchmarks/phase2_parts.py on the tiny run: phase 2 trains exactly the flow decoder and the parts
named (the whole decoder, or its output heads), never the encoder; bad input is one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "phase2_parts.py"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from vaeflow_cli.runtime.runs import load_checkpoint

    return load_checkpoint(path)["model"]


def _changed(before: dict, after: dict, prefix: str) -> set[str]:
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, prefix
    return {k for k in keys if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("parts", ["heads", "decoder"])
def test_phase_2_trains_the_flow_and_the_parts_named_and_never_the_encoder(trained_run, tmp_path, parts):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for ckpt in (run / "checkpoints").glob("glow*.pt"):
        ckpt.unlink()  # phase 1 only: phase 2 starts again
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", run, "--parts", parts, "--threads", "1", "--set", "train.glow.epochs=1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run)
    vae, glow = _weights(run / "checkpoints" / "vae.pt"), _weights(run / "checkpoints" / "glow.pt")
    assert not _changed(vae, glow, "encoder.")
    assert _changed(vae, glow, "flow.")
    decoder = _changed(vae, glow, "decoder.")
    heads = {k for k in decoder if k.startswith(("decoder.mean_head.", "decoder.std_head."))}
    assert heads == {f"decoder.{h}.{p}" for h in ("mean_head", "std_head") for p in ("weight", "bias")}
    assert (decoder - heads != set()) == (parts == "decoder")  # the trunk trains only with --parts decoder


def test_a_folder_that_is_not_a_run_and_a_finished_phase_2_are_refused_in_one_line(trained_run, tmp_path):
    def script(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)

    proc = script("--run", tmp_path, "--parts", "heads")
    assert proc.returncode != 0 and "phase2_parts: " in proc.stderr and "is not a vaeflow run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    before = (trained_run / "checkpoints" / "glow.pt").read_bytes()
    proc = script("--run", trained_run, "--parts", "decoder")  # phase 2 trained already: --resume or --restart
    assert proc.returncode != 0 and "already has a phase 2 checkpoint" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (trained_run / "checkpoints" / "glow.pt").read_bytes() == before
