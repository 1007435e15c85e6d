"""Which state of the phase it started from a later phase was trained on, and whether that state
is still the one in the run.

Phase 2 trains the Glow layer on a frozen phase 1; its checkpoint holds the whole model, the phase-1
weights it was trained on included. When phase 1 is trained further afterwards (``train-vae
--resume --set train.vae.epochs=...``), trained again (``--restart``) or its checkpoint replaced,
``glow.pt`` still holds the old phase 1: sampling it, scoring it beside the new phase 1, or resuming
it would silently mix two states. So every checkpoint records the digest of its own weights
(``digest``: ``runs.weights_digest``, written by ``RunDir.save_checkpoint``), and a phase that starts from another records
that one's digest and step (``start_digest``, ``start_step``). ``stale_link`` compares them along
a phase's chain of starts (joint -> phase 2 -> phase 1); ``load_run`` warns about a stale
checkpoint and by default loads the phase trained after it, and ``train_phase`` refuses to resume
a stale phase or to start from one, each in one line with the ways out: train the later phase
again (``--restart``), or put the old state of the earlier one back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeflow_cli.console import shell_arg
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.runtime.runs import load_checkpoint

HEAD_KEYS = ("phase", "start", "start_digest", "start_step", "digest", "global_step", "epoch", "step", "epochs", "complete")
"""The small entries of a checkpoint that lineage checks read (never the weights)."""


def read_head(path: Path) -> dict[str, Any] | None:
    """The HEAD_KEYS of the checkpoint at ``path`` (None where there is none), read through a
    memory map; a file that cannot be read so, or that lacks its ``digest``, is loaded and checked
    in full (``runs.load_checkpoint``), which names its problem."""
    import torch

    from vaeflow_cli.config.limits import file_problem

    if not path.exists():
        return None
    state = None
    if file_problem(path) is None:  # a FIFO would block the open forever: load_checkpoint names the problem
        try:
            state = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - load_checkpoint turns every problem into one line
            state = None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(state.get("digest"), str):
        state = load_checkpoint(path)
    return {k: state.get(k) for k in HEAD_KEYS}


def tagged_name(phase: str, global_step: int) -> str:
    """The file name of the step-tagged checkpoint of ``phase`` at ``global_step`` (``keep_checkpoints``)."""
    return f"{phase}-step{global_step:09d}.pt"


@dataclass(frozen=True)
class Stale:
    """``phase``'s checkpoint was trained on a state of ``start`` (``step``, ``digest``) that the
    run's ``start`` checkpoint no longer holds (it is at ``now_step``); ``asked`` is the phase whose
    chain of starts led here (``phase`` itself, or a phase built on it)."""

    asked: str
    phase: str
    start: str
    step: int | None
    digest: str | None
    now_step: int | None

    def what(self, run: Path) -> str:
        """What happened, as the first clause of a line."""
        ckpt = lambda p: run / "checkpoints" / f"{p}.pt"  # noqa: E731
        title = lambda p: PHASES[p].title  # noqa: E731
        at = f" at step {self.step}" if self.step is not None else ""
        if self.step is not None and self.step == self.now_step:
            changed = f"{ckpt(self.start)} holds another state of it now (trained again, or restored)"
        else:
            changed = f"{title(self.start)} has changed since ({ckpt(self.start)} is at step {self.now_step})"
        head = f"{ckpt(self.phase)} ({title(self.phase)}) was trained on {title(self.start)}{at}, but {changed}"
        if self.asked != self.phase:
            head = f"{ckpt(self.asked)} ({title(self.asked)}) builds on {title(self.phase)}, and {head}"
        return head

    def ways_out(self, run: Path) -> str:
        """The two ways out: train the stale phase again, or put the old start back (when its
        step-tagged checkpoint is still kept)."""
        title = lambda p: PHASES[p].title  # noqa: E731
        then = f", then {title(self.asked)} again" if self.asked != self.phase else ""
        again = f"train {title(self.phase)} again on the new {title(self.start)} (vaeflow train-{self.phase} --run {shell_arg(run)} --restart{then})"
        old = self.old_start_file(run)
        if old is None:
            return f"{again}; the old {title(self.start)} is not kept as a checkpoint of its own"
        return f"{again}, or keep the old {title(self.start)} by putting its checkpoint back (ln -f {old} {run / 'checkpoints' / f'{self.start}.pt'})"

    def old_start_file(self, run: Path) -> Path | None:
        """The step-tagged checkpoint of ``start`` that holds exactly the state ``phase`` was trained on."""
        if self.step is None:
            return None
        path = run / "checkpoints" / tagged_name(self.start, self.step)
        try:
            head = read_head(path)
        except Exception:  # noqa: BLE001 - a damaged file is no way out
            return None
        return path if head is not None and head["digest"] == self.digest else None

    def message(self, run: Path) -> str:
        return f"{self.what(run)}: {self.ways_out(run)}"


def stale_link(asked: str, head_of: Callable[[str], dict | None]) -> Stale | None:
    """The first link of ``asked``'s chain of starts (``asked`` -> what it started from -> ...)
    whose start's checkpoint no longer holds the state the later phase was trained on; None when
    every link holds (or cannot be told: a start whose checkpoint is gone). ``head_of(phase)``:
    ``read_head`` of that phase's checkpoint in the run (None where there is none)."""
    phase, seen = asked, set()
    while phase not in seen:
        seen.add(phase)
        head = head_of(phase)
        start = head.get("start") if head else None
        if not isinstance(start, str) or start not in PHASES:
            return None
        start_head = head_of(start)
        if start_head is None:
            return None
        recorded = head.get("start_digest")
        if isinstance(recorded, str) and recorded != start_head["digest"]:
            step = head.get("start_step") if isinstance(head.get("start_step"), int) else None
            return Stale(asked, phase, start, step, recorded, start_head.get("global_step"))
        phase = start
    return None


def heads(run: Path) -> Callable[[str], dict | None]:
    """A ``head_of`` for ``stale_link`` over the run directory ``run``, each file read once."""
    cache: dict[str, dict | None] = {}

    def head_of(phase: str) -> dict | None:
        if phase not in cache:
            cache[phase] = read_head(run / "checkpoints" / f"{phase}.pt")
        return cache[phase]

    return head_of


def built_on(run: Path, phase: str, digest: str, head_of: Callable[[str], dict | None]) -> list[tuple[str, int | None]]:
    """The phases whose checkpoints in ``run`` were trained on the state ``digest`` of ``phase``,
    with the step they recorded: (later phase, step)."""
    out = []
    for later in PHASES:
        if later == phase:
            continue
        head = head_of(later)
        if head and head.get("start") == phase and head.get("start_digest") == digest:
            out.append((later, head.get("start_step") if isinstance(head.get("start_step"), int) else None))
    return out
