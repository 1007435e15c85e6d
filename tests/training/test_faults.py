"""Faults during training: non-finite gradients, skipped steps that must
leave no trace, a full disk, a second process on the same run, SIGTERM from a scheduler."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.data.splits import load_splits
from vaeflow_cli.errors import Interrupted, VaeflowError
from vaeflow_cli.model.vaeflow import VAEFlow, build_model
from vaeflow_cli.runtime.runs import RunDir
from vaeflow_cli.training.loop import train_phase
from vaeflow_cli.training.runconfig import write_config
from vaeflow_cli.training.setup import trainable_parameters
from vaeflow_cli.training.step import Stepper


@pytest.fixture()
def tiny(tiny_config):
    return config_mod.resolve(tiny_config)


def _nan_gradient(bound):
    """A finite loss whose gradient is NaN: d sqrt(u)/du at u = 0 is inf, times 0 (a flow with sqrt at 0)."""
    bound.log_px_z = bound.log_px_z + torch.sqrt(bound.log_px_z * 0.0)
    return bound


def test_a_finite_loss_with_a_nan_gradient_is_skipped_and_every_checkpoint_is_finite(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = VAEFlow.bound

    def poisoned(self, y, **kw):
        b = original(self, y, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in bad:
                b = _nan_gradient(b)
                assert torch.isfinite(b.bpd).all()  # the loss itself stays finite
        return b

    monkeypatch.setattr(VAEFlow, "bound", poisoned)
    bad = {2}
    cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1", "train.max_bad_steps=2", "train.vae.grad_clip=1.0"])
    result = train_phase(cfg, tmp_path / "one", "vae", progress=False)
    assert np.isfinite(result.test_bpd)
    assert RunDir(tmp_path / "one").read_metrics()[-1]["skipped_steps"] == 1
    calls["n"] = 0
    bad = {5, 6}  # epoch 2 steps 2 and 3; step 4 was the last finite one
    cfg2 = config_mod.resolve(base=cfg, overrides=["train.vae.epochs=2"])
    with pytest.raises(
        VaeflowError, match=r"2 non-finite steps .*the weights after step 4 .*saved the last state whose steps were finite \(the end of epoch 1\)"
    ):
        train_phase(cfg2, tmp_path / "two", "vae", progress=False)
    for path in (tmp_path / "one" / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    state = RunDir(tmp_path / "two").load_checkpoint("vae")  # checked (finite) on load
    assert state["global_step"] == 3 and state["skipped_steps"] == 0 and state["epoch"] == 1
    # and the advised resume works (the last good state is good)
    monkeypatch.setattr(VAEFlow, "bound", original)
    result = train_phase(cfg2, tmp_path / "two", "vae", resume=True, progress=False)
    assert np.isfinite(result.test_bpd)


def test_a_skipped_step_leaves_no_trace_not_even_in_batchnorm_statistics(tiny, monkeypatch):
    torch.manual_seed(0)
    data = load_splits(tiny)
    model = build_model(tiny, data.image_shape)
    params = trainable_parameters(model, "vae")
    model.train()
    opt = torch.optim.Adam(params, lr=1e-3)
    model.use_flow = False  # phase 1's model
    stepper = Stepper(model, params, opt, device=torch.device("cpu"))
    y = torch.from_numpy((data.train[:16].astype(np.float32) + 0.5) / 256)
    assert np.isfinite(stepper.step(y))  # a good step first: Adam has state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}
    assert any("running_mean" in k for k in before)
    original = VAEFlow.bound
    monkeypatch.setattr(VAEFlow, "bound", lambda self, y, **kw: _nan_gradient(original(self, y, **kw)))
    assert np.isnan(stepper.step(y)) and stepper.bad_steps == 1
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    for k, v in opt.state_dict()["state"].items():
        for n, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_before[k][n])), (k, n)
    assert all(p.grad is None for p in params)


def _start(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vaeflow_cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kw)


def _wait_for(predicate, proc, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def _long_run(tiny_config):
    return ["--set", "train.vae.epochs=200", "--set", "train.checkpoint_every=1", "--set", "train.threads=1"]


def test_a_run_directory_has_one_writer_and_a_sigkill_leaves_no_stale_lock(tiny_config, tmp_path):
    run = tmp_path / "run"
    first = _start(["train-vae", "--config", tiny_config, "--run", run, *_long_run(tiny_config)])
    try:
        _wait_for(lambda: (run / "checkpoints" / "vae.pt").exists(), first)
        second = run_cli("train-vae", "--run", run, "--resume", check=False)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1 and "in use" in lines[0] and "Traceback" not in second.stderr
        third = run_cli("train-glow", "--run", run, check=False)  # any training phase
        assert third.returncode in (1, 2) and len(third.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the lock with the killed process: resuming works at once, and removes the
    # temporary file the kill may have left mid-write
    resumed = run_cli("train-vae", "--run", run, "--resume", "--set", "train.vae.epochs=1", "--set", "train.checkpoint_every=0", check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.rglob("*.tmp"))
    records = RunDir(run).read_metrics()  # every line is whole JSON; no epoch is recorded twice
    epochs = [r["epoch"] for r in records if r["phase"] == "vae"]
    assert epochs == sorted(set(epochs))


def test_sigterm_stops_at_a_step_boundary_saves_and_the_run_resumes(tiny_config, tmp_path):
    run = tmp_path / "run"
    proc = _start(["train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=200", "--set", "train.threads=1"])
    _wait_for(lambda: (run / "metrics.jsonl").exists(), proc)  # training has started (an epoch ended)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "SIGTERM" in err and "Traceback" not in err and err.strip().splitlines()[-1].startswith("vaeflow: error: interrupted")
    state = RunDir(run).load_checkpoint("vae")
    assert state["global_step"] > 0 and not state["complete"]
    resumed = run_cli("train-vae", "--run", run, "--resume", "--set", f"train.vae.epochs={state['epoch'] + 1}", check=False)
    assert resumed.returncode == 0, resumed.stderr


def _limit_file_size(nbytes):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return pre


def test_a_full_disk_while_checkpointing_is_one_line_and_the_previous_checkpoint_is_intact(tiny_config, tmp_path):
    run = tmp_path / "run"
    run_cli("train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=1")
    ckpt = run / "checkpoints" / "vae.pt"
    good = ckpt.read_bytes()
    metrics = (run / "metrics.jsonl").read_bytes()
    limit = 4096  # the config and a metrics line fit; a checkpoint does not
    assert len(good) > limit
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaeflow_cli",
            "train-vae",
            "--run",
            run,
            "--resume",
            "--set",
            "train.vae.epochs=2",
            "--set",
            "train.keep_checkpoints=0",
        ],
        capture_output=True,
        preexec_fn=_limit_file_size(limit),
        env={**os.environ},
    )
    err = proc.stderr.decode()
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("vaeflow: error: cannot write") and "vae.pt" in lines[-1] and "unchanged" in lines[-1], lines[-1]
    assert ckpt.read_bytes() == good
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".*.tmp"))
    for line in (run / "metrics.jsonl").read_text().splitlines():  # no half-written line
        assert line.startswith("{") and line.endswith("}")
    assert (run / "metrics.jsonl").read_bytes().startswith(metrics)


def _trained(tiny_config, tmp_path) -> Path:
    run = tmp_path / "run"
    run_cli("train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=1")
    return run


def test_stdout_closed_or_a_reader_that_leaves_is_one_line(tiny_config, tmp_path):
    run = _trained(tiny_config, tmp_path)
    closed = subprocess.run(
        [sys.executable, "-m", "vaeflow_cli", "sample", "--run", str(run), "--out", "-"], stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1)
    )
    lines = closed.stderr.decode().strip().splitlines()
    assert closed.returncode == 2 and len(lines) == 1 and "stdout" in lines[0] and "internal error" not in lines[0], lines
    shown = subprocess.run(
        [sys.executable, "-m", "vaeflow_cli", "config", "show"], stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1)
    )  # a command whose result is text on stdout
    lines = shown.stderr.decode().strip().splitlines()
    assert shown.returncode == 1 and len(lines) == 1 and "cannot write the result to stdout" in lines[0], lines
    proc = _start(["sample", "--run", run, "--out", "-", "--format", "npy", "--n", "512"])  # more than a pipe buffer
    proc.stdout.close()  # the reader leaves at once (| true)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("vaeflow: error: the reader of stdout closed the pipe"), err
    assert "Traceback" not in err and "Exception ignored" not in err
    # a reader that takes one byte and leaves (| head -c 1), with stdout buffered or not (python -u,
    # PYTHONUNBUFFERED): a short write is the same one line, never exit 0
    for unbuffered in ("1", ""):
        env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
        if not unbuffered:
            env.pop("PYTHONUNBUFFERED")
        cmd = [sys.executable, "-m", "vaeflow_cli", "sample", "--run", str(run), "--out", "-", "--format", "npy", "--n", "2000"]
        writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        head = subprocess.run(["head", "-c", "1"], stdin=writer.stdout, capture_output=True)
        writer.stdout.close()
        err = writer.stderr.read().decode()
        writer.wait(timeout=120)
        assert len(head.stdout) == 1
        assert writer.returncode == 1 and err.strip().splitlines()[-1].startswith("vaeflow: error: the reader of stdout closed the pipe"), (
            unbuffered,
            err,
        )


def test_out_through_a_link_or_into_a_fifo_keeps_them(tiny_config, tmp_path):
    import threading

    run = _trained(tiny_config, tmp_path)
    target = tmp_path / "target.png"
    link = tmp_path / "link.png"
    link.symlink_to(target)
    run_cli("sample", "--run", run, "--out", link)
    assert link.is_symlink() and target.read_bytes().startswith(b"\x89PNG")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("bytes", fifo.read_bytes()))
    reader.start()
    run_cli("sample", "--run", run, "--out", fifo)
    reader.join(timeout=60)
    assert got["bytes"].startswith(b"\x89PNG") and fifo.is_fifo()


def test_a_second_signal_aborts_at_once_with_one_line_and_sigterm_before_training_is_one_line(tiny_config, tmp_path):
    run = tmp_path / "run"
    proc = _start(["train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=200", "--set", "train.threads=1"])
    _wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("vaeflow: error:"), err
    # importing torch and checking take about 2 s: no training loop yet on a slow machine; on a fast
    # one the signal may land in the first epochs, so the run is long enough to be stopped either way
    early = _start(["train-vae", "--config", tiny_config, "--run", tmp_path / "early", "--set", "train.threads=1", "--set", "train.vae.epochs=200"])
    time.sleep(2.0)
    early.send_signal(signal.SIGTERM)
    _, err = early.communicate(timeout=120)
    err = err.decode()
    assert early.returncode == 130 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("vaeflow: error:"), err


def test_a_fresh_start_after_a_run_killed_before_its_first_checkpoint_records_each_epoch_once(tiny, tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1"])
    run.path.mkdir()
    write_config(run, cfg)
    run.append_metrics({"phase": "vae", "epoch": 1, "train_bpd": 9.0, "test_bpd": 9.0})  # killed before its checkpoint
    train_phase(cfg, run.path, "vae", progress=False)
    assert [r["epoch"] for r in run.read_metrics() if r["phase"] == "vae"] == [1]


@pytest.mark.parametrize("from_end", [3, 2, 1])
def test_a_step_that_fails_near_the_end_of_an_epoch_stops_without_hanging(tiny, tmp_path, monkeypatch, from_end):
    """Too many non-finite steps while the loader is handing over the epoch's last batches (the
    producer waiting on a full queue) must not hang: the error is raised and the run goes back to
    the last state whose steps were finite. faulthandler turns a hang into a failure with the stacks."""
    import faulthandler

    original = VAEFlow.bound
    calls = {"n": 0}
    cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=1", "train.vae.batch_size=8", "train.max_bad_steps=1"])
    steps = 96 // 8
    bad_step = steps - from_end + 1  # 1-based: the step that takes the from_end-th batch from the end

    def poisoned(self, y, **kw):
        b = original(self, y, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == bad_step:
                time.sleep(0.2)  # the producer fills the queue and waits on its last put
                b = _nan_gradient(b)
        return b

    monkeypatch.setattr(VAEFlow, "bound", poisoned)
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with pytest.raises(VaeflowError, match="1 non-finite steps"):
            train_phase(cfg, tmp_path / "run", "vae", progress=False)
    finally:
        faulthandler.cancel_dump_traceback_later()
    # the last state whose steps were finite is the start of this fresh phase: nothing is kept, a resume starts it again
    assert not RunDir(tmp_path / "run").checkpoint_path("vae").exists()


def test_the_advice_after_non_finite_steps_works_a_resume_with_a_lower_learning_rate_goes_on(tiny, tmp_path):
    """lr = 10 wrecks the embedded default's weights with a finite step before the non-finite ones:
    the weights after it give non-finite steps whatever the learning rate, so the state kept is
    the last one whose steps were finite (here the start of the phase: nothing is kept), and the
    advised resume with a lower learning rate trains on."""
    fast = ["train.threads=1", "train.eval_samples=32", "run.sample_n=4"]
    wild = config_mod.resolve(None, ["train.vae.lr=10", *fast])
    with pytest.raises(VaeflowError) as info:
        train_phase(wild, tmp_path / "run", "vae", progress=False)
    msg = str(info.value)
    assert (
        "non-finite steps" in msg and "the last finite one, give non-finite losses or gradients whatever the learning rate" in msg and "\n" not in msg
    )
    assert msg.endswith(
        f"lower train.vae.lr (or set train.vae.grad_clip), then vaeflow train-vae --run {tmp_path / 'run'} --resume (it starts the phase from the beginning)"
    )
    assert not (tmp_path / "run" / "checkpoints" / "vae.pt").exists()
    calm = config_mod.resolve(None, ["train.vae.lr=1e-5", "train.vae.grad_clip=1.0", *fast])
    with pytest.raises(Interrupted):  # not a non-finite step: the advice works
        train_phase(calm, tmp_path / "run", "vae", resume=True, progress=False, max_steps=15)
    assert RunDir(tmp_path / "run").load_checkpoint("vae")["skipped_steps"] == 0


def test_a_run_damaged_mid_phase_goes_back_to_the_last_epoch_end_and_resumes_as_if_nothing_happened(tiny, tmp_path, monkeypatch):
    """One finite step that wrecks the weights (scaled by 1e30) in epoch 2, then non-finite steps:
    the run goes back to the end of epoch 1 (the checkpoints and records after it removed), and
    the resume then trains exactly as a run that never met the bad step."""
    from vaeflow_cli.training import step as step_mod

    cfg = config_mod.resolve(base=tiny, overrides=["train.vae.epochs=3", "train.max_bad_steps=2", "train.keep_checkpoints=5", "train.threads=1"])
    clean = train_phase(cfg, tmp_path / "clean", "vae", progress=False)
    original, calls = step_mod.Stepper.step, {"n": 0}

    def wrecking(self, y):
        value = original(self, y)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2 step 1: a finite step whose update leaves unusable weights
            with torch.no_grad():
                for p in self.params:
                    p.mul_(1e30)
        return value

    monkeypatch.setattr(step_mod.Stepper, "step", wrecking)
    with pytest.raises(VaeflowError) as info:
        train_phase(cfg, tmp_path / "run", "vae", progress=False)
    msg = str(info.value)
    assert (
        "the weights after step 4 of the phase, the last finite one" in msg
        and "saved the last state whose steps were finite (the end of epoch 1)" in msg
    )
    rd = RunDir(tmp_path / "run")
    assert [p.name for p in rd.kept_checkpoints("vae")] == ["vae-step000000003.pt"] and rd.load_checkpoint("vae")["global_step"] == 3
    assert [r["epoch"] for r in rd.read_metrics()] == [1]
    monkeypatch.setattr(step_mod.Stepper, "step", original)
    rescued = train_phase(cfg, tmp_path / "run", "vae", resume=True, progress=False)
    assert rescued.test_bpd == clean.test_bpd
    a, b = rd.load_checkpoint("vae")["model"], RunDir(tmp_path / "clean").load_checkpoint("vae")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_held_out_bound_says_how_many_steps_were_skipped_and_the_advice_works(tiny, tmp_path):
    """Finite training steps or skipped ones, a NaN held-out bound (eval mode wrecked): stopped
    before the epoch is saved, the message counts the steps truthfully, and a resume with a lower
    learning rate trains on."""
    tiny_wild = config_mod.resolve(base=tiny, overrides=["train.vae.lr=10", "train.vae.epochs=1", "train.threads=1"])
    with pytest.raises(
        VaeflowError,
        match=r"held-out bound of .* is nan after epoch 1 \(1 of its training steps in this call finite, 2 skipped\): .* nothing of this epoch was saved, and no checkpoint of the phase is left",
    ) as info:
        train_phase(tiny_wild, tmp_path / "tiny", "vae", progress=False)
    assert "\n" not in str(info.value) and "were finite" not in str(info.value) and not (tmp_path / "tiny" / "checkpoints" / "vae.pt").exists()
    metrics = tmp_path / "tiny" / "metrics.jsonl"
    assert not metrics.exists() or "NaN" not in metrics.read_text()
    calm = config_mod.resolve(base=tiny, overrides=["train.vae.lr=1e-4", "train.vae.epochs=1", "train.threads=1"])
    assert np.isfinite(train_phase(calm, tmp_path / "tiny", "vae", resume=True, progress=False).test_bpd)


@pytest.mark.parametrize("saved, words", [(False, "no checkpoint of this phase had been written yet"), (True, "the last checkpoint is kept")])
def test_a_second_signal_says_whether_a_checkpoint_was_kept(saved, words):
    script = (
        "import os, signal, time\n"
        "from vaeflow_cli.training.signals import stop_on_signals\n"
        f"with stop_on_signals(saved=lambda: {saved}):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vaeflow: error:")]
    assert proc.returncode == 130 and len(lines) == 1 and words in lines[0], proc.stderr
    assert ("--resume continues" in lines[0]) == saved
