"""A phase trained on top of another records which state of it (training.lineage): when the earlier
phase trains further afterwards, every command that loads the pair says so in one line with the ways
out, and none serves the stale pair as if it were current."""

from __future__ import annotations

import os

import pytest
import torch

from vaeflow_cli.api import load_run
from vaeflow_cli.config import core as config_mod
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation.evaluate import evaluate_run
from vaeflow_cli.runtime.phases import latest
from vaeflow_cli.runtime.runs import RunDir
from vaeflow_cli.training.loop import train_phase

FAST = ["train.vae.epochs=1", "train.threads=1", "run.sample_n=4"]


def _tree(path):
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.fixture()
def extended(tiny_config, tmp_path):
    """Both phases, then phase 1 trained one more epoch (the user's ``train-vae --resume --set
    train.vae.epochs=2``): phase 2 still holds the phase 1 of step 3."""
    run = tmp_path / "run"
    cfg = config_mod.resolve(tiny_config, FAST)
    train_phase(cfg, run, "vae", progress=False)
    train_phase(cfg, run, "glow", progress=False)
    train_phase(config_mod.resolve(base=cfg, overrides=["train.vae.epochs=2"]), run, "vae", resume=True, progress=False)
    return cfg, run


def test_every_command_that_loads_a_stale_phase_2_says_so_with_the_ways_out(extended, capsys):
    cfg, run = extended
    rd = RunDir(run)
    glow = rd.load_checkpoint("glow")
    assert glow["start"] == "vae" and glow["start_step"] == 3 and glow["start_digest"] != rd.load_checkpoint("vae")["digest"]
    capsys.readouterr()

    r = load_run(run, device="cpu")  # by default: the phase trained last, phase 1
    warned = capsys.readouterr().err.strip().splitlines()
    assert r.phase == "vae" and r.stale is None and len(warned) == 1
    assert "glow.pt (phase 2) was trained on phase 1 at step 3, but phase 1 has changed since" in warned[0]
    assert "vaeflow train-glow --run" in warned[0] and "--restart" in warned[0] and "ln -f" in warned[0] and "vae-step000000003.pt" in warned[0]

    r = load_run(run, device="cpu", checkpoint="glow")  # asked for by name: loaded, with the same warning
    assert r.phase == "glow" and "was trained on phase 1 at step 3" in r.stale and "loaded it as it is" in capsys.readouterr().err

    result = evaluate_run(run, metrics=["bpd"], device="cpu")
    assert "was trained on phase 1 at step 3" in result["full_stale"] and "vae_stale" not in result
    capsys.readouterr()

    before = _tree(run)
    with pytest.raises(VaeflowError) as info:  # resuming phase 2 would train on the old phase 1
        train_phase(cfg, run, "glow", resume=True, progress=False)
    assert str(info.value).startswith("cannot resume phase 2:") and "--restart" in str(info.value) and "\n" not in str(info.value)
    for phase in ("joint", "prior"):  # a phase that starts from the stale one
        with pytest.raises(VaeflowError, match=r"starts from phase 2, and .*glow.pt \(phase 2\) was trained on phase 1 at step 3"):
            train_phase(cfg, run, phase, progress=False)
    assert _tree(run) == before  # refused before anything was written


def test_training_phase_2_again_or_putting_the_old_phase_1_back_clears_it(extended, tmp_path, capsys):
    import shutil

    cfg, run = extended
    old = tmp_path / "old"
    shutil.copytree(run, old)

    train_phase(cfg, run, "glow", restart=True, progress=False)  # way out 1: phase 2 again on the new phase 1
    r = load_run(run, device="cpu")
    assert r.phase == "glow" and r.stale is None and "warning" not in capsys.readouterr().err
    assert RunDir(run).load_checkpoint("glow")["start_step"] == 6 and [p.name for p in RunDir(run).kept_checkpoints("glow")] == [
        "glow-step000000003.pt"
    ]

    # way out 2: the old phase 1 put back as the message says (its step-tagged checkpoint is kept)
    (old / "checkpoints" / "vae.pt").unlink()
    os.link(old / "checkpoints" / "vae-step000000003.pt", old / "checkpoints" / "vae.pt")  # ln -f
    r = load_run(old, device="cpu")
    assert r.phase == "glow" and r.stale is None and "warning" not in capsys.readouterr().err
    train_phase(config_mod.resolve(base=cfg, overrides=["train.glow.epochs=2"]), old, "glow", resume=True, progress=False)


