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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.config import signature
from vaeflow_cli.config.typed import Config
from vaeflow_cli.console import counted, log, shell_arg, warning
from vaeflow_cli.data.dequantization import dequantize_on_device
from vaeflow_cli.data.images import grid, png_bytes, to_uint8
from vaeflow_cli.data.loader import BatchLoader
from vaeflow_cli.data.splits import Splits
from vaeflow_cli.errors import Interrupted, RuntimeFailure, VaeflowError
from vaeflow_cli.evaluation.bounds import elbo_bpd
from vaeflow_cli.files import atomic_write_bytes
from vaeflow_cli.model.contracts import starts_at_identity
from vaeflow_cli.model.sampling import sample
from vaeflow_cli.model.vaeflow import VAEFlow
from vaeflow_cli.progress import Progress
from vaeflow_cli.runtime.devices import configure_backends, resolve_device
from vaeflow_cli.runtime.distributed import init_distributed
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.runtime.runs import RunDir, all_finite
from vaeflow_cli.training.admission import check_run, prepare_run
from vaeflow_cli.training.loggers import MetricsSink
from vaeflow_cli.training.runconfig import check_signature, phase_config
from vaeflow_cli.training.setup import data_and_model, kl_weight, learning_rate, set_phase_mode, training_state
from vaeflow_cli.training.signals import stop_on_signals
from vaeflow_cli.training.start import built_on_this, load_previous, remove_for_restart
from vaeflow_cli.training.state import Snapshot, TrainingState, rng_state
from vaeflow_cli.training.step import Stepper

SAMPLE_SEED = 1234  # the per-epoch sample grids use the same latents every epoch


class _StopRequested(Exception):
    """Raised at a step boundary after Ctrl-C (or ``max_steps``), where the state is consistent."""


class _TooManyBadSteps(Exception):
    """train.max_bad_steps consecutive non-finite steps."""


# ------------------------------------------------------------------ the training loop


def _split(bound: float, latent: float | None) -> str:
    """Where a bound's bits go, as " (latent L + pixel P)" for the log lines; "" for a flow alone."""
    return "" if latent is None else f" (latent {latent:.4f} + pixel {bound - latent:.4f})"


@dataclass
class PhaseResult:
    run_dir: Path
    phase: str
    epochs: int
    test_bpd: float | None
    checkpoint: Path
    complete: bool = True
    """False after a ``smoke`` run stopped by ``max_steps`` or ``max_seconds`` (its checkpoint resumes it)."""
    seconds: float = 0.0
    """Wall-clock seconds of this call's training loop: its steps, and the held-out bound, checkpoint
    and sample grid at each epoch end (not the start-up: data, model, checks)."""
    steps: int = 0
    """Optimizer steps this call took (the phase's step count at its end minus at its start)."""


def _write_sample_grid(model: VAEFlow, rd: RunDir, phase: str, epoch: int, n: int, *, name: str | None = None) -> tuple[Path, np.ndarray]:
    """The epoch's sample grid (or ``name``), written to RUN/samples/: its path and the picture, uint8 (H, W, C)."""
    # a model without its Glow layer (phase 1) shows its decoder means g_mu(z); the others sample at T = 0.5;
    # one batch of n from the seeded stream (the shared sampler also says how many diverged)
    x = sample(model, n, temperature=0.5, seed=SAMPLE_SEED, vae_only=not model.use_flow, batch=n)
    path = rd.samples_dir / (name or f"{phase}-epoch{epoch:04d}.png")
    picture = grid(to_uint8(x))
    atomic_write_bytes(path, png_bytes(picture))
    return path, picture


def _check_finite_weights(model, what: str) -> None:
    """One fused check that every floating-point parameter and buffer is finite."""
    if not all_finite([*model.parameters(), *model.buffers()]):
        raise RuntimeFailure(what)


