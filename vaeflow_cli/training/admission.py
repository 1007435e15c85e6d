"""Run admission: whether a phase may start or resume in a run directory, decided by reading only,
before anything is written (``check_run``), and writing the run's config once it may
(``prepare_run``).
"""

from __future__ import annotations

import os
from pathlib import Path

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.config import signature
from vaeflow_cli.console import shell_arg
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.files import can_create_in, nearest_existing
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.runtime.runs import RunDir, not_a_run
from vaeflow_cli.training.runconfig import resolved_config, write_components, write_config


def _check_resumes_exactly(existing, cfg, rd: RunDir, phase: str) -> None:
    """--resume continues a phase exactly (the same data order, dequantization noise and step
    positions), so the settings those come from may not change: the seed and the phase's batch
    size. (The epochs, learning rate, threads and the like may.)"""
    for key, old, new in (
        ("train.seed", existing["train"]["seed"], cfg["train"]["seed"]),
        (f"train.{phase}.batch_size", existing["train"][phase]["batch_size"], cfg["train"][phase]["batch_size"]),
    ):
        if old != new:
            raise VaeflowError(
                f"--resume continues {rd.path} exactly, and its {key} is {old}, not {new}: leave that --set out (or give "
                f"--set {key}={old}), or train the phase again with --restart"
            )


def check_run(cfg: dict, rd: RunDir, phase: str, *, resume: bool, restart: bool = False, config_path: str | Path | None = None) -> None:
    """Refuse (one line) to train ``phase`` of ``cfg`` in ``rd``, reading only (and trying that an
    entry can be created there, ``files.can_create_in``): a folder that takes no new files, a
    finished or started phase without --resume or --restart, a run made with another
    [model]/[data] config, a --resume with another seed or batch size, a later phase in a folder
    that is not a run, a VAE's phase in a standalone flow's run and the reverse. Called before
    anything is written, and again under the lock."""
    ckpt_path = rd.checkpoint_path(phase)
    if os.path.lexists(rd.path) and not rd.path.is_dir():
        raise VaeflowError(f"--run {shell_arg(rd.path)} is not a directory (a file, or a broken or looping link); give a run directory")
    for entry, folder in (
        (rd.path / "checkpoints", True),
        (rd.samples_dir, True),
        (rd.path / "eval", True),
        (rd.config_path, False),
        (rd.components_path, False),
        (rd.metrics_path, False),
    ):
        if os.path.lexists(entry) and (entry.is_dir() != folder or not (folder or entry.is_file())):
            want = "a folder" if folder else "a regular file"
            raise VaeflowError(f"{entry} is in the way: vaeflow keeps {want} there; move it away, or choose another --run")
    others = [p for p in PHASES.values() if p.standalone != PHASES[phase].standalone and rd.checkpoint_path(p.name).exists()]
    if others:  # a standalone flow's run and a VAE's run do not mix
        kind = "a standalone flow (vaeflow train-baseline)" if others[0].standalone else "a VAE (vaeflow train-vae)"
        raise VaeflowError(f"{rd.path} holds {kind}; {PHASES[phase].title} cannot train in it: choose a new --run")
    home = nearest_existing(rd.path)
    if home.is_dir() and not can_create_in(home):
        raise VaeflowError(f"--run {rd.path}: the folder {home} is not writable; choose a run directory you may write to")
    rd.read_metrics()  # a damaged metrics.jsonl is refused now, before anything is written
    if ckpt_path.exists() and not (resume or restart):
        raise VaeflowError(
            f"{rd.path} already has a {PHASES[phase].title.removeprefix('the ')} checkpoint ({ckpt_path}); pass --resume to continue it, "
            "--restart to train it again from the start (its checkpoints replaced), or choose a new --run"
        )
    if rd.config_path.exists():
        existing = resolved_config(rd)
        theirs, ours = signature.model_signature(existing), signature.model_signature(cfg)
        if theirs != ours:
            raise VaeflowError(
                f"{rd.path} was created with a different [model]/[data] config ({signature.signature_differences(theirs, ours)}); "
                "train it with its own (leave out --config and any --set of model.* or data.*), or choose a new --run"
            )
        if resume and ckpt_path.exists():
            _check_resumes_exactly(existing, cfg, rd, phase)
    elif PHASES[phase].starts_from:  # a phase that continues another needs the run it continues
        hint = (
            f"vaeflow train-vae --config {shell_arg(config_path)} --run {shell_arg(rd.path)}"
            if config_path
            else f"vaeflow train-vae --run {shell_arg(rd.path)}"
        )
        data, root = cfg.data.name, cfg.data.options.get("root", "")
        needs = (
            f" (it trains on the {data} dataset at data.root = {root!r}, which is not there yet: vaeflow data download {data} --root {shell_arg(root)})"
            if root and not os.path.exists(root)
            else ""
        )
        raise VaeflowError(not_a_run(rd.path, f"{PHASES[phase].title} starts from phase 1: run {hint} first{needs}"))


def prepare_run(cfg: dict, rd: RunDir, phase: str, *, resume: bool = False, restart: bool = False) -> None:
    """Check that ``cfg`` fits the run directory (check_run) and write it there, with what built
    the run (``components.toml``: ``plugins.provenance``), unless the files already hold exactly
    that: a no-op resume rewrites nothing."""
    from vaeflow_cli.registry.core import get_registry
    from vaeflow_cli.registry.provenance import built_with

    check_run(cfg, rd, phase, resume=resume, restart=restart)
    text = config_mod.dumps(cfg).encode()
    try:
        same = rd.config_path.read_bytes() == text
    except OSError:
        same = False
    if not same:
        write_config(rd, cfg)
    write_components(rd, built_with(cfg, get_registry()))