def test_a_no_op_resume_of_phase_1_keeps_phase_2_current(tiny_config, tmp_path, capsys):
    """The digest is of the weights: saving the same state of phase 1 again changes nothing."""
    run = tmp_path / "run"
    cfg = config_mod.resolve(tiny_config, FAST)
    train_phase(cfg, run, "vae", progress=False)
    train_phase(cfg, run, "glow", progress=False)
    train_phase(cfg, run, "vae", resume=True, progress=False)  # already complete
    train_phase(cfg, run, "glow", resume=True, progress=False)
    assert load_run(run, device="cpu").phase == "glow" and "warning" not in capsys.readouterr().err


def test_extending_phase_1_warns_that_phase_2_will_belong_to_the_old_one_and_keeps_its_checkpoint(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config_mod.resolve(tiny_config, [*FAST, "train.keep_checkpoints=1"])
    train_phase(cfg, run, "vae", progress=False)
    train_phase(cfg, run, "glow", progress=False)
    capsys.readouterr()
    train_phase(config_mod.resolve(base=cfg, overrides=["train.vae.epochs=3"]), run, "vae", resume=True, progress=False)
    err = capsys.readouterr().err
    assert (
        "warning: " in err and "glow.pt (phase 2) was trained on this phase 1 (step 3); once it trains further, phase 2 belongs to the old one" in err
    )
    names = sorted(p.name for p in (run / "checkpoints").glob("vae-*.pt"))
    assert names == ["vae-step000000003.pt", "vae-step000000009.pt"]  # keep_checkpoints = 1, and the one phase 2 was trained on


def test_latest_passes_over_a_stale_phase():
    starts = {"glow": "vae", "joint": "glow", "prior": "vae"}.get
    assert latest(["vae", "glow"], starts) == "glow"
    assert latest(["vae", "glow"], starts, stale=lambda p: p == "glow") == "vae"
    assert latest(["vae", "glow", "joint"], starts, stale=lambda p: p in ("glow", "joint")) == "vae"
    assert latest(["vae", "glow", "prior"], starts, stale=lambda p: p == "glow") == "prior"
    assert latest(["glow"], starts, stale=lambda p: True) == "glow"  # nothing else to load


def test_a_checkpoint_records_the_digest_of_its_weights_and_is_refused_without_it(tiny_config, tmp_path):
    from vaeflow_cli.runtime.runs import weights_digest
    from vaeflow_cli.training.lineage import read_head

    run = tmp_path / "run"
    train_phase(config_mod.resolve(tiny_config, FAST), run, "vae", progress=False)
    state = RunDir(run).load_checkpoint("vae")
    assert state["digest"] == weights_digest(state["model"]) == weights_digest({k: v.clone() for k, v in reversed(state["model"].items())})
    changed = dict(state["model"])
    name = next(k for k, v in changed.items() if v.is_floating_point())
    changed[name] = torch.nextafter(changed[name], torch.full_like(changed[name], float("inf")))
    assert weights_digest(changed) != state["digest"]
    path = RunDir(run).checkpoint_path("vae")
    torch.save({k: v for k, v in state.items() if k != "digest"}, path)
    refused = "has no 'digest' entry; it is damaged or not a vaeflow checkpoint"
    with pytest.raises(VaeflowError, match=refused):
        read_head(path)
    with pytest.raises(VaeflowError, match=refused):
        RunDir(run).load_checkpoint("vae")
