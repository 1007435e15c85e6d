"""benchmarks/step_profile.py: a profile per variant of real training steps, as JSON on stdout; a
malformed variant, a missing config, a bad override, shape or count is one line and a non-zero exit,
as in the step benchmarks beside it (step_cost.py, adam_impl.py), whose options and checks it shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "step_profile.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_each_variant_gets_its_seconds_per_step_and_its_operators_per_step():
    proc = _run(
        "--threads", "1", "--shape", "1,28,28", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--rows", "40", "vae=:vae", "flow=:glow"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["threads"] == 1 and out["shape"] == [1, 28, 28] and out["steps"] == 2
    assert set(out["variants"]) == {"vae", "flow"}
    for name, v in out["variants"].items():
        assert v["spec"].startswith(f"{name}=:")
        assert v["s_per_step"] > 0
        ops = v["top_ops"]
        assert 0 < len(ops) <= 40
        assert all(o["self_ms_per_step"] >= 0 and o["calls_per_step"] > 0 for o in ops)
        assert [o["self_ms_per_step"] for o in ops] == sorted((o["self_ms_per_step"] for o in ops), reverse=True)
        assert any("conv" in o["op"] for o in ops), ops  # both phases are convolutional


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["vae=:nophase"], "NAME=CONFIG:PHASE"),
        (["vae=no-such-config.toml:vae"], "no-such-config.toml"),
        (["vae=:vae:train.vae.epochs=x"], "train.vae.epochs"),
        (["--shape", "3,x", "vae=:vae"], "C,H,W"),
        (["--shape", "28,28", "vae=:vae"], "C,H,W"),
        (["--steps", "0", "vae=:vae"], "--steps"),
    ],
)
def test_bad_input_is_one_line_before_any_work(args, says):
    proc = _run(*args, "ok=:vae")
    assert proc.returncode != 0 and proc.stdout == ""
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("step_profile: ") and says in line, proc.stderr


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("step_cost.py", ["--rounds", "0", "a=:vae"], "--rounds must be at least 1, got 0"),
        ("step_cost.py", ["--warmup", "-1", "a=:vae"], "--warmup must be at least 0, got -1"),
        ("adam_impl.py", ["--steps", "0", ":vae"], "--steps must be at least 1, got 0"),
    ],
)
def test_the_other_step_benchmarks_check_their_counts_the_same_way(script, args, says):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and proc.stdout == ""
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"{script[:-3]}: ") and says in line, proc.stderr
