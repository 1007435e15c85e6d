"""Two-phase training (paper, section 3.4).

Phase ``vae`` maximises the phase-1 ELBO over encoder, decoder and prior (f = identity, not run).
Phase ``glow`` freezes them (eval mode, no gradients) and maximises E_q[log p(y|z)] over the Glow
layer; its first evaluation equals the phase-1 bound because the layer starts as the identity.

The loss is the bound in bits per dimension, averaged over the batch. Checkpoints at each epoch
end (and on Ctrl-C) hold the weights, the optimizer state, the RNG state and the
position in the epoch; the epoch order and the dequantization noise are functions of
(seed, epoch), so ``--resume`` continues exactly where training stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaeflow_cli import config as config_mod
from vaeflow_cli.console import log
from vaeflow_cli.data import BatchLoader, Splits, dequantize_on_device, load_splits
from vaeflow_cli.engine import Stepper, configure_backends, init_distributed
from vaeflow_cli.errors import Interrupted, RuntimeFailure, VaeflowError
from vaeflow_cli.images import grid, png_bytes, to_uint8
from vaeflow_cli.likelihood import held_out_bpd
from vaeflow_cli.model import VAEFlow, build_model, check_components
from vaeflow_cli.runs import RunDir, all_finite, atomic_write_bytes, check_signature, load_weights

SAMPLE_SEED = 1234  # the per-epoch sample grids use the same latents every epoch


class _StopRequested(Exception):
    """Raised at a step boundary after Ctrl-C (or ``max_steps``), where the state is consistent."""


class _TooManyBadSteps(Exception):
    """train.max_bad_steps consecutive non-finite steps."""


STOP_SIGNALS = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}  # SIGTERM: what SLURM and Kubernetes send before a kill


@contextlib.contextmanager
def _stop_on_signals():
    """The first Ctrl-C (SIGINT) or SIGTERM asks training to stop at the next step boundary and
    save a checkpoint, so a preempted job resumes with nothing lost; a second one aborts at once,
    keeping only the last checkpoint. Yields a dict whose "stop" key is the flag."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:  # the second signal: abort now, without running exit handlers that could block
            os.write(2, b"vaeflow: error: aborted by a second signal; the last checkpoint is kept (--resume continues from it)\n")
            os._exit(130)
        flag["stop"] = True
        name = STOP_SIGNALS.get(signal.Signals(signum).name, signal.Signals(signum).name)
        log(f"{name}: stopping after this step and saving a checkpoint (a second signal aborts without saving)")

    previous = {name: signal.signal(getattr(signal, name), handler) for name in STOP_SIGNALS if hasattr(signal, name)}
    try:
        yield flag
    finally:
        if not flag["stop"]:  # after a stop request this handler stays: a second signal still aborts in one line
            for name, old in previous.items():
                signal.signal(getattr(signal, name), old)


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The torch device for ``name`` (auto, cpu, cuda or cuda:N); ``option`` names where it came from
    in the one-line error (``--device`` for the commands that take it, ``train.device`` in configs)."""
    fix = "--device cpu" if option.startswith("--") else "--set train.device=cpu (or auto)"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise VaeflowError(f"{option} = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise VaeflowError(f"{option} = {name!r}: vaeflow runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VaeflowError(f"{option} = {name!r} but no CUDA device is available; use {fix}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VaeflowError(f"{option} = {name!r} but this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev


# ------------------------------------------------------------------ the training loop


def learning_rate(pcfg: dict, epoch: int, global_step: int) -> float:
    """The schedule: ``lr`` halved every ``lr_halve_every`` epochs (paper: 250), after a linear
    warm-up over the first ``warmup_steps`` steps. A function of the position alone, so a resumed
    run continues it exactly."""
    lr = pcfg["lr"]
    if pcfg["lr_halve_every"] > 0:
        lr *= 0.5 ** (epoch // pcfg["lr_halve_every"])
    if pcfg["warmup_steps"] > 0:
        lr *= min(1.0, (global_step + 1) / pcfg["warmup_steps"])
    return lr


@dataclass
class PhaseResult:
    run_dir: Path
    phase: str
    epochs: int
    test_bpd: float | None
    checkpoint: Path


def _phase_modules(model: VAEFlow, phase: str):
    return {"vae": lambda: [model.encoder, model.decoder, model.prior],
            "joint": lambda: [model.encoder, model.decoder, model.prior, model.flow],
            "prior": lambda: [model.prior]}.get(phase, lambda: [model.flow])()


PHASE_NAMES = {"vae": "phase 1", "glow": "phase 2", "baseline": "the baseline", "joint": "the joint fine-tuning",
               "prior": "the prior training"}


def uses_flow(phase: str, start: str | None) -> bool:
    """Whether ``phase``'s model runs its Glow layer: not phase 1, nor a prior trained on phase 1."""
    return phase != "vae" and not (phase == "prior" and start == "vae")


