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


def test_the_training_optimizer_is_adam_as_an_independent_numpy_computation_and_falls_back_where_torch_has_no_fused_kernel(monkeypatch):
    """setup.adam (fused where torch has the kernel) against Adam written out in numpy from Kingma &
    Ba (2015), Algorithm 1, over steps with changing gradients and learning rates; and where torch
    refuses fused=True it builds the default Adam, which gives the same update."""
    import numpy as np

    from vaeflow_cli.training.setup import adam

    def numpy_adam(w, grads, lrs, b1=0.9, b2=0.999, eps=1e-8):
        m, v = np.zeros_like(w), np.zeros_like(w)
        for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        return w

    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(4, 3)), rng.normal(size=(7,))]
    grads = [[rng.normal(size=w.shape) * 10.0 ** rng.integers(-3, 2) for w in w0] for _ in range(6)]
    lrs = [1e-3, 2e-3, 5e-4, 1e-3, 1e-2, 1e-4]  # the schedule sets each group's lr before a step, as training does

    def run(opt_factory):
        params = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)) for w in w0]
        opt = opt_factory(params)
        for g, lr in zip(grads, lrs, strict=True):
            for p, gi in zip(params, g, strict=True):
                p.grad = torch.tensor(gi, dtype=torch.float32)
            opt.param_groups[0]["lr"] = lr
            opt.step()
        return opt, [p.detach().double().numpy() for p in params]

    opt, got = run(lambda params: adam(params, lr=1e-3))
    assert opt.param_groups[0]["fused"]  # this torch has the fused kernel on the CPU
    for i, w in enumerate(w0):
        np.testing.assert_allclose(got[i], numpy_adam(w, [g[i] for g in grads], lrs), rtol=0, atol=2e-6)

    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt, fallback = run(lambda params: adam(params, lr=1e-3))
    assert not opt.param_groups[0]["fused"]
    for a, b in zip(got, fallback, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