def train_phase(
    cfg: Config | dict | None,
    run_dir: str | Path,
    phase: str,
    *,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    config_path: str | Path | None = None,
    restart: bool = False,
    smoke: bool = False,
    max_seconds: float | None = None,
) -> PhaseResult:
    """Train one phase of a resolved config into ``run_dir``: 'vae' (phase 1), 'glow' (phase 2),
    'prior' (the prior alone on the frozen encoder), 'joint' (everything, after phase 2) or
    'baseline' (the [model.flow] alone as a density); ``vaeflow_cli.runtime.phases`` has the table.

    Everything that can be checked is checked before the run directory is touched: the config
    against the run, the data (opened and decoded), the model (built, and each component run once
    on training images), the checkpoints it starts from. A failed start leaves the directory as it
    was. Then the directory is locked for this process (RunDir.lock) for the whole phase.

    Under torchrun every rank runs this; rank 0 alone writes the run directory, and an error there
    is raised on every rank. ``max_steps`` stops after that many optimizer steps in this call
    (checkpointing first), as a Ctrl-C would; tests use it to interrupt and resume deterministically.
    ``max_seconds`` stops the same way at the first step boundary after that many seconds of this
    call's training loop (a time budget: ``PhaseResult.seconds`` says how long it ran and
    ``PhaseResult.steps`` how many optimizer steps it took).
    With ``smoke`` (the command line's ``--max-steps`` and ``--max-seconds``) that stop is the end of the call instead: the
    held-out bound of the model there (on ``train.eval_samples`` images) and a sample grid, the
    checkpoint that ``resume`` continues exactly, and a PhaseResult with ``complete`` False; a phase
    may then start from an earlier phase that a smoke run left unfinished.
    ``restart``: train the phase again from its start, its checkpoints replaced (after the phase it
    starts from changed: ``lineage``). ``config_path``: the config file the user gave, for the
    commands that error messages suggest. ``cfg`` None: the config ``vaeflow train-PHASE`` would
    take without ``--config`` (``runconfig.phase_config``: the one ``run_dir`` was trained with,
    when it holds one; else the embedded default).
    Raises VaeflowError (bad input), RuntimeFailure (a run that cannot go on), Interrupted."""
    from vaeflow_cli.config.limits import check_bool, check_count

    if not isinstance(phase, str) or phase not in PHASES:
        raise VaeflowError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir):
        raise VaeflowError(f"run_dir must be the path of a run directory (a str or Path), not {run_dir!r}")
    if cfg is None:
        cfg, _ = phase_config(phase, run_dir)
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("train"), Mapping) or phase not in cfg["train"]:
        raise VaeflowError("cfg must be a resolved config (vaeflow_cli.resolve_config) or None, not " + type(cfg).__name__)
    check_bool(resume, "resume")
    check_bool(progress, "progress")
    check_bool(restart, "restart")
    check_bool(smoke, "smoke")
    if max_steps is not None:
        check_count(max_steps, "max_steps")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and not isinstance(max_seconds, bool) and 0 < max_seconds < math.inf):
        raise VaeflowError(f"max_seconds must be a positive finite number of seconds, not {max_seconds!r}")
    if resume and restart:
        raise VaeflowError("give resume (--resume: continue the phase) or restart (--restart: train it again from the start), not both")
    if smoke and max_steps is None and max_seconds is None:
        raise VaeflowError("smoke ends a run after max_steps steps or max_seconds seconds (--max-steps N, --max-seconds S); give one of them too")
    # validated again, as resolve validates a file: a dict edited after resolve_config gets the same rules
    cfg = config_mod.resolve(base=cfg, source="the config given to train_phase")
    tcfg, pcfg = cfg.train, cfg.train.phase(phase)
    ddp, ddp_device = init_distributed(tcfg.device)
    rd = RunDir(run_dir)
    if pcfg.batch_size % ddp.world_size:
        raise VaeflowError(f"train.{phase}.batch_size = {pcfg.batch_size} is the global batch and must divide by the {ddp.world_size} processes")
    with contextlib.ExitStack() as held:
        locked = ddp.broadcast(rd.path.is_dir())  # an existing run is held from the start: a second process fails fast
        if locked:
            ddp.main_only(lambda: held.enter_context(rd.lock()))
        check_run(cfg, rd, phase, resume=resume, restart=restart, config_path=config_path)
        device = ddp_device or resolve_device(tcfg.device)
        resuming = resume and rd.checkpoint_path(phase).exists()
        p = PHASES[phase]
        data, model = data_and_model(cfg, phase, ddp, device, fresh_flow=p.flow_at_init and not (resuming and "flow" in p.trains))
        before, record = load_previous(rd, phase, cfg, model, device, resuming=resuming, unfinished_ok=smoke)
        model.use_flow = p.use_flow(before)  # the phase's model, set once: its forward is the loss
        state, stepper, loader = training_state(cfg, phase, model, data.train, device=device, ddp=ddp)
        if resuming:
            path = rd.checkpoint_path(phase)
            saved = rd.load_checkpoint(phase, map_location=device)
            check_signature(saved, cfg, path)
            state.restore(saved, path, rank=ddp.rank, steps_per_epoch=len(loader), batch_key=f"train.{phase}.batch_size")
        if p.prior_alone and hasattr(model.prior, "start_own_training"):
            model.prior.start_own_training()  # a second-stage prior: from now on log p(z) is its ELBO

        metrics = held.enter_context(MetricsSink(rd))  # metrics.jsonl and the [run] loggers, closed on every exit
        ddp.main_only(lambda: metrics.open(cfg.run.loggers, phase=phase, config=cfg))  # rank 0 only; writes nothing yet
        trains = not (state.restored_complete and state.position.epoch >= pcfg.epochs)  # not a no-op resume
        warnings, pinned = built_on_this(rd, phase, resuming=resuming and trains, restart=restart)
        ddp.main_only(
            lambda: _start_writing(cfg, rd, phase, held, locked=locked, resume=resume, restart=restart, state=state, world_size=ddp.world_size)
        )
        for line in warnings if ddp.is_main else ():
            warning(line)
        # after the checks (a failed start prints its error line only); the caller's settings again on exit
        held.enter_context(configure_backends(device, threads=tcfg.threads, tf32=tcfg.tf32))
        from vaeflow_cli.registry.core import get_registry
        from vaeflow_cli.registry.provenance import built_with

        record = {**record, "components": built_with(cfg, get_registry())}
        trainer = _Trainer(cfg, rd, phase, ddp, data, loader, state, stepper, metrics, before=before, record=record, pinned=pinned)
        return trainer.run(progress=progress, max_steps=max_steps, max_seconds=max_seconds, smoke=smoke)


