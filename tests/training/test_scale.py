"""Scale and faults: precision, gradient checkpointing, DDP (gloo, 2 processes), SIGKILL resume,
the non-finite-loss guard, checkpoint rotation and checkpoints that do not fit."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import run_cli, torchrun

from vaeflow_cli.api import load_run
from vaeflow_cli.config import core as config_mod
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.flows import WithCondition, is_conditional
from vaeflow_cli.model.vaeflow import VAEFlow, build_model
from vaeflow_cli.registry.core import build_registry
from vaeflow_cli.runtime.runs import RunDir
from vaeflow_cli.testing import perturb
from vaeflow_cli.training.loop import train_phase

REGISTRY = build_registry(allowed=None)


@pytest.fixture()
def tiny(tiny_config):
    return config_mod.resolve(tiny_config)


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("name", sorted(REGISTRY.components["flow"]))
def test_flow_log_dets_stay_float32_under_bf16_autocast(name):
    factory = REGISTRY.components["flow"][name].factory
    kwargs = getattr(factory, "test_kwargs", {})
    flow = perturb(factory(image_shape=(3, 8, 8), **kwargs), seed=1).eval()
    x = torch.rand(4, 3, 8, 8)
    if is_conditional(flow):  # a flow decoder: at a fixed decoder output (mean, std)
        flow = WithCondition(flow, (torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8) + 0.1))
    with torch.no_grad():
        _, exact = flow(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, low = flow(x)
    assert low.dtype == torch.float32, f"{name}: log-det is {low.dtype} under bf16"
    # the log-det's own arithmetic is float32; only the bf16 activations it depends on differ
    assert torch.allclose(low, exact, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("name", sorted(REGISTRY.components["prior"]))
def test_prior_log_probs_stay_float32_under_bf16_autocast(name):
    prior = perturb(REGISTRY.components["prior"][name].factory(latent_dim=6), seed=1).eval()
    z = torch.randn(5, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp = prior.log_prob(z)
    assert lp.dtype == torch.float32


def test_bound_terms_are_float32_under_bf16(tiny):
    torch.manual_seed(0)
    model = perturb(build_model(tiny, (1, 28, 28)), seed=2).eval()
    y = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        full = model.bound(y, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.bound(y, generator=torch.Generator().manual_seed(0))
    for term in ("log_px_z", "log_pz", "entropy"):
        assert getattr(low, term).dtype == torch.float32, term
    assert torch.allclose(low.bpd, full.bpd, rtol=0.05)


def test_bf16_training_runs_on_the_cpu(tiny, tmp_path):
    cfg = config_mod.resolve(base=tiny, overrides=["train.precision='bf16'", "train.vae.epochs=1"])
    result = train_phase(cfg, tmp_path / "bf16", "vae", progress=False)
    assert np.isfinite(result.test_bpd)
    bad = config_mod.resolve(base=tiny, overrides=["train.precision='fp16'", "train.vae.epochs=1"])
    with pytest.raises(VaeflowError, match="fp16.*CUDA"):
        train_phase(bad, tmp_path / "fp16", "vae", progress=False)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny):
    from vaeflow_plugins.models import glow_layer

    torch.manual_seed(0)
    plain = perturb(glow_layer(image_shape=(3, 6, 6), depth=3, hidden_channels=8), seed=3)
    ckpt = glow_layer(image_shape=(3, 6, 6), depth=3, hidden_channels=8, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 6, 6)
    outs = []
    for flow in (plain, ckpt):
        y, ld = flow(x)
        (y.square().sum() - ld.sum()).backward()
        outs.append((y.detach(), ld.detach(), [p.grad.clone() for p in flow.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs[0][2], outs[1][2], strict=True))


# ---------------------------------------------------------------- faults


def test_non_finite_losses_are_skipped_then_stop_the_run_with_the_last_good_state(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = VAEFlow.bound

    def poisoned(self, y, **kw):
        b = original(self, y, **kw)
        if torch.is_grad_enabled():  # training steps, not the held-out evaluation
            calls["n"] += 1
            if calls["n"] in bad:
                b.log_px_z = b.log_px_z * float("nan")
        return b

    monkeypatch.setattr(VAEFlow, "bound", poisoned)
    # one bad step: skipped, counted, training goes on
    bad = {2}
    cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1", "train.max_bad_steps=2"])
    result = train_phase(cfg, tmp_path / "one", "vae", progress=False)
    assert np.isfinite(result.test_bpd)
    record = RunDir(tmp_path / "one").read_metrics()[-1]
    assert record["skipped_steps"] == 1 and np.isfinite(record["train_bpd"])
    # two in a row with max_bad_steps = 2: a clear error and a checkpoint of the last state whose steps were finite
    calls["n"] = 0
    bad = {5, 6}
    cfg = config_mod.resolve(base=cfg, overrides=["train.vae.epochs=2"])
    with pytest.raises(VaeflowError, match="non-finite steps .loss or gradient. in a row.*max_bad_steps = 2.*--resume"):
        train_phase(cfg, tmp_path / "two", "vae", progress=False)
    state = RunDir(tmp_path / "two").load_checkpoint("vae")
    assert state["global_step"] == 3 and state["skipped_steps"] == 0  # the end of epoch 1, before the last finite step (4)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_step_checkpoints_rotate_and_keep_the_last_n(tiny, tmp_path):
    cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=3", "train.checkpoint_every=2", "train.keep_checkpoints=2"])
    train_phase(cfg, tmp_path / "rot", "vae", progress=False)
    rd = RunDir(tmp_path / "rot")
    kept = [p.name for p in rd.kept_checkpoints("vae")]
    assert kept == ["vae-step000000008.pt", "vae-step000000009.pt"]  # 3 epochs x 3 steps
    assert os.path.samefile(rd.checkpoint_path("vae"), rd.path / "checkpoints" / kept[-1])
    assert not list((rd.path / "checkpoints").glob(".*.tmp"))


def test_sigkill_at_any_moment_then_resume_matches_an_uninterrupted_run(tiny_config, tmp_path):
    sets = ["--set", "train.vae.epochs=6", "--set", "train.checkpoint_every=1"]
    straight = tmp_path / "straight"
    run_cli("train-vae", "--config", tiny_config, "--run", straight, *sets)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaeflow_cli", "train-vae", "--config", str(tiny_config), "--run", str(killed), *sets],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    ckpts = killed / "checkpoints"
    while time.time() < deadline and not list(ckpts.glob("vae-step00000000[4-9].pt")):
        time.sleep(0.005)  # kill wherever it is after step 4: mid-step, mid-write or mid-evaluation
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    before = RunDir(killed).load_checkpoint("vae")["global_step"]
    assert 0 < before < 18
    run_cli("train-vae", "--config", tiny_config, "--run", killed, *sets, "--resume")
    a, b = RunDir(straight).load_checkpoint("vae"), RunDir(killed).load_checkpoint("vae")
    assert a["global_step"] == b["global_step"] == 18 and b["complete"]
    assert all(torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6) for k in a["model"])
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "data_wait_seconds", "data_wait_share")} for r in rs]  # noqa: E731
    assert strip(RunDir(straight).read_metrics()) == strip(RunDir(killed).read_metrics())


def test_a_checkpoint_from_another_config_or_a_newer_format_is_one_clear_error(tiny_config, tmp_path):
    run = tmp_path / "run"
    run_cli("train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=1")
    ckpt = RunDir(run).checkpoint_path("vae")
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "format": 99}, ckpt)
    proc = run_cli("sample", "--run", run, check=False)
    assert proc.returncode == 2 and "newer" in proc.stderr and "Traceback" not in proc.stderr
    torch.save({**state, "signature": "{}"}, ckpt)
    proc = run_cli("train-vae", "--run", run, "--resume", check=False)
    assert proc.returncode == 2 and "different [model]/[data] config" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- DDP


def test_ddp_with_gloo_on_two_processes_matches_one_process(tmp_path, tiny_config):
    """torchrun, 2 CPU processes (gloo), global batch 32 = 2 x 16, against one process with batch
    32: the same images per step; per-rank latent noise differs, so the losses agree within a
    tolerance. GroupNorm keeps the statistics per image (BatchNorm is per rank on the CPU)."""
    sets = ["--set", "train.vae.epochs=1", "--set", "model.encoder.norm='group'", "--set", "model.decoder.norm='group'"]
    single = tmp_path / "single"
    run_cli("train-vae", "--config", tiny_config, "--run", single, *sets)
    ddp = tmp_path / "ddp"
    proc = torchrun("--master_port=29581", "-m", "vaeflow_cli", "train-vae", "--config", tiny_config, "--run-dir", ddp, *sets, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(ddp), str(ddp)]  # each rank prints the run directory
    one, two = RunDir(single).read_metrics()[-1], RunDir(ddp).read_metrics()[-1]
    assert len(RunDir(ddp).read_metrics()) == 1  # rank 0 alone writes metrics
    assert two["steps"] == one["steps"] == 3
    assert abs(two["train_bpd"] - one["train_bpd"]) < 0.05 * one["train_bpd"]
    assert abs(two["test_bpd"] - one["test_bpd"]) < 0.05 * one["test_bpd"]
    state = RunDir(ddp).load_checkpoint("vae")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    model = load_run(ddp, device="cpu").model  # the checkpoint is a plain model (no DDP "module." prefixes)
    assert model is not None


def test_compiled_training_runs(tiny, tmp_path):
    """train.compile = true: torch.compile (inductor, C++ on the CPU) runs the objective. Its
    random numbers come from inductor's own generator, so the numbers differ from eager mode."""
    cfg = config_mod.resolve(base=tiny, overrides=["train.compile=true", "train.vae.epochs=1"])
    result = train_phase(cfg, tmp_path / "compiled", "vae", progress=False)
    assert np.isfinite(result.test_bpd)
    assert RunDir(tmp_path / "compiled").read_metrics()[-1]["skipped_steps"] == 0