def previous_phase(rd: RunDir, phase: str) -> str | None:
    """The finished phase whose checkpoint ``phase`` starts from: phase 2 from phase 1 (or from a
    prior trained on it), joint fine-tuning from phase 2, the prior from phase 2 or else phase 1."""
    has = lambda p: rd.checkpoint_path(p).exists()  # noqa: E731
    if phase == "glow":
        return "prior" if has("prior") and not has("glow") and rd.load_checkpoint("prior").get("start") == "vae" else "vae"
    if phase == "joint":
        return "glow"
    if phase == "prior":
        return "glow" if has("glow") else "vae"
    return None


def trainable_parameters(model, phase: str) -> list[torch.nn.Parameter]:
    """The parameters ``phase`` trains. The other phase's modules are frozen (requires_grad off):
    the VAE in phase 2, the unused Glow layer in phase 1 (which DDP requires)."""
    if isinstance(model, VAEFlow):
        for m in (model.encoder, model.decoder, model.prior, model.flow):
            m.requires_grad_(False)
    for m in _phase_modules(model, phase):
        m.requires_grad_(True)
    return [p for m in _phase_modules(model, phase) for p in m.parameters()]


def set_phase_mode(model: VAEFlow, phase: str) -> None:
    """Train mode for what this phase trains; the frozen phase-1 parts stay in eval mode."""
    model.eval()
    for m in _phase_modules(model, phase):
        m.train()


def _write_sample_grid(model: VAEFlow, rd: RunDir, phase: str, epoch: int, n: int) -> Path:
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    with torch.no_grad():
        model.eval()
        x = model.sample(n, temperature=0.5, vae_only=(phase == "vae"), generator=g)
    path = rd.samples_dir / f"{phase}-epoch{epoch:04d}.png"
    atomic_write_bytes(path, png_bytes(grid(to_uint8(x))))
    return path


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_run(cfg: dict, rd: RunDir, phase: str, *, resume: bool, config_path: str | Path | None = None) -> None:
    """Refuse (one line) to train ``phase`` of ``cfg`` in ``rd``, reading only: a finished or
    started phase without --resume, a run made with another [model]/[data] config, a later phase
    in a folder that is not a run. Called before anything is written, and again under the lock."""
    ckpt_path = rd.checkpoint_path(phase)
    if os.path.lexists(rd.path) and not rd.path.is_dir():
        raise VaeflowError(f"--run {rd.path} is not a directory (a file, or a broken or looping link); give a run directory")
    for entry, folder in ((rd.path / "checkpoints", True), (rd.samples_dir, True), (rd.path / "eval", True),
                          (rd.config_path, False), (rd.metrics_path, False)):
        if os.path.lexists(entry) and (entry.is_dir() != folder or not (folder or entry.is_file())):
            want = "a folder" if folder else "a regular file"
            raise VaeflowError(f"{entry} is in the way: vaeflow keeps {want} there; move it away, or choose another --run")
    rd.read_metrics()  # a damaged metrics.jsonl is refused now, before anything is written
    if ckpt_path.exists() and not resume:
        raise VaeflowError(f"{rd.path} already has a {PHASE_NAMES[phase]} checkpoint ({ckpt_path}); pass --resume to continue it, or choose a new --run")
    if rd.config_path.exists():
        existing = rd.resolved_config()
        if config_mod.model_signature(existing) != config_mod.model_signature(cfg):
            raise VaeflowError(f"{rd.path} was created with a different [model]/[data] config; use its own config (omit --config) or a new --run")
    elif phase not in ("vae", "baseline"):
        hint = f"vaeflow train-vae --config {config_path} --run {rd.path}" if config_path else f"vaeflow train-vae --run {rd.path}"
        data, root = cfg["data"]["name"], cfg["data"].get("root", "")
        needs = f" (it trains on the {data} dataset at data.root = {root!r}, which is not there yet: vaeflow data download {data} --root {root})" \
            if root and not os.path.exists(root) else ""
        raise VaeflowError(f"{rd.path} is not a vaeflow run (no config.toml); {PHASE_NAMES[phase]} starts from phase 1: run {hint} first{needs}")


