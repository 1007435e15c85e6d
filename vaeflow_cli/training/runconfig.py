"""A run directory's config and what is checked or built from it: reading, resolving and writing
``RUN/config.toml``, the components' provenance (``RUN/components.toml``), a checkpoint's config
signature, and the model a checkpoint holds.

The run directory's files and formats (``RunDir``, checkpoints, metrics) are the ground floor's
(``vaeflow_cli.runtime.runs``); these functions sit above it because they need the config schema
(``vaeflow_cli.config.core``), the plugin registry and provenance, and the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.config import files, signature
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.files import atomic_write_bytes
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.runtime.runs import RunDir, load_weights, not_a_run


def read_config(rd: RunDir) -> dict:
    """The run's ``config.toml`` laid over its base by the rule of every config file
    (``config.files.file_config``; training writes it whole), not validated."""
    if not rd.config_path.exists():
        raise VaeflowError(not_a_run(rd.path))
    raw, _ = files.file_config(rd.config_path, fix="the run's config.toml is damaged: restore it, or start a new --run")
    return raw


def resolved_config(rd: RunDir, overrides: list[str] = ()) -> dict:
    """The run's stored config, validated against the registry, with ``--set`` overrides; the
    loggers it names need not be installed (``config.resolve``'s ``check_loggers``). A
    component that no loaded plugin registers is one line naming the distribution and version
    that provided it when the run was trained (``recorded_components``)."""
    from vaeflow_cli.registry import provenance
    from vaeflow_cli.registry.core import get_registry

    raw = read_config(rd)
    provenance.check_known(rd.path, raw, str(rd.config_path), lambda: recorded_components(rd), get_registry())
    return config_mod.resolve(base=raw, overrides=overrides, source=str(rd.config_path), check_loggers=False)


def phase_config(phase: str, run_dir: str | Path | None = None, *, config: str | Path | None = None, overrides=()) -> tuple[dict, Path]:
    """The resolved config that ``phase`` trains with, and the run directory it trains in: the one
    rule of ``vaeflow train-PHASE`` and of ``train_phase(None, run_dir, phase)``.

    Without a ``config`` file, a ``run_dir`` that holds a ``config.toml`` goes on with it (phase 2
    takes the config phase 1 was trained with, a resumed phase its own), and so does the default
    run (the embedded config's ``[run] dir``) for a phase that starts from another; otherwise the
    ``config`` file, or the embedded default. ``overrides`` (``--set KEY=VALUE``) apply to
    whichever it is. The run directory is ``run_dir``, else the config's ``[run] dir``."""
    overrides = list(overrides)
    if config is None and run_dir is not None and RunDir(run_dir).config_path.exists():
        return resolved_config(RunDir(run_dir), overrides), Path(run_dir)
    cfg = config_mod.resolve(config, overrides)
    if run_dir is None and config is None and PHASES[phase].starts_from:
        rd = RunDir(cfg.run.dir)
        if rd.config_path.exists():
            cfg = resolved_config(rd, overrides)
    return cfg, Path(run_dir if run_dir is not None else cfg.run.dir)


def write_config(rd: RunDir, cfg: dict) -> None:
    atomic_write_bytes(rd.config_path, config_mod.dumps(cfg).encode())


def write_components(rd: RunDir, record: dict) -> None:
    """Write ``components.toml`` (``plugins.provenance.built_with``) unless it holds that already."""
    from vaeflow_cli.registry import provenance

    text = provenance.dumps(record).encode()
    try:
        if rd.components_path.read_bytes() == text:
            return
    except OSError:
        pass
    atomic_write_bytes(rd.components_path, text)


def recorded_components(rd: RunDir) -> dict[str, dict]:
    """Which plugin, distribution and version provided each component when the run was trained
    (``plugins.provenance.parse``): from ``components.toml``, else from the first checkpoint
    that records it (a run copied without the file, say); {} when nothing records it."""
    from vaeflow_cli.registry import provenance

    try:
        found = provenance.parse(files.load_toml(rd.components_path)) if rd.components_path.is_file() else {}
    except VaeflowError:
        found = {}
    for phase in PHASES if not found else ():
        if rd.checkpoint_path(phase).is_file():
            try:
                found = provenance.parse(rd.load_checkpoint(phase).get("components"))
            except VaeflowError:
                continue
            if found:
                break
    return found


def check_signature(state: dict, cfg: dict, path: Path) -> None:
    """A checkpoint must come from the same model and data config as the run's."""
    want = json.dumps(signature.model_signature(cfg), sort_keys=True)
    try:
        got = json.dumps(signature.normalize_signature(json.loads(state.get("signature") or "null") or {}), sort_keys=True)
    except (TypeError, ValueError):
        got = None
    if got != want:
        raise VaeflowError(
            f"checkpoint {path} was trained with a different [model]/[data] config than {path.parent.parent}/config.toml; use the run's own config or a new --run"
        )


def model_from_state(cfg: dict, state: dict, *, device: str = "cpu", path: str | Path = "the checkpoint"):
    """The model of a resolved config with a loaded checkpoint's weights, in eval mode on ``device``."""
    from vaeflow_cli.data.splits import build_dataset
    from vaeflow_cli.model.vaeflow import build_model

    model = build_model(cfg, build_dataset(cfg).image_shape, baseline=state.get("phase") in PHASES and PHASES[state["phase"]].standalone)
    try:
        load_weights(model, state["model"], Path(path))
    except VaeflowError as exc:  # a plugin upgraded since: say which
        from vaeflow_cli.registry.core import get_registry
        from vaeflow_cli.registry.provenance import version_note

        note = version_note(state.get("components"), get_registry())
        if not note:
            raise
        raise VaeflowError(f"{exc}{note}") from None
    return model.to(device).eval()
