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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.console import log, progress_enabled
from vaeflow_cli.data.images import grid, png_bytes, to_uint8
from vaeflow_cli.data.pipeline import BatchLoader, Splits, dequantize_on_device, load_splits
from vaeflow_cli.errors import Interrupted, RuntimeFailure, VaeflowError
from vaeflow_cli.evaluation.bounds import held_out_bpd
from vaeflow_cli.files import atomic_write_bytes
from vaeflow_cli.model.sampling import bin_centres
from vaeflow_cli.model.vaeflow import VAEFlow, build_model, check_components
from vaeflow_cli.training.loggers import MetricsSink
from vaeflow_cli.training.phases import PHASES, previous
from vaeflow_cli.training.runs import RunDir, all_finite, check_signature, load_weights
from vaeflow_cli.training.step import Stepper, configure_backends, init_distributed, resolve_device

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


def phase_modules(model, phase: str) -> list[torch.nn.Module]:
    """The model parts ``phase`` trains (``PHASES[phase].trains``); a FlowModel is its flow alone."""
    if not isinstance(model, VAEFlow):
        return [model.flow]
    return [getattr(model, part) for part in PHASES[phase].trains]


def previous_phase(rd: RunDir, phase: str) -> str | None:
    """The finished phase whose checkpoint ``phase`` starts from in ``rd`` (``phases.previous``)."""
    return previous(phase, has=lambda p: rd.checkpoint_path(p).exists(), start_of=lambda p: rd.load_checkpoint(p).get("start"))


def trainable_parameters(model, phase: str) -> list[torch.nn.Parameter]:
    """The parameters ``phase`` trains. The other phase's modules are frozen (requires_grad off):
    the VAE in phase 2, the unused Glow layer in phase 1 (which DDP requires)."""
    if isinstance(model, VAEFlow):
        for m in (model.encoder, model.decoder, model.prior, model.flow):
            m.requires_grad_(False)
    for m in phase_modules(model, phase):
        m.requires_grad_(True)
    return [p for m in phase_modules(model, phase) for p in m.parameters()]


def set_phase_mode(model: VAEFlow, phase: str) -> None:
    """Train mode for what this phase trains; the frozen phase-1 parts stay in eval mode."""
    model.eval()
    for m in phase_modules(model, phase):
        m.train()


def _write_sample_grid(model: VAEFlow, rd: RunDir, phase: str, epoch: int, n: int) -> Path:
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    with torch.no_grad():
        model.eval()
        x = model.sample(n, temperature=0.5, vae_only=not model.use_flow, generator=g)
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
    for entry, folder in (
        (rd.path / "checkpoints", True),
        (rd.samples_dir, True),
        (rd.path / "eval", True),
        (rd.config_path, False),
        (rd.metrics_path, False),
    ):
        if os.path.lexists(entry) and (entry.is_dir() != folder or not (folder or entry.is_file())):
            want = "a folder" if folder else "a regular file"
            raise VaeflowError(f"{entry} is in the way: vaeflow keeps {want} there; move it away, or choose another --run")
    rd.read_metrics()  # a damaged metrics.jsonl is refused now, before anything is written
    if ckpt_path.exists() and not resume:
        raise VaeflowError(
            f"{rd.path} already has a {PHASES[phase].title} checkpoint ({ckpt_path}); pass --resume to continue it, or choose a new --run"
        )
    if rd.config_path.exists():
        existing = rd.resolved_config()
        if config_mod.model_signature(existing) != config_mod.model_signature(cfg):
            raise VaeflowError(f"{rd.path} was created with a different [model]/[data] config; use its own config (omit --config) or a new --run")
    elif phase not in ("vae", "baseline"):
        hint = f"vaeflow train-vae --config {config_path} --run {rd.path}" if config_path else f"vaeflow train-vae --run {rd.path}"
        data, root = cfg["data"]["name"], cfg["data"].get("root", "")
        needs = (
            f" (it trains on the {data} dataset at data.root = {root!r}, which is not there yet: vaeflow data download {data} --root {root})"
            if root and not os.path.exists(root)
            else ""
        )
        raise VaeflowError(f"{rd.path} is not a vaeflow run (no config.toml); {PHASES[phase].title} starts from phase 1: run {hint} first{needs}")