# ---------------------------------------------------------------- CPU threads and timing


def test_auto_threads_are_the_usable_cores_shared_by_the_local_processes(monkeypatch):
    from vaeflow_cli.runtime.threads import resolve_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_threads(0) == 8
    for local_world, want in (("1", 8), ("2", 4), ("3", 2), ("8", 1), ("16", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
        assert resolve_threads(0) == want, local_world
    assert resolve_threads(5) == 5  # an explicit count is taken as it is
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # no affinity (macOS): the machine's count
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_threads(0) == 3
    with pytest.raises(VaeflowError, match=r"train.threads must be >= 0"):
        resolve_threads(-1)


def test_training_runs_its_steps_on_the_chosen_thread_count(tiny, tmp_path, monkeypatch, capsys):
    from vaeflow_cli.runtime import devices
    from vaeflow_cli.training import step as engine

    before = torch.get_num_threads()
    seen = []
    step = engine.Stepper.step

    def recording(self, y):
        seen.append(torch.get_num_threads())
        return step(self, y)

    monkeypatch.setattr(engine.Stepper, "step", recording)
    monkeypatch.setattr(devices, "_applied_threads", None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one usable core: auto = 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1"])
        assert cfg["train"]["threads"] == 0
        train_phase(cfg, tmp_path / "auto", "vae", progress=False)
        assert seen and set(seen) == {1}
        assert capsys.readouterr().err.count("torch: 1 intra-op thread (auto: 1 usable cores / 1 local process)") == 1
        seen.clear()
        cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1", "train.threads=2"])
        train_phase(cfg, tmp_path / "two", "vae", progress=False)
        assert set(seen) == {2} and "torch: 2 intra-op threads (train.threads)" in capsys.readouterr().err
        with pytest.raises(VaeflowError, match=r"train.threads' must be >= 0.*got -1"):  # refused by the config itself
            config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1", "train.threads=-1"])
        assert not (tmp_path / "bad").exists()
    finally:
        torch.set_num_threads(before)


def test_timing_interleaves_the_models_and_reports_medians_spreads_and_threads(tiny_config):
    out = run_cli(
        "timing",
        "--config",
        tiny_config,
        "--steps",
        "4",
        "--warmup",
        "1",
        "--json",
        "--threads",
        "1",
        "--glow-levels",
        "2",
        "--glow-steps",
        "2",
        "--glow-width",
        "8",
    )
    r = json.loads(out.stdout)
    assert r["threads"] == 1 and r["interleaved"] is True and r["timed_steps"] == 4
    assert "torch: 1 intra-op thread (train.threads)" in out.stderr
    for name in ("vae", "glow_layer", "glow_baseline"):
        med, iqr = r[f"{name}_s_per_step_median"], r[f"{name}_s_per_step_iqr"]
        assert 0 < r[f"{name}_s_per_step_min"] <= med <= r[f"{name}_s_per_step_max"]
        assert 0 <= iqr <= r[f"{name}_s_per_step_max"] - r[f"{name}_s_per_step_min"]
        assert r[f"{name}_s_per_step"] == med  # the per-step and per-epoch times are the medians
        assert r[f"{name}_s_per_epoch"] == pytest.approx(med * r["steps_per_epoch"])
    assert r["speedup_per_round"]["iqr"] >= 0 and r["speedup_per_round"]["median"] > 0


# ---------------------------------------------------------------- the two-stage VAE prior (Table 1)


def test_two_stage_prior_trains_its_second_stage_samples_and_evaluates(tiny, tmp_path):
    from vaeflow_cli.evaluation.evaluate import evaluate_run

    cfg = config_mod.resolve(
        base=tiny, overrides=["model.prior.type='two-stage-vae'", "model.prior.hidden=32", "train.vae.epochs=1", "train.prior.epochs=2"]
    )
    run = tmp_path / "two-stage"
    train_phase(cfg, run, "vae", progress=False)
    vae = RunDir(run).load_checkpoint("vae")["model"]
    assert not vae["prior.trained"].item()  # phase 1 is Dai & Wipf's first stage: p(z) = N(0, I)
    train_phase(cfg, run, "prior", progress=False)
    state = RunDir(run).load_checkpoint("prior")
    assert state["model"]["prior.trained"].item() and state["start"] == "vae"
    changed = lambda k: not torch.equal(vae[k], state["model"][k])  # noqa: E731
    assert all(changed(k) for k in vae if k.startswith("prior.") and k != "prior.trained")
    assert not any(changed(k) for k in vae if k.startswith(("encoder.", "decoder.", "flow.")))
    records = [r for r in RunDir(run).read_metrics() if r["phase"] == "prior"]
    assert [r["epoch"] for r in records] == [0, 1, 2] and records[-1]["test_bpd"] < records[0]["test_bpd"]
    loaded = load_run(run, device="cpu")
    assert loaded.phase == "prior"
    a = loaded.sample(4, seed=1)
    assert a.shape == (4, 1, 28, 28) and torch.equal(a, loaded.sample(4, seed=1))
    r = evaluate_run(run, metrics=["bpd", "iwae"], iwae_k=4)
    assert np.isfinite(r["bpd_elbo_prior"]) and r["prior_type"] == "two-stage-vae"
    again = evaluate_run(run, metrics=["bpd"])
    assert again["bpd_elbo_prior"] == r["bpd_elbo_prior"]  # the second stage's noise is fixed in evaluation