def _start_writing(
    cfg: Config,
    rd: RunDir,
    phase: str,
    held: contextlib.ExitStack,
    *,
    locked: bool,
    resume: bool,
    state: TrainingState,
    world_size: int,
    restart: bool = False,
) -> None:
    """Rank 0, after every check: lock the directory (if not yet), check again under the lock,
    write the config (and what built the run), clean up after a killed writer, remove the phase's
    checkpoints on ``restart``."""
    if not locked:
        held.enter_context(rd.lock())
    prepare_run(cfg, rd, phase, resume=resume, restart=restart)
    rd.remove_stale_temporaries()  # of a writer killed mid-write (SIGKILL): we hold the lock
    if restart:
        remove_for_restart(rd, phase)
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
        cfg: Config,
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
        record: dict | None = None,
        pinned: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.cfg, self.rd, self.phase, self.ddp = cfg, rd, phase, ddp
        self.data, self.loader, self.state, self.stepper, self.metrics = data, loader, state, stepper, metrics
        self.before = before
        self.record = record or {}  # what built the run, what the phase started from: into every checkpoint
        self.pinned = pinned  # step-tagged checkpoints that later phases were trained on: never pruned
        self.tcfg, self.pcfg = cfg.train, cfg.train.phase(phase)
        self.signature = json.dumps(signature.model_signature(cfg), sort_keys=True)
        self.steps_this_call = 0
        self.recent_loss = [0.0, 0]  # sum and count of the finite losses since the loggers' last step record
        self.stopped_by_budget = False
        self.budget: tuple[int | None, float | None] = (None, None)  # (max_steps, max_seconds) of this call
        self.started = time.perf_counter()
        self.loop_seconds = 0.0  # the training loop's seconds in this call, up to its last step or epoch end
        # the non-finite rescue (``rescue``): the last states whose steps were finite, newest last
        self.snapshots: list[Snapshot] = []
        self.last_finite: int | None = None  # global step of the last finite step in this call
        self.last_step_finite = True
        self.epoch_finite = self.epoch_skipped = 0  # this call's steps of the current epoch
        self.first_step = state.position.global_step  # where this call started

    def held_out_bpd(self) -> float:
        """The ELBO bound (bits/dim) on the held-out split (``train.eval_samples`` of it)."""
        return self.held_out_bound()[0]

    def held_out_bound(self) -> tuple[float, float | None]:
        """(the ELBO bound, its latent part: the mean KL term) in bits/dim on the held-out split
        (``train.eval_samples`` of it); the latent part is None for a flow alone (no latent)."""
        bound = elbo_bpd(self.state.model, self.data.test, seed=self.tcfg.seed, device=self.state.device, limit=self.tcfg.eval_samples)
        latent = None if PHASES[self.phase].standalone or bound.latent is None else float(bound.latent.mean())
        return bound.mean, latent

    def remember(self) -> None:
        """Keep this state in memory for ``rescue`` (every rank; two at most, on the CPU): at the
        start of the call and after each epoch end whose last step was finite."""
        if (self.snapshots and not self.last_step_finite) or self.state.position.epoch >= self.pcfg.epochs:
            return  # a state after a skipped step, or a finished phase: nothing to go back to
        self.snapshots = [*self.snapshots[-1:], self.state.snapshot()]

    def rescue(self, head: str, *, before_step: int | None) -> RuntimeFailure:
        """After non-finite training (``head`` says what happened): roll every rank back to the
        newest remembered state before global step ``before_step`` (the last finite step: the
        weights after it give non-finite steps whatever the learning rate; None: the newest
        state), save it as the phase's checkpoint (rank 0 removes the checkpoints and metrics
        records after it), and return the one-line error whose advice works: a resume from that
        state with a lower learning rate retraces none of the steps that damaged the weights. A
        fresh start rolled back to its beginning saves nothing: a resume starts from the beginning."""
        p, phase, rd = self.state.position, self.phase, self.rd
        again = f"lower train.{phase}.lr (or set train.{phase}.grad_clip), then vaeflow train-{phase} --run {shell_arg(rd.path)} --resume"
        usable = [s for s in self.snapshots if before_step is None or s.position.global_step < before_step]
        if not usable:  # no finite step in this call
            if self.state.resumed_ranks is not None:
                return RuntimeFailure(
                    f"{head}, every step since this resume: the checkpoint it resumed from gives non-finite losses or gradients "
                    f"whatever the learning rate (the steps that made it damaged its weights), so nothing was saved and a lower "
                    f"learning rate cannot rescue it; train the phase again with a lower train.{phase}.lr (and train.{phase}.grad_clip): "
                    f"vaeflow train-{phase} --run {shell_arg(rd.path)} --restart --set train.{phase}.lr=..."
                )
            return RuntimeFailure(
                f"{head}, from the first step: the model gives non-finite losses or gradients at its initialisation, whatever "
                "the learning rate; nothing was saved; check the [model] config and the data"
            )
        if before_step is not None:
            head += (
                f": the weights after step {before_step} of the phase, the last finite one, give non-finite losses or gradients "
                "whatever the learning rate (too high a learning rate damaged them)"
            )
        snap = usable[-1]
        self.state.roll_back(snap)
        fresh = self.state.resumed_ranks is None and p.global_step == 0

        def forget_later() -> None:
            rd.remove_checkpoints(phase, after_step=-1 if fresh else p.global_step)
            if rd.metrics_path.exists():
                rd.truncate_metrics(phase, p.epoch)

        self.ddp.main_only(forget_later)
        if fresh:
            kept = "; the last state whose steps were finite is the start of the phase, so no checkpoint is kept" if before_step is not None else ""
            return RuntimeFailure(f"{head}{kept}, and no checkpoint of the phase is left; {again} (it starts the phase from the beginning)")
        path = self.checkpoint()
        at = f"the end of epoch {p.epoch}" if p.step == 0 and p.epoch > 0 else f"epoch {p.epoch + 1} step {p.step}"
        if p.global_step == self.first_step:
            at += ", where this call resumed"
        kept = f"the last state whose steps were finite ({at})" if before_step is not None else f"the state at {at}"
        return RuntimeFailure(f"{head}; saved {kept} to {path}, removing the checkpoints after it; {again}")

    def finite_held_out_bpd(self, value: float) -> float:
        """The epoch's held-out bound ``value`` (rank 0's, on every rank); a non-finite one (the
        model in eval mode gives NaN, e.g. BatchNorm statistics wrecked by too high a learning
        rate) stops the run before this epoch is recorded or saved, rolled back to the last epoch
        end (``rescue``)."""
        if math.isfinite(value):
            return value
        p, phase = self.state.position, self.phase
        steps = f"{self.epoch_finite} of its training steps in this call finite, {self.epoch_skipped} skipped"
        raise self.rescue(
            f"the held-out bound of {PHASES[phase].title} is {value} after epoch {p.epoch + 1} ({steps}): the model in eval mode "
            f"gives non-finite values (its weights or normalisation statistics are damaged, e.g. by too high a learning rate); "
            "nothing of this epoch was saved",
            before_step=None,
        ) from None

    def record_start(self) -> None:
        """Rank 0, at the start of a phase that continues another: its held-out bound as epoch 0
        (not for a fresh flow decoder with its own data-dependent initialisation, whose bound
        before its first step means nothing)."""
        if PHASES[self.phase].flow_at_init and not starts_at_identity(self.state.model.flow):
            log(f"{self.phase} start: the flow decoder starts from its own data-dependent initialisation, not from {PHASES[self.before].title}")
            return
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
                f"or set train.{phase}.grad_clip, then vaeflow train-{phase} --run {shell_arg(rd.path)} --resume",
            )
            ckpt = state.checkpoint(
                rngs=rngs,
                epochs=self.pcfg.epochs,
                complete=complete,
                signature=self.signature,
                world_size=self.ddp.world_size,
                start=self.before,
                extra=self.record,
            )
            return rd.save_checkpoint(phase, ckpt, keep=self.tcfg.keep_checkpoints, tag=f"step{p.global_step:09d}", pinned=self.pinned)

        return self.ddp.main_only(save)

    def run(self, *, progress: bool, max_steps: int | None, max_seconds: float | None = None, smoke: bool = False) -> PhaseResult:
        result = self._run(progress=progress, max_steps=max_steps, max_seconds=max_seconds, smoke=smoke)
        result.seconds = round(self.loop_seconds, 3)
        result.steps = self.state.position.global_step - self.first_step
        return result

    def _run(self, *, progress: bool, max_steps: int | None, max_seconds: float | None, smoke: bool) -> PhaseResult:
        p, phase, rd = self.state.position, self.phase, self.rd
        self.budget = (max_steps, max_seconds)
        if self.before is not None and p.epoch == 0 and p.step == 0:
            self.ddp.main_only(self.record_start)
        self.remember()
        self.started = time.perf_counter()  # the training loop's clock (max_seconds, PhaseResult.seconds)
        self.loop_seconds = 0.0
        test_bpd, path = None, None
        with stop_on_signals(saved=lambda: rd.checkpoint_path(phase).exists()) as interrupt:  # installed until the final checkpoint is saved
            try:
                with Progress(enabled=progress and self.ddp.is_main, fields={"loss": "-"}) as bar:
                    while p.epoch < self.pcfg.epochs:
                        t0 = time.perf_counter()
                        self.run_epoch(bar, interrupt)
                        test_bpd, path = self.end_epoch(bar, t0)
                        self.loop_seconds = time.perf_counter() - self.started
            except _StopRequested:
                self.loop_seconds = time.perf_counter() - self.started
                path = self.checkpoint()
                if smoke and self.stopped_by_budget:
                    return self.end_smoke(path)
                raise Interrupted(
                    f"interrupted at {phase} epoch {p.epoch + 1} step {p.step}; saved {path}; "
                    f"continue with: vaeflow train-{phase} --run {shell_arg(rd.path)} --resume"
                ) from None
            except _TooManyBadSteps as bad:
                raise self.rescue(str(bad), before_step=self.last_finite) from None
            if self.pcfg.epochs <= p.epoch and test_bpd is None:
                if self.ddp.is_main:
                    log(f"phase {phase} of {rd.path} is already complete ({counted(p.epoch, 'epoch')}); raise train.{phase}.epochs to train further")
                # a no-op resume of a finished phase changes nothing (file times included)
                path = rd.checkpoint_path(phase) if self.state.restored_complete else self.checkpoint(complete=True)
        return PhaseResult(rd.path, phase, p.epoch, test_bpd, path)

    def end_smoke(self, path: Path) -> PhaseResult:
        """The end of a ``--max-steps`` or ``--max-seconds`` run, after its checkpoint: the held-out
        bound of the model there, a sample grid, one line saying how to go on."""
        p, phase, rd = self.state.position, self.phase, self.rd
        max_steps, max_seconds = self.budget
        steps = self.steps_this_call
        stopped = (
            f"after {steps} step{'s' if steps != 1 else ''} (--max-steps)"
            if max_steps is not None and steps >= max_steps
            else (f"after {time.perf_counter() - self.started:.0f} s, {steps} step{'s' if steps != 1 else ''} (--max-seconds {max_seconds:g})")
        )
        again = f"--max-steps {max_steps}" if max_steps is not None else f"--max-seconds {max_seconds:g}"

        def report() -> float:
            bound = self.held_out_bpd()
            n = min(len(self.data.test), self.tcfg.eval_samples or len(self.data.test))
            if not math.isfinite(bound):
                raise RuntimeFailure(
                    f"the held-out bound of {PHASES[phase].title} is {bound} {stopped}: the model in "
                    f"eval mode gives non-finite values; lower train.{phase}.lr (or set train.{phase}.grad_clip) and train it "
                    f"again: vaeflow train-{phase} --run {shell_arg(rd.path)} --restart {again}"
                )
            grid_path, _ = _write_sample_grid(
                self.state.model, rd, phase, p.epoch, self.cfg.run.sample_n, name=f"{phase}-step{p.global_step:09d}.png"
            )
            train = f"train loss {p.loss_sum / p.loss_n:.4f} bpd, " if p.loss_n else ""
            log(
                f"{phase} stopped {stopped} at epoch {p.epoch + 1} step {p.step}: "
                f"{train}held-out bound <= {bound:.4f} bpd on {n} images; {grid_path}; saved {path} "
                f"(continue with: vaeflow train-{phase} --run {shell_arg(rd.path)} --resume)"
            )
            return bound

        bound = self.ddp.main_only(report)
        return PhaseResult(rd.path, phase, p.epoch, bound, path, complete=False)

    def run_epoch(self, bar: Progress, interrupt: dict) -> None:
        """The optimizer steps of the current epoch, from ``position.step`` on. Raises _StopRequested
        at a step boundary (a signal, ``max_steps``, ``max_seconds``) and _TooManyBadSteps."""
        max_steps, max_seconds = self.budget
        p, phase, tcfg, device = self.state.position, self.phase, self.tcfg, self.state.device
        on_device = tcfg.dequantize == "device"
        self.loader.wait_seconds = 0.0
        self.epoch_finite = self.epoch_skipped = 0
        whole_epoch = p.step == 0
        bar.start(f"{phase} {p.epoch + 1}/{self.pcfg.epochs}", len(self.loader), p.step)
        set_phase_mode(self.state.model, phase, self.pcfg.train_prior)
        batches = self.loader.device_epoch(p.epoch, device, start=p.step)
        with contextlib.closing(batches):  # a step that raises ends the loader's producer at once
            for idx, y in batches:
                by_budget = (max_steps is not None and self.steps_this_call >= max_steps) or (
                    max_seconds is not None and self.steps_this_call > 0 and time.perf_counter() - self.started >= max_seconds
                )
                stop = interrupt["stop"] or by_budget
                if self.ddp.enabled:  # every rank stops at the same step (rank 0's clock is not every rank's)
                    stop = self.ddp.sum(float(stop))[0] > 0
                    by_budget = stop and not interrupt["stop"]
                if stop:
                    self.stopped_by_budget = by_budget and not interrupt["stop"]
                    raise _StopRequested
                if on_device:  # uint8 crossed to the device; the same noise, computed there
                    y = dequantize_on_device(y, torch.from_numpy(idx.astype(np.int64)).to(device), seed=tcfg.seed, epoch=p.epoch)
                for group in self.state.opt.param_groups:
                    group["lr"] = learning_rate(self.pcfg, p.epoch, p.global_step)
                self.stepper.kl_weight = kl_weight(self.pcfg.kl_warmup_steps, p.global_step)
                value = self.stepper.step(y)
                p.step += 1
                p.global_step += 1
                self.steps_this_call += 1
                self.last_step_finite = not math.isnan(value)
                if math.isnan(value):
                    p.skipped += 1
                    self.epoch_skipped += 1
                    log(
                        f"{phase} epoch {p.epoch + 1} step {p.step}: non-finite loss or gradient, step skipped "
                        f"({self.stepper.bad_steps} in a row, limit train.max_bad_steps = {tcfg.max_bad_steps})"
                    )
                    if self.stepper.bad_steps >= tcfg.max_bad_steps:
                        raise _TooManyBadSteps(
                            f"{self.stepper.bad_steps} non-finite steps (loss or gradient) in a row at {phase} epoch {p.epoch + 1} "
                            f"step {p.step} (train.max_bad_steps = {tcfg.max_bad_steps})"
                        )
                else:
                    self.last_finite = p.global_step
                    self.epoch_finite += 1
                    p.loss_sum += value * len(idx)
                    p.loss_n += len(idx)
                    bar.advance(loss=f"{value:.4f}")
                    self.recent_loss[0] += value
                    self.recent_loss[1] += 1
                self.log_step()
                every = tcfg.checkpoint_every
                if every > 0 and p.global_step % every == 0 and p.step < len(self.loader):
                    self.checkpoint()
        if whole_epoch and self.epoch_skipped and not self.epoch_finite:  # fewer steps than train.max_bad_steps, every one skipped
            raise _TooManyBadSteps(f"every step of {phase} epoch {p.epoch + 1} was non-finite (loss or gradient; {self.epoch_skipped} skipped)")

    def sample_grid(self) -> Path:
        """Rank 0, at an epoch's end: the sample grid, written and given to the loggers; its path."""
        p = self.state.position
        path, picture = _write_sample_grid(self.state.model, self.rd, self.phase, p.epoch, self.cfg.run.sample_n)
        self.metrics.log_image(f"{self.phase}/samples", picture, step=p.global_step)
        return path

    def log_step(self) -> None:
        """Every ``[run] log_every`` optimizer steps, the mean loss of the steps since the last time
        to the loggers (rank 0; nothing to do without loggers): a few float additions per step."""
        every, (total, n) = self.cfg.run.log_every, self.recent_loss
        if every > 0 and self.metrics.loggers and self.state.position.global_step % every == 0 and n:
            self.metrics.log_step(self.phase, step=self.state.position.global_step, train_bpd=total / n)
            self.recent_loss = [0.0, 0]

    def end_epoch(self, bar: Progress, t0: float) -> tuple[float, Path]:
        """After an epoch's last step: the held-out bound, the metrics record, the checkpoint and
        the sample grid. Returns (held-out bpd on rank 0, checkpoint path)."""
        p, phase, ddp = self.state.position, self.phase, self.ddp
        wait = self.loader.wait_seconds
        p.loss_sum, p.loss_n = ddp.sum(p.loss_sum, p.loss_n)
        test_bpd, test_latent = ddp.main_only(self.held_out_bound)
        test_bpd = self.finite_held_out_bpd(test_bpd)
        seconds = time.perf_counter() - t0
        record = {
            "phase": phase,
            "epoch": p.epoch + 1,
            "train_bpd": p.loss_sum / max(p.loss_n, 1),
            "test_bpd": test_bpd,
            **({"test_latent_bpd": test_latent, "test_pixel_bpd": test_bpd - test_latent} if test_latent is not None else {}),
            "lr": self.state.opt.param_groups[0]["lr"],
            "steps": p.global_step,
            "skipped_steps": p.skipped,
            "seconds": round(seconds, 3),
            "data_wait_seconds": round(wait, 3),
            "data_wait_share": round(wait / max(seconds, 1e-9), 4),
        }
        p.epoch, p.step, p.loss_sum, p.loss_n = p.epoch + 1, 0, 0.0, 0
        ddp.main_only(lambda: self.metrics.append(record, step=p.global_step))  # first: a kill before the checkpoint only repeats the epoch
        path = self.checkpoint(complete=p.epoch >= self.pcfg.epochs)
        self.remember()
        grid_path = ddp.main_only(self.sample_grid)
        if ddp.is_main:
            bar.message(
                f"{phase} epoch {p.epoch}/{self.pcfg.epochs}: train loss {record['train_bpd']:.4f} bpd, "
                f"held-out bound <= {test_bpd:.4f} bpd{_split(test_bpd, test_latent)}, lr {record['lr']:.2e}, {record['seconds']:.1f} s "
                f"({100 * record['data_wait_share']:.1f}% waiting for data); {grid_path}"
            )
        return test_bpd, path