def prepare_run(cfg: dict, rd: RunDir, phase: str, *, resume: bool = False) -> None:
    """Check that ``cfg`` fits the run directory (check_run) and write it there (unless the file
    already holds exactly that config: a no-op resume rewrites nothing)."""
    check_run(cfg, rd, phase, resume=resume)
    text = config_mod.dumps(cfg).encode()
    try:
        same = rd.config_path.read_bytes() == text
    except OSError:
        same = False
    if not same:
        rd.write_config(cfg)


def _load_previous(rd: RunDir, phase: str, cfg: dict, model, device) -> str | None:
    """Load the finished phase that ``phase`` starts from into ``model`` (reading only); its name."""
    before = previous_phase(rd, phase)
    if before is None:
        return None
    if not rd.checkpoint_path(before).exists():
        raise VaeflowError(f"{rd.path} has no checkpoint of {PHASES[before].title}; run vaeflow train-{before} --run {rd.path} first")
    prev_state = rd.load_checkpoint(before, map_location=device)
    check_signature(prev_state, cfg, rd.checkpoint_path(before))
    if not prev_state.get("complete"):
        raise VaeflowError(
            f"{PHASES[before].title} of {rd.path} is not finished (epoch {prev_state['epoch']}/{prev_state['epochs']}); run vaeflow train-{before} --run {rd.path} --resume"
        )
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
                    raise VaeflowError(
                        f"checkpoint {path}: its optimizer's {name!r} has shape {tuple(t.shape)} for a parameter of shape "
                        f"{tuple(p.shape)}; the file is damaged: restore it or retrain the phase"
                    )


def _check_finite_weights(model, what: str) -> None:
    """One fused check that every floating-point parameter and buffer is finite."""
    if not all_finite([*model.parameters(), *model.buffers()]):
        raise RuntimeFailure(what)


@dataclass
class Position:
    """Where a phase is: ``epoch`` epochs finished, ``step`` optimizer steps into the next one,
    ``global_step`` steps in all, the epoch's running loss (``loss_sum`` over ``loss_n`` images,
    bits/dim) and the non-finite steps ``skipped`` so far."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    skipped: int = 0


@dataclass
class TrainingState:
    """What a checkpoint holds and ``--resume`` restores: the weights (``model``), the optimizer and
    gradient-scaler states, every rank's RNG state and the ``position``. The epoch order and the
    dequantization noise are functions of (seed, epoch), so with these a resumed phase continues
    exactly where it stopped."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    position: Position = field(default_factory=Position)
    resumed_ranks: int | None = None
    restored_complete: bool = False  # the checkpoint restored was already marked complete
    """How many processes wrote the checkpoint this state was restored from (None: a fresh start)."""

    def checkpoint(self, *, rngs: list[dict], epochs: int, complete: bool, signature: str, world_size: int, start: str | None) -> dict[str, Any]:
        """The checkpoint dict (``runs.check_checkpoint`` is its schema); ``rngs``: every rank's RNG state."""
        p = self.position
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lr": self.opt.param_groups[0]["lr"],
            "rng": rngs[0],
            "rng_ranks": rngs,
            "epoch": p.epoch,
            "step": p.step,
            "global_step": p.global_step,
            "epochs": epochs,
            "loss_sum": p.loss_sum,
            "loss_n": p.loss_n,
            "skipped_steps": p.skipped,
            "complete": complete,
            "signature": signature,
            "world_size": world_size,
            "start": start,
        }

    def restore(self, state: dict, path: Path, *, rank: int, steps_per_epoch: int, batch_key: str) -> None:
        """Load a checked checkpoint dict into this state (rank ``rank`` takes its own RNG state).
        Raises VaeflowError, before anything is written, for an optimizer state or RNG state that
        does not fit, or a position past the end of an epoch of ``steps_per_epoch`` steps
        (``batch_key``, the config key of the batch size, is named in that error)."""
        load_weights(self.model, state["model"], path)
        try:
            self.opt.load_state_dict(state["optimizer"])
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise VaeflowError(
                f"checkpoint {path}: its optimizer state does not fit this model ({type(exc).__name__}: {str(exc)[:120]}); "
                "the file is damaged: restore it or retrain the phase"
            ) from None
        _check_optimizer_shapes(self.opt, path)
        rngs = state.get("rng_ranks") or [state["rng"]]
        try:
            _set_rng_state(rngs[rank % len(rngs)], self.device)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise VaeflowError(
                f"checkpoint {path}: its RNG state cannot be restored ({type(exc).__name__}); the file is damaged: restore it or retrain the phase"
            ) from None
        self.position = Position(
            state["epoch"], state["step"], state["global_step"], state["loss_sum"], state["loss_n"], state.get("skipped_steps", 0)
        )
        self.resumed_ranks = len(rngs)
        self.restored_complete = bool(state.get("complete"))
        if self.position.step > steps_per_epoch and self.position.epoch < state["epochs"]:
            raise VaeflowError(
                f"checkpoint {path}: step {self.position.step} of an epoch of {steps_per_epoch} steps; it is damaged, or "
                f"{batch_key} changed since it was saved: restore the batch size or retrain the phase"
            )


