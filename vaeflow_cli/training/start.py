"""Where a phase starts: the finished phase it continues (``previous_phase``, ``load_previous``,
with the lineage checks of ``training.lineage``), and what training a phase again or further does
to the later phases built on it (``built_on_this``, ``remove_for_restart``)."""

from __future__ import annotations

from vaeflow_cli.console import log, shell_arg
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.phases import PHASES, previous
from vaeflow_cli.runtime.runs import RunDir, load_weights
from vaeflow_cli.training import lineage
from vaeflow_cli.training.runconfig import check_signature


def previous_phase(rd: RunDir, phase: str, head_of=None) -> str | None:
    """The finished phase whose checkpoint ``phase`` starts from in ``rd`` (``phases.previous``);
    ``head_of``: ``lineage.heads`` of the run, to read each checkpoint's small entries once."""
    head_of = head_of or lineage.heads(rd.path)
    return previous(phase, has=lambda p: rd.checkpoint_path(p).exists(), start_of=lambda p: (head_of(p) or {}).get("start"))


def load_previous(rd: RunDir, phase: str, cfg: dict, model, device, *, resuming: bool = False, unfinished_ok: bool = False):
    """Load the finished phase that ``phase`` starts from into ``model`` (reading only). Returns
    (its name, the lineage entries of ``phase``'s checkpoints: that start's digest and step), or
    (None, {}) for a phase that starts from scratch.

    Refuses (one line, ``lineage.Stale``) to resume ``phase`` when the state it was trained on is
    no longer its start's checkpoint (phase 1 trained further since phase 2 was), and to start
    from a phase that is itself stale so. A resumed phase continues from the phase its checkpoint
    records. ``unfinished_ok`` (a ``--max-steps`` smoke run) starts from an unfinished phase."""
    head_of = lineage.heads(rd.path)
    stale = lineage.stale_link(phase, head_of) if resuming else None
    if stale is not None:
        raise VaeflowError(
            f"cannot resume {PHASES[phase].title}: {stale.what(rd.path)}; resuming would go on training on the old "
            f"{PHASES[stale.start].title}: {stale.ways_out(rd.path)}"
        )
    recorded = (head_of(phase) or {}).get("start") if resuming else None
    before = recorded if recorded in PHASES and recorded in PHASES[phase].starts_from else previous_phase(rd, phase, head_of)
    if before is None:
        return None, {}
    if not rd.checkpoint_path(before).exists():
        raise VaeflowError(f"{rd.path} has no checkpoint of {PHASES[before].title}; run vaeflow train-{before} --run {shell_arg(rd.path)} first")
    stale = lineage.stale_link(before, head_of)
    if stale is not None:
        raise VaeflowError(f"{PHASES[phase].title} starts from {PHASES[before].title}, and {stale.what(rd.path)}: {stale.ways_out(rd.path)}")
    prev_state = rd.load_checkpoint(before, map_location=device)
    check_signature(prev_state, cfg, rd.checkpoint_path(before))
    if not prev_state.get("complete"):
        where = f"epoch {prev_state['epoch']}/{prev_state['epochs']}" + (f", step {prev_state['step']}" if prev_state["step"] else "")
        if not unfinished_ok:
            raise VaeflowError(
                f"{PHASES[before].title} of {rd.path} is not finished ({where}); run vaeflow train-{before} --run {shell_arg(rd.path)} --resume"
            )
        log(f"{PHASES[phase].title} starts from an unfinished {PHASES[before].title} ({where}): a smoke test (--max-steps)")
    load_weights(model, prev_state["model"], rd.checkpoint_path(before))
    return before, {"start_digest": prev_state["digest"], "start_step": prev_state["global_step"]}


def remove_for_restart(rd: RunDir, phase: str) -> None:
    """Rank 0, under the lock, after every check: remove ``phase``'s checkpoints (``--restart``)."""
    gone = rd.remove_checkpoints(phase)
    if gone:
        log(
            f"restarting {PHASES[phase].title} of {rd.path} from the beginning: removed its {len(gone)} checkpoint file{'s' if len(gone) != 1 else ''}"
        )


def built_on_this(rd: RunDir, phase: str, *, resuming: bool, restart: bool) -> tuple[list[str], set[str]]:
    """Before ``phase`` trains further (a resume) or again (``--restart``): the warnings for the
    later phases trained on its current state, which then belong to the old one, and the file
    names of the step-tagged checkpoints of ``phase`` that later phases record as their start
    (kept, so that the old state can be put back: ``lineage.Stale.ways_out``)."""
    path = rd.checkpoint_path(phase)
    if not path.exists() or not (resuming or restart):
        return [], set()
    head_of = lineage.heads(rd.path)
    pinned = set()
    for later in PHASES:
        head = head_of(later) if later != phase else None
        if head and head.get("start") == phase and isinstance(head.get("start_step"), int):
            pinned.add(lineage.tagged_name(phase, head["start_step"]))
    warnings = []
    for later, step in lineage.built_on(rd.path, phase, head_of(phase)["digest"], head_of):
        kept = rd.path / "checkpoints" / lineage.tagged_name(phase, step) if step is not None else None
        keep = f" (kept as {kept})" if kept is not None and kept.exists() and not restart else ""
        warnings.append(
            f"{rd.checkpoint_path(later)} ({PHASES[later].title}) was trained on this {PHASES[phase].title}"
            + (f" (step {step})" if step is not None else "")
            + f"; once it trains {'again' if restart else 'further'}, {PHASES[later].title} belongs to the old one{keep}: "
            f"train it again afterwards (vaeflow train-{later} --run {shell_arg(rd.path)} --restart)"
        )
    return warnings, pinned
