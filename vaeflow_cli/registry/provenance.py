"""What built a run: the plugin, distribution and version that registered each component its config
names (the dataset, encoder, decoder, prior, flow and loggers), and vaeflow's own version.

Training records it twice: in ``RUN/components.toml`` (rewritten when a phase starts, like
``config.toml``) and in every checkpoint (``components``, as it was when that checkpoint's phase
ran). When the run is opened again (``training.runconfig.resolved_config``: sample, evaluate, ``load_run``,
``--resume``) without a component its config names, the one-line error says which distribution
and version provided it, and how to get it back (``unknown_component``). No torch here.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Callable, Mapping
from typing import Any

from vaeflow_cli.errors import VaeflowError

FILE_NAME = "components.toml"
SECTIONS = (("data", "dataset", "name"), ("model.encoder", "encoder", "type"), ("model.decoder", "decoder", "type"))
SECTIONS += (("model.prior", "prior", "type"), ("model.flow", "flow", "type"))
"""(config section, component kind, the key that names it) of every component a run is built from."""

HEADER = (
    "# What built this run: the plugin distribution and version that registered each component of\n"
    "# config.toml when a phase last started here (vaeflow writes it; each checkpoint keeps its own copy).\n"
)


def _section(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _vaeflow_version() -> str:
    try:
        return md.version("vaeflow")
    except md.PackageNotFoundError:
        from vaeflow_cli._version import __version__

        return __version__


def built_with(cfg: dict, registry) -> dict:
    """The record for a resolved config: ``{"vaeflow": VERSION, "components": {KIND: {"name",
    "plugin", "distribution", "version"}}, "loggers": {NAME: {...}}}``; a plugin handed to
    ``build_registry(extra=...)`` has no distribution (an empty string)."""
    components = {}
    for dotted, kind, key in SECTIONS:
        name = (_section(cfg, dotted) or {}).get(key)
        components[kind] = {"name": name, **registry.provenance(kind, name)}
    loggers = {name: registry.provenance("logger", name) for name in cfg.get("run", {}).get("loggers", [])}
    return {"vaeflow": _vaeflow_version(), "components": components, "loggers": loggers}


def dumps(record: dict) -> str:
    import tomli_w

    return HEADER + tomli_w.dumps(record)


def parse(record: Any) -> dict[str, dict]:
    """The components of a record read back (from components.toml or a checkpoint), by kind; the
    entries that are not a table of strings are left out (a damaged record only loses its hint)."""
    out = {}
    components = record.get("components") if isinstance(record, dict) else None
    for kind, entry in (components or {}).items() if isinstance(components, dict) else ():
        if isinstance(entry, dict) and all(isinstance(entry.get(k, ""), str) for k in ("name", "plugin", "distribution", "version")):
            out[kind] = entry
    return out


def _installed(distribution: str) -> str | None:
    try:
        return md.version(distribution)
    except (md.PackageNotFoundError, ValueError):
        return None


def unknown_component(run: os.PathLike | str, kind: str, name: str, entry: dict | None, registry) -> str:
    """The clause an "unknown KIND NAME" error of a run adds: who provided it when the run was
    trained and what to do now (install that distribution and version; or let the installed one
    load, when ``VAEFLOW_PLUGINS`` leaves it out or it failed to load)."""
    from vaeflow_cli.registry.core import ENV_VAR

    if not entry or entry.get("name") != name:
        return f"{run} does not record which plugin provided it (neither its components.toml nor a checkpoint names it)"
    plugin, dist, version = entry.get("plugin", ""), entry.get("distribution", ""), entry.get("version", "")
    if not dist:
        return f"{run} was trained with it from plugin {plugin!r} (handed to build_registry(extra=...), not an installed distribution): register that plugin again"
    made = f"{run} was trained with it from {dist} {version} (plugin {plugin!r})"
    failed = registry.plugins.get(plugin)
    if failed is not None and failed.error is not None:
        return f"{made}, which failed to load now ({failed.error})"
    have = _installed(dist)
    if have is not None:
        same = "" if have == version else f"; version {have} is installed, the run was made with {version}"
        return f"{made}, which is installed but not loaded: {ENV_VAR}={os.environ.get(ENV_VAR, '')!r} leaves it out; add {plugin} to {ENV_VAR}{same}"
    return f"{made}: install it with pip install '{dist}=={version}'"


def version_note(recorded: Any, registry) -> str:
    """The note "; its decoder came from vaeflow-demo 0.2.0, 0.3.0 is installed now" for each component of
    a checkpoint's record whose distribution's version changed since (empty when none did): the
    likely cause of weights that no longer fit the model."""
    notes = []
    for kind, entry in parse(recorded).items():
        now = registry.provenance(kind, entry.get("name"))
        if entry.get("distribution") and now.get("distribution") == entry["distribution"] and now.get("version") != entry.get("version"):
            notes.append(f"its {kind} came from {entry['distribution']} {entry.get('version')}, {now.get('version')} is installed now")
    return "; " + "; ".join(notes) if notes else ""


def check_known(run: os.PathLike | str, raw: dict, where: str, record: Callable[[], dict[str, dict]], registry) -> None:
    """Raise the one-line error for the first component of the run's config ``raw`` that no loaded
    plugin registers, naming the distribution and version that provided it by the run's record
    (``record()``, read only then: ``training.runconfig.recorded_components``)."""
    for dotted, kind, key in SECTIONS:
        section = _section(raw, dotted)
        name = section.get(key) if isinstance(section, dict) else None
        if isinstance(name, str) and name not in registry.components[kind]:
            choices = ", ".join(registry.names(kind)) or "(none)"
            why = unknown_component(run, kind, name, record().get(kind), registry)
            raise VaeflowError(f"{where}: {dotted}.{key}: unknown {kind} {name!r}; {why}; registered {kind}s: {choices}")