def train_phase(
    cfg: dict,
    run_dir: str | Path,
    phase: str,
    *,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    config_path: str | Path | None = None,
) -> PhaseResult:
    """Train one phase of a resolved config into ``run_dir``: 'vae' (phase 1), 'glow' (phase 2),
    'prior' (the prior alone on the frozen encoder), 'joint' (everything, after phase 2) or
    'baseline' (the [model.flow] alone as a density); ``vaeflow_cli.training.phases`` has the table.

    Everything that can be checked is checked before the run directory is touched: the config
    against the run, the data (opened and decoded), the model (built, and each component run once
    on training images), the checkpoints it starts from. A failed start leaves the directory as it
    was. Then the directory is locked for this process (RunDir.lock) for the whole phase.

    Under torchrun every rank runs this; rank 0 alone writes the run directory, and an error there
    is raised on every rank. ``max_steps`` stops after that many optimizer steps in this call
    (checkpointing first), as a Ctrl-C would; tests use it to interrupt and resume deterministically.
    ``config_path``: the config file the user gave, for the commands that error messages suggest.
    Raises VaeflowError (bad input), RuntimeFailure (a run that cannot go on), Interrupted."""
    from vaeflow_cli.config.limits import check_bool, check_count

    if not isinstance(phase, str) or phase not in PHASES:
        raise VaeflowError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("train"), dict) or phase not in cfg["train"]:
        raise VaeflowError("cfg must be a resolved config (vaeflow_cli.resolve_config), not " + type(cfg).__name__)
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir):
        raise VaeflowError(f"run_dir must be the path of a run directory (a str or Path), not {run_dir!r}")
    check_bool(resume, "resume")
    check_bool(progress, "progress")
    if max_steps is not None:
        check_count(max_steps, "max_steps")
    # validated again, as resolve validates a file: a dict edited after resolve_config gets the same rules
    cfg = config_mod.resolve(base=cfg, source="the config given to train_phase")
    tcfg, pcfg = cfg["train"], cfg["train"][phase]
    ddp, ddp_device = init_distributed(tcfg["device"])
    rd = RunDir(run_dir)
    if pcfg["batch_size"] % ddp.world_size:
        raise VaeflowError(f"train.{phase}.batch_size = {pcfg['batch_size']} is the global batch and must divide by the {ddp.world_size} processes")
    with contextlib.ExitStack() as held:
        locked = ddp.broadcast(rd.path.is_dir())  # an existing run is held from the start: a second process fails fast
        if locked:
            ddp.main_only(lambda: held.enter_context(rd.lock()))
        check_run(cfg, rd, phase, resume=resume, config_path=config_path)
        device = ddp_device or resolve_device(tcfg["device"])
        resuming = resume and rd.checkpoint_path(phase).exists()
        p = PHASES[phase]
        data, model = _data_and_model(cfg, phase, ddp, device, fresh_flow=p.flow_at_init and not (resuming and "flow" in p.trains))
        before = _load_previous(rd, phase, cfg, model, device)
        model.use_flow = p.uses_flow(before)  # the phase's model, set once: its forward is the loss
        state, stepper, loader = _training_state(cfg, phase, ddp, device, data, model)
        if resuming:
            path = rd.checkpoint_path(phase)
            saved = rd.load_checkpoint(phase, map_location=device)
            check_signature(saved, cfg, path)
            state.restore(saved, path, rank=ddp.rank, steps_per_epoch=len(loader), batch_key=f"train.{phase}.batch_size")
        if p.prior_alone and hasattr(model.prior, "start_own_training"):
            model.prior.start_own_training()  # a second-stage prior: from now on log p(z) is its ELBO

        metrics = held.enter_context(MetricsSink(rd))  # metrics.jsonl and the [run] loggers, closed on every exit
        ddp.main_only(lambda: metrics.open(cfg["run"]["loggers"], phase=phase, config=cfg))  # rank 0 only; writes nothing yet
        ddp.main_only(lambda: _start_writing(cfg, rd, phase, held, locked=locked, resume=resume, state=state, world_size=ddp.world_size))
        configure_backends(device, tcfg)  # after the checks: a failed start prints its error line only
        trainer = _Trainer(cfg, rd, phase, ddp, data, loader, state, stepper, metrics, before=before)
        return trainer.run(progress=progress, max_steps=max_steps)


