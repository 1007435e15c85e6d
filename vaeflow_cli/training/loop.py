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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.console import log
from vaeflow_cli.data.images import grid, png_bytes, to_uint8
from vaeflow_cli.data.pipeline import BatchLoader, Splits, dequantize_on_device, load_splits
from vaeflow_cli.errors import Interrupted, RuntimeFailure, VaeflowError
from vaeflow_cli.evaluation.bounds import held_out_bpd
from vaeflow_cli.files import atomic_write_bytes
from vaeflow_cli.model.contracts import check_components
from vaeflow_cli.model.sampling import bin_centres
from vaeflow_cli.model.vaeflow import VAEFlow, build_model
from vaeflow_cli.training.admission import check_run, prepare_run
from vaeflow_cli.training.loggers import MetricsSink
from vaeflow_cli.training.phases import PHASES, previous
from vaeflow_cli.training.progress import Progress
from vaeflow_cli.training.runs import RunDir, all_finite, check_signature, load_weights
from vaeflow_cli.training.signals import stop_on_signals
from vaeflow_cli.training.state import TrainingState, rng_state
from vaeflow_cli.training.step import Stepper, configure_backends, init_distributed, resolve_device

SAMPLE_SEED = 1234  # the per-epoch sample grids use the same latents every epoch


class _StopRequested(Exception):
    """Raised at a step boundary after Ctrl-C (or ``max_steps``), where the state is consistent."""


class _TooManyBadSteps(Exception):
    """train.max_bad_steps consecutive non-finite steps."""


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


def _check_finite_weights(model, what: str) -> None:
    """One fused check that every floating-point parameter and buffer is finite."""
    if not all_finite([*model.parameters(), *model.buffers()]):
        raise RuntimeFailure(what)


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
        note = PHASES[self.phase].start_note.format(start=PHASES[self.before].title)
        self.rd.truncate_metrics(self.phase, -1)
        self.metrics.append({"phase": self.phase, "epoch": 0, "test_bpd": start, "note": note}, step=self.state.position.global_step)
        log(f"{self.phase} start: held-out bound <= {start:.4f} bpd ({note})")

    def checkpoint(self, complete: bool = False) -> Path:
        """Every rank calls this at the same step (the RNG states are gathered); rank 0 writes.
        Non-finite weights are never saved: the run stops and the last checkpoint stays."""
        state, p, rd, phase = self.state, self.state.position, self.rd, self.phase
        rngs = self.ddp.gather(rng_state(state.device))
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
        with stop_on_signals() as interrupt:  # installed until the final checkpoint is saved
            try:
                with Progress(enabled=progress and self.ddp.is_main) as bar:
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

    def run_epoch(self, bar: Progress, interrupt: dict, max_steps: int | None) -> None:
        """The optimizer steps of the current epoch, from ``position.step`` on. Raises _StopRequested
        at a step boundary (a signal, ``max_steps``) and _TooManyBadSteps."""
        p, phase, tcfg, device = self.state.position, self.phase, self.tcfg, self.state.device
        on_device = tcfg["dequantize"] == "device"
        self.loader.wait_seconds = 0.0
        bar.start_epoch(f"{phase} {p.epoch + 1}/{self.pcfg['epochs']}", len(self.loader), p.step)
        set_phase_mode(self.state.model, phase)
        batches = self.loader.device_epoch(p.epoch, device, start=p.step)
        with contextlib.closing(batches):  # a step that raises ends the loader's producer at once
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

    def end_epoch(self, bar: Progress, t0: float) -> tuple[float, Path]:
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
