"""What a checkpoint holds and ``--resume`` restores: the weights, the optimizer and gradient-scaler
states, every rank's RNG state and the position in the phase (``TrainingState``). Its file schema
is ``runs.check_checkpoint``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.runs import load_weights


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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

    def checkpoint(
        self, *, rngs: list[dict], epochs: int, complete: bool, signature: str, world_size: int, start: str | None, extra: dict | None = None
    ) -> dict[str, Any]:
        """The checkpoint dict (``runs.check_checkpoint`` is its schema); ``rngs``: every rank's RNG
        state; ``extra``: entries of the run's record (what built it, what the phase started from)."""
        p = self.position
        return {
            **(extra or {}),
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
            set_rng_state(rngs[rank % len(rngs)], self.device)
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

    def snapshot(self) -> Snapshot:
        """A copy, on the CPU, of everything ``checkpoint`` saves of this rank (weights, optimizer
        and scaler states, RNG state, position), for ``roll_back``: the non-finite-step rescue
        keeps the last states whose steps were finite (``loop._Trainer``)."""

        def cpu(value):
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", copy=True)
            if isinstance(value, dict):
                return {k: cpu(v) for k, v in value.items()}
            if isinstance(value, list):
                return [cpu(v) for v in value]
            return value

        return Snapshot(
            model=cpu(self.model.state_dict()),
            optimizer=cpu(self.opt.state_dict()),
            scaler=cpu(self.scaler.state_dict()),
            rng=cpu(rng_state(self.device)),
            position=dataclasses.replace(self.position),
        )

    def roll_back(self, snap: Snapshot) -> None:
        """Put a ``snapshot`` back: the state continues (and checkpoints) as it was then."""
        self.model.load_state_dict(snap.model)
        self.opt.load_state_dict(snap.optimizer)
        self.scaler.load_state_dict(snap.scaler)
        set_rng_state(snap.rng, self.device)
        for f in dataclasses.fields(Position):  # in place: the trainer holds this object
            setattr(self.position, f.name, getattr(snap.position, f.name))


@dataclass
class Snapshot:
    """``TrainingState.snapshot``: a rank's state at ``position``, on the CPU."""

    model: dict
    optimizer: dict
    scaler: dict
    rng: dict
    position: Position