def _data_and_model(cfg: dict, phase: str, ddp, device: torch.device, *, fresh_flow: bool):
    """The decoded data and the model, built on ``device`` with the phase's seed, every component
    run once on two training images (``check_components``; ``fresh_flow``: a VAE's pixel flow is
    still at its initialisation and must be the identity there)."""
    data: Splits = load_splits(cfg)
    if len(data.train) < ddp.world_size or len(data.test) < 1:
        raise VaeflowError(
            f"the dataset has {len(data.train)} training and {len(data.test)} held-out images; training needs at least {ddp.world_size} and 1"
        )
    torch.manual_seed(cfg["train"]["seed"] + list(PHASES).index(phase) + 1000 * ddp.rank)
    model = build_model(cfg, data.image_shape, baseline=PHASES[phase].standalone).to(device)
    y = bin_centres(data.train[:2], device)
    check_components(model, y, identity_flow=fresh_flow, flow_type=cfg["model"]["flow"]["type"])
    return data, model


def _training_state(cfg: dict, phase: str, ddp, device: torch.device, data: Splits, model):
    """A fresh TrainingState of ``model`` for ``phase`` (Adam on the parameters it trains), its
    Stepper (the training step) and the rank's BatchLoader."""
    tcfg, pcfg = cfg["train"], cfg["train"][phase]
    params = trainable_parameters(model, phase)
    if not params:
        raise VaeflowError(
            f"the {phase} phase has no parameters to train: the components it trains "
            f"({', '.join(type(m).__name__ for m in phase_modules(model, phase))}) have none; check the [model] types"
        )
    opt = torch.optim.Adam(params, lr=pcfg["lr"])
    stepper = Stepper(
        model,
        params,
        opt,
        device=device,
        precision=tcfg["precision"],
        grad_clip=pcfg["grad_clip"],
        compile=tcfg["compile"],
        channels_last=tcfg["channels_last"],
        dist=ddp,
    )
    loader = BatchLoader(
        data.train,
        batch_size=pcfg["batch_size"] // ddp.world_size,
        seed=tcfg["seed"],
        dequantize=tcfg["dequantize"] != "device",
        rank=ddp.rank,
        world_size=ddp.world_size,
        pin_memory=device.type == "cuda",
    )
    return TrainingState(model, opt, stepper.scaler, device), stepper, loader


