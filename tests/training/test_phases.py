"""The phase table: what differs between phases is read from its fields."""

from pathlib import Path

import pytest
import torch

from vaeflow_cli.runtime.phases import PHASES


def test_which_phases_run_the_glow_layer_follows_what_they_train_and_start_from():
    """Written out by hand from the paper's phases: phase 1 leaves the layer at the identity (not
    run); phase 2, joint and the standalone flow run it; a prior trained on phase 2 runs it and
    one trained on phase 1 does not; an unknown start is the phase's preferred one."""
    expected = {
        ("vae", None): False,
        ("glow", None): True,
        ("glow", "vae"): True,
        ("glow", "prior"): True,
        ("baseline", None): True,
        ("joint", None): True,
        ("joint", "glow"): True,
        ("prior", None): True,
        ("prior", "glow"): True,
        ("prior", "vae"): False,
    }
    assert {key: PHASES[key[0]].use_flow(key[1]) for key in expected} == expected


def test_each_phase_that_continues_another_has_a_start_note_and_one_phase_is_standalone():
    for phase in PHASES.values():
        assert bool(phase.start_note) == bool(phase.starts_from), phase.name
    assert [p.name for p in PHASES.values() if p.standalone] == ["baseline"]
    assert PHASES["prior"].start_note.format(start=PHASES["glow"].title) == "start of prior training (from phase 2)"


def test_a_phase_goes_on_with_the_config_its_run_was_trained_with(tiny_config, tmp_path, monkeypatch):
    """runconfig.phase_config, the rule of train-PHASE and of train_phase(None, ...): a run directory
    with a config.toml keeps it (with --set on top), a config file given wins, a run without one
    takes the embedded default; the default run is continued only by a phase that starts from another."""
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.runtime.runs import RunDir
    from vaeflow_cli.training.runconfig import phase_config, write_config

    trained = config_mod.resolve(tiny_config)
    run = tmp_path / "run"
    run.mkdir()
    write_config(RunDir(run), trained)
    cfg, where = phase_config("glow", run)
    assert where == run and cfg["model"] == trained["model"] and cfg["train"]["glow"]["epochs"] == 1
    cfg, _ = phase_config("glow", run, overrides=["train.glow.epochs=3"])
    assert cfg["model"] == trained["model"] and cfg["train"]["glow"]["epochs"] == 3
    embedded = config_mod.resolve()
    assert phase_config("glow", tmp_path / "new")[0]["model"] == embedded["model"]
    cfg, where = phase_config("vae", None, config=tiny_config)
    assert cfg["model"] == trained["model"] and where == run  # the file's [run] dir
    monkeypatch.chdir(tmp_path)  # the default run, [run] dir of the embedded config
    default = RunDir(embedded["run"]["dir"])
    default.path.mkdir(parents=True)
    write_config(default, config_mod.resolve(tiny_config, [f"run.dir={embedded['run']['dir']}"]))
    cfg, where = phase_config("glow")
    assert cfg["model"] == trained["model"] and where == Path(embedded["run"]["dir"])
    assert phase_config("vae")[0]["model"] == embedded["model"]
    from vaeflow_cli.errors import VaeflowError
    from vaeflow_cli.training.loop import train_phase

    with pytest.raises(VaeflowError, match="resume must be"):  # cfg None is taken (the rule above), the next check refuses
        train_phase(None, run, "glow", resume="yes", progress=False)


def test_the_cosine_decay_follows_torch_cosine_annealing_after_the_warm_up_and_holds_its_floor():
    """learning_rate against an independent computation: torch's CosineAnnealingLR (eta_min = f lr)
    stepped once per optimizer step after a linear warm-up, on a real optimizer."""
    from dataclasses import replace

    from vaeflow_cli.config.core import resolve
    from vaeflow_cli.training.setup import learning_rate

    pcfg = resolve().train.phase("glow")
    pcfg = replace(pcfg, lr=2e-3, lr_halve_every=0, warmup_steps=5, lr_cosine_steps=20, lr_final_fraction=0.1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=2e-4)
    expected = [2e-3 * (s + 1) / 5 for s in range(5)]
    for _ in range(30):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: the parameter stays; the scheduler follows an optimizer step, as in training
        if len(expected) - 5 <= 20:  # 20 scheduler steps, then the floor
            cosine.step()
    got = [learning_rate(pcfg, 0, s) for s in range(35)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[-1] == pytest.approx(2e-4)  # held at the floor after the decay
    # composed with the halving by epochs; and no decay when lr_cosine_steps = 0
    halved = replace(pcfg, lr_halve_every=2)
    assert learning_rate(halved, 3, 12) == pytest.approx(0.5 * learning_rate(pcfg, 3, 12))
    assert learning_rate(replace(pcfg, lr_cosine_steps=0), 0, 1000) == 2e-3