def prepare_run(cfg: dict, rd: RunDir, phase: str, *, resume: bool = False) -> None:
    """Check that ``cfg`` fits the run directory (check_run) and write it there."""
    check_run(cfg, rd, phase, resume=resume)
    rd.write_config(cfg)


def _load_previous(rd: RunDir, phase: str, cfg: dict, model, device) -> str | None:
    """Load the finished phase that ``phase`` starts from into ``model`` (reading only); its name."""
    before = previous_phase(rd, phase)
    if before is None:
        return None
    if not rd.checkpoint_path(before).exists():
        raise VaeflowError(f"{rd.path} has no {PHASE_NAMES[before]} checkpoint; run vaeflow train-{before} --run {rd.path} first")
    prev_state = rd.load_checkpoint(before, map_location=device)
    check_signature(prev_state, cfg, rd.checkpoint_path(before))
    if not prev_state.get("complete"):
        raise VaeflowError(f"{PHASE_NAMES[before]} of {rd.path} is not finished (epoch {prev_state['epoch']}/{prev_state['epochs']}); run vaeflow train-{before} --run {rd.path} --resume")
    load_weights(model, prev_state["model"], rd.checkpoint_path(before))
    return before


def _check_optimizer_shapes(opt, path) -> None:
    """After ``opt.load_state_dict``: every per-parameter state tensor (Adam's moments) has its
    parameter's shape (load_state_dict does not check; finiteness is checked on load), or one line
    before anything is written."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, t in opt.state.get(p, {}).items():
                if isinstance(t, torch.Tensor) and t.dim() > 0 and tuple(t.shape) != tuple(p.shape):
                    raise VaeflowError(f"checkpoint {path}: its optimizer's {name!r} has shape {tuple(t.shape)} for a parameter of shape "
                                       f"{tuple(p.shape)}; the file is damaged: restore it or retrain the phase")


def _check_finite_weights(model, what: str) -> None:
    """One fused check that every floating-point parameter and buffer is finite."""
    if not all_finite([*model.parameters(), *model.buffers()]):
        raise RuntimeFailure(what)


def train_phase(cfg: dict, run_dir: str | Path, phase: str, *, resume: bool = False, progress: bool = True,
                max_steps: int | None = None, config_path: str | Path | None = None) -> PhaseResult:
    """Train one phase of a resolved config into ``run_dir``: 'vae' (phase 1), 'glow' (phase 2),
    'prior' (the prior alone on the frozen encoder), 'joint' (everything, after phase 2) or
    'baseline' (the [model.flow] alone as a density).

    Everything that can be checked is checked before the run directory is touched: the config
    against the run, the data (opened and decoded), the model (built, and each component run once
    on training images), the checkpoints it starts from. A failed start leaves the directory as it
    was. Then the directory is locked for this process (RunDir.lock) for the whole phase.

    Under torchrun every rank runs this; rank 0 alone writes the run directory, and an error there
    is raised on every rank. ``max_steps`` stops after that many optimizer steps in this call
    (checkpointing first), as a Ctrl-C would; tests use it to interrupt and resume deterministically.
    ``config_path``: the config file the user gave, for the commands that error messages suggest."""
    if phase not in config_mod.PHASES:
        raise ValueError(phase)
    tcfg, pcfg = cfg["train"], cfg["train"][phase]
    ddp, ddp_device = init_distributed(tcfg["device"])
    rd = RunDir(run_dir)
    ckpt_path = rd.checkpoint_path(phase)
    if pcfg["batch_size"] % ddp.world_size:
        raise VaeflowError(f"train.{phase}.batch_size = {pcfg['batch_size']} is the global batch and must divide by the {ddp.world_size} processes")
    with contextlib.ExitStack() as held:
        locked = ddp.broadcast(rd.path.is_dir())  # an existing run is held from the start: a second process fails fast
        if locked:
            ddp.main_only(lambda: held.enter_context(rd.lock()))
        check_run(cfg, rd, phase, resume=resume, config_path=config_path)
        seed = tcfg["seed"]
        device = ddp_device or resolve_device(tcfg["device"])
        signature = json.dumps(config_mod.model_signature(cfg), sort_keys=True)

        data: Splits = load_splits(cfg)
        if len(data.train) < ddp.world_size or len(data.test) < 1:
            raise VaeflowError(f"the dataset has {len(data.train)} training and {len(data.test)} held-out images; training needs at least {ddp.world_size} and 1")
        torch.manual_seed(seed + config_mod.PHASES.index(phase) + 1000 * ddp.rank)
        model = build_model(cfg, data.image_shape, baseline=phase == "baseline").to(device)
        check_components(model, torch.from_numpy((data.train[:2].astype(np.float32) + 0.5) / 256.0).to(device))
        before = _load_previous(rd, phase, cfg, model, device)
        params = trainable_parameters(model, phase)
        if not params:
            raise VaeflowError(f"the {phase} phase has no parameters to train: the components it trains ({', '.join(type(m).__name__ for m in _phase_modules(model, phase))}) have none; check the [model] types")
        opt = torch.optim.Adam(params, lr=pcfg["lr"])
        use_flow = uses_flow(phase, before)
        stepper = Stepper(model, params, opt, use_flow=use_flow, device=device, precision=tcfg["precision"],
                          grad_clip=pcfg["grad_clip"], compile=tcfg["compile"], channels_last=tcfg["channels_last"], dist=ddp)

        loader = BatchLoader(data.train, batch_size=pcfg["batch_size"] // ddp.world_size, seed=seed,
                             dequantize=tcfg["dequantize"] != "device", rank=ddp.rank, world_size=ddp.world_size,
                             pin_memory=device.type == "cuda")
        epoch, step, global_step, loss_sum, loss_n, skipped = 0, 0, 0, 0.0, 0, 0
        state = {}
        if resume and ckpt_path.exists():
            state = rd.load_checkpoint(phase, map_location=device)
            check_signature(state, cfg, ckpt_path)
            load_weights(model, state["model"], ckpt_path)
            try:
                opt.load_state_dict(state["optimizer"])
                if "scaler" in state:
                    stepper.scaler.load_state_dict(state["scaler"])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise VaeflowError(f"checkpoint {ckpt_path}: its optimizer state does not fit this model ({type(exc).__name__}: {str(exc)[:120]}); the file is damaged: restore it or retrain the phase") from None
            rngs = state.get("rng_ranks") or [state["rng"]]
            _check_optimizer_shapes(opt, ckpt_path)
            try:
                _set_rng_state(rngs[ddp.rank % len(rngs)], device)
            except (KeyError, TypeError, RuntimeError) as exc:
                raise VaeflowError(f"checkpoint {ckpt_path}: its RNG state cannot be restored ({type(exc).__name__}); the file is damaged: restore it or retrain the phase") from None
            epoch, step, global_step = state["epoch"], state["step"], state["global_step"]
            loss_sum, loss_n, skipped = state["loss_sum"], state["loss_n"], state.get("skipped_steps", 0)
            if step > len(loader) and epoch < state["epochs"]:
                raise VaeflowError(f"checkpoint {ckpt_path}: step {step} of an epoch of {len(loader)} steps (batch {pcfg['batch_size']}); it is damaged, or "
                                   f"train.{phase}.batch_size changed since it was saved: restore the batch size or retrain the phase")
        if phase == "prior" and hasattr(model.prior, "trained"):
            model.prior.trained.fill_(True)  # a second-stage prior: from now on log p(z) is its ELBO

        def start_writing() -> None:
            """Rank 0: lock the directory (if not yet), check again under the lock, write the config."""
            if not locked:
                held.enter_context(rd.lock())
            prepare_run(cfg, rd, phase, resume=resume)
            rd.remove_stale_temporaries()  # of a writer killed mid-write (SIGKILL): we hold the lock
            if rd.metrics_path.exists():  # records a killed or refused earlier start left beyond this position
                rd.truncate_metrics(phase, epoch)
            if resume and epoch + step > 0:
                log(f"resuming phase {phase} of {rd.path} at epoch {epoch + 1}, step {step}")
                if len(state.get("rng_ranks") or [state["rng"]]) != ddp.world_size:
                    log(f"resuming with {ddp.world_size} processes from a checkpoint of {len(state.get('rng_ranks') or [1])}: data order is kept, latent noise differs")
            elif resume:
                log(f"no {phase} checkpoint in {rd.path} yet; starting phase {phase} from the beginning")

        ddp.main_only(start_writing)
        configure_backends(device, tcfg)  # after the checks: a failed start prints its error line only
        return _train_loop(cfg, rd, phase, ddp, device, data, loader, model, opt, stepper, before=before, use_flow=use_flow,
                           signature=signature, position=(epoch, step, global_step, loss_sum, loss_n, skipped),
                           progress=progress, max_steps=max_steps)


def _train_loop(cfg, rd, phase, ddp, device, data, loader, model, opt, stepper, *, before, use_flow, signature, position,
                progress, max_steps) -> PhaseResult:
    tcfg, pcfg = cfg["train"], cfg["train"][phase]
    seed = tcfg["seed"]
    ckpt_path = rd.checkpoint_path(phase)
    epoch, step, global_step, loss_sum, loss_n, skipped = position
    if before is not None and epoch == 0 and step == 0:
        def record_start() -> float:
            start = held_out_bpd(model, data.test, seed=seed, use_flow=use_flow, device=device, limit=tcfg["eval_samples"])
            note = {"glow": "start of phase 2 (Glow layer = identity)", "joint": "start of joint fine-tuning (the two-phase model)",
                    "prior": f"start of prior training (from {PHASE_NAMES[before]})"}[phase]
            rd.truncate_metrics(phase, -1)
            rd.append_metrics({"phase": phase, "epoch": 0, "test_bpd": start, "note": note})
            log(f"{phase} start: held-out bound <= {start:.4f} bpd ({note})")
            return start

        ddp.main_only(record_start)

    def checkpoint(complete: bool = False) -> Path:
        """Every rank calls this at the same step (the RNG states are gathered); rank 0 writes.
        Non-finite weights are never saved: the run stops and the last checkpoint stays."""
        rngs = ddp.gather(_rng_state(device))
        ddp.sync_buffers(model)
        ddp.check_replicas(model, f"after {phase} epoch {epoch}" if step == 0 else f"at {phase} epoch {epoch + 1} step {step}")

        def save() -> Path:
            _check_finite_weights(model, f"the weights of {PHASE_NAMES[phase]} became non-finite at epoch {epoch + 1} step {step}; "
                                         f"nothing was saved, the last checkpoint {ckpt_path} is kept; lower train.{phase}.lr or set "
                                         f"train.{phase}.grad_clip, then vaeflow train-{phase} --run {rd.path} --resume")
            return rd.save_checkpoint(phase, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": stepper.scaler.state_dict(),
                "lr": opt.param_groups[0]["lr"], "rng": rngs[0], "rng_ranks": rngs, "epoch": epoch, "step": step,
                "global_step": global_step, "epochs": pcfg["epochs"], "loss_sum": loss_sum, "loss_n": loss_n,
                "skipped_steps": skipped, "complete": complete, "signature": signature, "world_size": ddp.world_size,
                "start": before,
            }, keep=tcfg["keep_checkpoints"], tag=f"step{global_step:09d}")

        return ddp.main_only(save)

    on_device = tcfg["dequantize"] == "device"
    steps_per_epoch = len(loader)
    test_bpd = None
    bar = _Progress(enabled=progress and ddp.is_main)
    steps_this_call = 0
    every = tcfg["checkpoint_every"]
    with _stop_on_signals() as interrupt:  # installed until the final checkpoint is saved
        try:
            with bar:
                while epoch < pcfg["epochs"]:
                    t0 = time.perf_counter()
                    loader.wait_seconds = 0.0
                    bar.start_epoch(f"{phase} {epoch + 1}/{pcfg['epochs']}", steps_per_epoch, step)
                    set_phase_mode(model, phase)
                    for idx, y in loader.device_epoch(epoch, device, start=step):
                        stop = interrupt["stop"] or (max_steps is not None and steps_this_call >= max_steps)
                        if ddp.enabled:  # every rank stops at the same step
                            stop = ddp.sum(float(stop))[0] > 0
                        if stop:
                            raise _StopRequested
                        if on_device:  # uint8 crossed to the device; the same noise, computed there
                            y = dequantize_on_device(y, torch.from_numpy(idx.astype(np.int64)).to(device), seed=seed, epoch=epoch)
                        for group in opt.param_groups:
                            group["lr"] = learning_rate(pcfg, epoch, global_step)
                        value = stepper.step(y)
                        step += 1
                        global_step += 1
                        steps_this_call += 1
                        if math.isnan(value):
                            skipped += 1
                            log(f"{phase} epoch {epoch + 1} step {step}: non-finite loss or gradient, step skipped ({stepper.bad_steps} in a row, limit train.max_bad_steps = {tcfg['max_bad_steps']})")
                            if stepper.bad_steps >= tcfg["max_bad_steps"]:
                                raise _TooManyBadSteps
                        else:
                            loss_sum += value * len(idx)
                            loss_n += len(idx)
                            bar.advance(value)
                        if every > 0 and global_step % every == 0 and step < steps_per_epoch:
                            checkpoint()
                    wait = loader.wait_seconds
                    loss_sum, loss_n = ddp.sum(loss_sum, loss_n)
                    test_bpd = ddp.main_only(lambda: held_out_bpd(model, data.test, seed=seed, use_flow=use_flow, device=device, limit=tcfg["eval_samples"]))
                    seconds = time.perf_counter() - t0
                    record = {"phase": phase, "epoch": epoch + 1, "train_bpd": loss_sum / max(loss_n, 1),
                              "test_bpd": test_bpd, "lr": opt.param_groups[0]["lr"], "steps": global_step,
                              "skipped_steps": skipped, "seconds": round(seconds, 3), "data_wait_seconds": round(wait, 3),
                              "data_wait_share": round(wait / max(seconds, 1e-9), 4)}
                    epoch, step, loss_sum, loss_n = epoch + 1, 0, 0.0, 0
                    ddp.main_only(lambda: rd.append_metrics(record))  # first: a kill before the checkpoint only repeats the epoch
                    path = checkpoint(complete=epoch >= pcfg["epochs"])
                    grid_path = ddp.main_only(lambda: _write_sample_grid(model, rd, phase, epoch, cfg["run"]["sample_n"]))
                    if ddp.is_main:
                        bar.finish_epoch(
                            f"{phase} epoch {epoch}/{pcfg['epochs']}: train loss {record['train_bpd']:.4f} bpd, "
                            f"held-out bound <= {test_bpd:.4f} bpd, lr {record['lr']:.2e}, {record['seconds']:.1f} s "
                            f"({100 * record['data_wait_share']:.1f}% waiting for data); {grid_path}"
                        )
        except _StopRequested:
            path = checkpoint()
            raise Interrupted(f"interrupted at {phase} epoch {epoch + 1} step {step}; saved {path}; continue with: vaeflow train-{phase} --run {rd.path} --resume") from None
        except _TooManyBadSteps:
            path = checkpoint()  # the skipped steps changed nothing: this is the last good state
            raise RuntimeFailure(f"{stepper.bad_steps} non-finite steps (loss or gradient) in a row at {phase} epoch {epoch + 1} step {step} (train.max_bad_steps = {tcfg['max_bad_steps']}); saved the last good state to {path}; lower train.{phase}.lr or set train.{phase}.grad_clip, then vaeflow train-{phase} --run {rd.path} --resume") from None
        if pcfg["epochs"] <= epoch and test_bpd is None:
            if ddp.is_main:
                log(f"phase {phase} of {rd.path} is already complete ({epoch} epochs); raise train.{phase}.epochs to train further")
            path = checkpoint(complete=True)
    return PhaseResult(rd.path, phase, epoch, test_bpd, path)


class _Progress:
    """A rich progress bar on stderr (or nothing), plus one log line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, description: str, total: int, done: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(description, total=total, completed=done, loss="-")

    def advance(self, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}")

    def finish_epoch(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, highlight=False, markup=False)
        else:
            log(message)