def _start_writing(
    cfg: dict, rd: RunDir, phase: str, held: contextlib.ExitStack, *, locked: bool, resume: bool, state: TrainingState, world_size: int
) -> None:
    """Rank 0, after every check: lock the directory (if not yet), check again under the lock,
    write the config, clean up after a killed writer."""
    if not locked:
        held.enter_context(rd.lock())
    prepare_run(cfg, rd, phase, resume=resume)
    rd.remove_stale_temporaries()  # of a writer killed mid-write (SIGKILL): we hold the lock
    p = state.position
    if rd.metrics_path.exists():  # records a killed or refused earlier start left beyond this position
        rd.truncate_metrics(phase, p.epoch)
    if resume and p.epoch + p.step > 0:
        log(f"resuming phase {phase} of {rd.path} at epoch {p.epoch + 1}, step {p.step}")
        if state.resumed_ranks != world_size:
            log(f"resuming with {world_size} processes from a checkpoint of {state.resumed_ranks}: data order is kept, latent noise differs")
    elif resume:
        log(f"no {phase} checkpoint in {rd.path} yet; starting phase {phase} from the beginning")


class _Trainer:
    """The loop of one phase over a prepared TrainingState; ``train_phase`` builds it after every
    check. Every rank runs it; rank 0 alone evaluates, writes metrics, checkpoints and samples."""

    def __init__(
        self,
        cfg: dict,
        rd: RunDir,
        phase: str,
        ddp,
        data: Splits,
        loader: BatchLoader,
        state: TrainingState,
        stepper: Stepper,
        metrics: MetricsSink,
        *,
        before: str | None,
    ) -> None:
        self.cfg, self.rd, self.phase, self.ddp = cfg, rd, phase, ddp
        self.data, self.loader, self.state, self.stepper, self.metrics = data, loader, state, stepper, metrics
        self.before = before
        self.tcfg, self.pcfg = cfg["train"], cfg["train"][phase]
        self.signature = json.dumps(config_mod.model_signature(cfg), sort_keys=True)
        self.steps_this_call = 0

    def held_out_bpd(self) -> float:
        """The ELBO bound (bits/dim) on the held-out split (``train.eval_samples`` of it)."""
        return held_out_bpd(self.state.model, self.data.test, seed=self.tcfg["seed"], device=self.state.device, limit=self.tcfg["eval_samples"])

    def finite_held_out_bpd(self) -> float:
        """The epoch's held-out bound; a non-finite one (the model in eval mode gives NaN though its
        training steps were finite, e.g. BatchNorm statistics wrecked by too high a learning rate)
        stops the run before this epoch is recorded or saved: the last checkpoint is kept."""
        value = self.held_out_bpd()
        if not math.isfinite(value):
            p, phase = self.state.position, self.phase
            last = self.rd.checkpoint_path(phase)
            kept = f"the last checkpoint {last} is kept" if last.exists() else "no checkpoint of it was written"
            raise RuntimeFailure(
                f"the held-out bound of {PHASES[phase].title} is {value} after epoch {p.epoch + 1}: the model in eval mode gives "
                f"non-finite values although its training steps were finite (its weights or normalisation statistics are "
                f"damaged, e.g. by too high a learning rate); nothing of this epoch was saved, {kept}; train the phase again "
                f"with a lower train.{phase}.lr"
            )
        return value

    def record_start(self) -> None:
        """Rank 0, at the start of a phase that continues another: its held-out bound as epoch 0."""
        start = self.held_out_bpd()
        note = {
            "glow": "start of phase 2 (Glow layer = identity)",
            "joint": "start of joint fine-tuning (the two-phase model)",
            "prior": f"start of prior training (from {PHASES[self.before].title})",
        }[self.phase]
        self.rd.truncate_metrics(self.phase, -1)
        self.metrics.append({"phase": self.phase, "epoch": 0, "test_bpd": start, "note": note}, step=self.state.position.global_step)
        log(f"{self.phase} start: held-out bound <= {start:.4f} bpd ({note})")

    def checkpoint(self, complete: bool = False) -> Path:
        """Every rank calls this at the same step (the RNG states are gathered); rank 0 writes.
        Non-finite weights are never saved: the run stops and the last checkpoint stays."""
        state, p, rd, phase = self.state, self.state.position, self.rd, self.phase
        rngs = self.ddp.gather(_rng_state(state.device))
        self.ddp.sync_buffers(state.model)
        self.ddp.check_replicas(state.model, f"after {phase} epoch {p.epoch}" if p.step == 0 else f"at {phase} epoch {p.epoch + 1} step {p.step}")

        def save() -> Path:
            _check_finite_weights(
                state.model,
                f"the weights of {PHASES[phase].title} became non-finite at epoch {p.epoch + 1} step {p.step}; "
                f"nothing was saved, the last checkpoint {rd.checkpoint_path(phase)} is kept; lower train.{phase}.lr "
                f"or set train.{phase}.grad_clip, then vaeflow train-{phase} --run {rd.path} --resume",
            )
            ckpt = state.checkpoint(
                rngs=rngs, epochs=self.pcfg["epochs"], complete=complete, signature=self.signature, world_size=self.ddp.world_size, start=self.before
            )
            return rd.save_checkpoint(phase, ckpt, keep=self.tcfg["keep_checkpoints"], tag=f"step{p.global_step:09d}")

        return self.ddp.main_only(save)

    def run(self, *, progress: bool, max_steps: int | None) -> PhaseResult:
        p, phase, rd = self.state.position, self.phase, self.rd
        if self.before is not None and p.epoch == 0 and p.step == 0:
            self.ddp.main_only(self.record_start)
        test_bpd, path = None, None
        with _stop_on_signals() as interrupt:  # installed until the final checkpoint is saved
            try:
                with _Progress(enabled=progress and self.ddp.is_main) as bar:
                    while p.epoch < self.pcfg["epochs"]:
                        t0 = time.perf_counter()
                        self.run_epoch(bar, interrupt, max_steps)
                        test_bpd, path = self.end_epoch(bar, t0)
            except _StopRequested:
                path = self.checkpoint()
                raise Interrupted(
                    f"interrupted at {phase} epoch {p.epoch + 1} step {p.step}; saved {path}; "
                    f"continue with: vaeflow train-{phase} --run {rd.path} --resume"
                ) from None
            except _TooManyBadSteps:
                path = self.checkpoint()  # the skipped steps changed nothing: the state before them
                bad = self.stepper.bad_steps
                head = (
                    f"{bad} non-finite steps (loss or gradient) in a row at {phase} epoch {p.epoch + 1} step {p.step} "
                    f"(train.max_bad_steps = {self.tcfg['max_bad_steps']})"
                )
                if self.steps_this_call == bad and self.state.resumed_ranks is not None:  # resumed, and not one finite step since
                    raise RuntimeFailure(
                        f"{head}, every step since this resume: the saved weights themselves give non-finite steps (the finite "
                        f"steps before them, at too high a learning rate, damaged them), so a lower learning rate cannot "
                        f"rescue this checkpoint; train the phase again in a new run directory with a lower train.{phase}.lr "
                        f"(and train.{phase}.grad_clip), e.g. vaeflow train-{phase} --run NEW_RUN --set train.{phase}.lr=..."
                    ) from None
                raise RuntimeFailure(
                    f"{head}; saved the state before them to {path}; lower train.{phase}.lr or set train.{phase}.grad_clip, "
                    f"then vaeflow train-{phase} --run {rd.path} --resume (if every step then fails at once, the weights were "
                    "already damaged before these steps: train the phase again in a new run directory)"
                ) from None
            if self.pcfg["epochs"] <= p.epoch and test_bpd is None:
                if self.ddp.is_main:
                    log(f"phase {phase} of {rd.path} is already complete ({p.epoch} epochs); raise train.{phase}.epochs to train further")
                # a no-op resume of a finished phase changes nothing (file times included)
                path = rd.checkpoint_path(phase) if self.state.restored_complete else self.checkpoint(complete=True)
        return PhaseResult(rd.path, phase, p.epoch, test_bpd, path)

    def run_epoch(self, bar: _Progress, interrupt: dict, max_steps: int | None) -> None:
        """The optimizer steps of the current epoch, from ``position.step`` on. Raises _StopRequested
        at a step boundary (a signal, ``max_steps``) and _TooManyBadSteps."""
        p, phase = self.state.position, self.phase
        self.loader.wait_seconds = 0.0
        bar.start_epoch(f"{phase} {p.epoch + 1}/{self.pcfg['epochs']}", len(self.loader), p.step)
        set_phase_mode(self.state.model, phase)
        batches = self.loader.device_epoch(p.epoch, self.state.device, start=p.step)
        with contextlib.closing(batches):  # a step that raises ends the loader's producer at once
            self._steps(batches, bar, interrupt, max_steps)

    def _steps(self, batches, bar: _Progress, interrupt: dict, max_steps: int | None) -> None:
        p, phase, tcfg, device = self.state.position, self.phase, self.tcfg, self.state.device
        on_device = tcfg["dequantize"] == "device"
        for idx, y in batches:
            stop = interrupt["stop"] or (max_steps is not None and self.steps_this_call >= max_steps)
            if self.ddp.enabled:  # every rank stops at the same step
                stop = self.ddp.sum(float(stop))[0] > 0
            if stop:
                raise _StopRequested
            if on_device:  # uint8 crossed to the device; the same noise, computed there
                y = dequantize_on_device(y, torch.from_numpy(idx.astype(np.int64)).to(device), seed=tcfg["seed"], epoch=p.epoch)
            for group in self.state.opt.param_groups:
                group["lr"] = learning_rate(self.pcfg, p.epoch, p.global_step)
            value = self.stepper.step(y)
            p.step += 1
            p.global_step += 1
            self.steps_this_call += 1
            if math.isnan(value):
                p.skipped += 1
                log(
                    f"{phase} epoch {p.epoch + 1} step {p.step}: non-finite loss or gradient, step skipped "
                    f"({self.stepper.bad_steps} in a row, limit train.max_bad_steps = {tcfg['max_bad_steps']})"
                )
                if self.stepper.bad_steps >= tcfg["max_bad_steps"]:
                    raise _TooManyBadSteps
            else:
                p.loss_sum += value * len(idx)
                p.loss_n += len(idx)
                bar.advance(value)
            every = tcfg["checkpoint_every"]
            if every > 0 and p.global_step % every == 0 and p.step < len(self.loader):
                self.checkpoint()

    def end_epoch(self, bar: _Progress, t0: float) -> tuple[float, Path]:
        """After an epoch's last step: the held-out bound, the metrics record, the checkpoint and
        the sample grid. Returns (held-out bpd on rank 0, checkpoint path)."""
        p, phase, ddp = self.state.position, self.phase, self.ddp
        wait = self.loader.wait_seconds
        p.loss_sum, p.loss_n = ddp.sum(p.loss_sum, p.loss_n)
        test_bpd = ddp.main_only(self.finite_held_out_bpd)
        seconds = time.perf_counter() - t0
        record = {
            "phase": phase,
            "epoch": p.epoch + 1,
            "train_bpd": p.loss_sum / max(p.loss_n, 1),
            "test_bpd": test_bpd,
            "lr": self.state.opt.param_groups[0]["lr"],
            "steps": p.global_step,
            "skipped_steps": p.skipped,
            "seconds": round(seconds, 3),
            "data_wait_seconds": round(wait, 3),
            "data_wait_share": round(wait / max(seconds, 1e-9), 4),
        }
        p.epoch, p.step, p.loss_sum, p.loss_n = p.epoch + 1, 0, 0.0, 0
        ddp.main_only(lambda: self.metrics.append(record, step=p.global_step))  # first: a kill before the checkpoint only repeats the epoch
        path = self.checkpoint(complete=p.epoch >= self.pcfg["epochs"])
        grid_path = ddp.main_only(lambda: _write_sample_grid(self.state.model, self.rd, phase, p.epoch, self.cfg["run"]["sample_n"]))
        if ddp.is_main:
            bar.finish_epoch(
                f"{phase} epoch {p.epoch}/{self.pcfg['epochs']}: train loss {record['train_bpd']:.4f} bpd, "
                f"held-out bound <= {test_bpd:.4f} bpd, lr {record['lr']:.2e}, {record['seconds']:.1f} s "
                f"({100 * record['data_wait_share']:.1f}% waiting for data); {grid_path}"
            )
        return test_bpd, path


class _Progress:
    """A rich progress bar on stderr (or nothing), plus one log line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty() and progress_enabled()  # no bars under vaeflow -q
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
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
