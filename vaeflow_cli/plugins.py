"""One plugin manager and the component registry it fills.

Built-in plugins are listed in ``BUILTIN_PLUGINS`` and registered exactly like third-party
plugins, which arrive through the entry-point group ``vaeflow``. The environment variable
``VAEFLOW_PLUGINS`` limits which third-party plugins load: unset loads all, a comma-separated list
loads those (by entry-point or distribution name), an empty value loads none.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from vaeflow_cli import hookspecs
from vaeflow_cli.errors import VaeflowError

ENTRY_POINT_GROUP = "vaeflow"
ENV_VAR = "VAEFLOW_PLUGINS"
BUILTIN_PLUGINS = (
    "vaeflow_plugins.resnet",
    "vaeflow_plugins.priors",
    "vaeflow_plugins.glow",
    "vaeflow_plugins.datasets",
)
# hook name -> component kind
KINDS = {
    "register_encoders": "encoder",
    "register_decoders": "decoder",
    "register_priors": "prior",
    "register_flows": "flow",
    "register_datasets": "dataset",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    registered: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Components by kind and name, and which plugin registered each."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Component]] = {k: {} for k in KINDS.values()}
        self.plugins: dict[str, PluginInfo] = {}

    def add(self, kind: str, plugin: str, name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise VaeflowError(f"plugin {plugin!r} registered a {kind} without a name")
        if not callable(factory):
            raise VaeflowError(f"plugin {plugin!r} registered {kind} {name!r} with a non-callable factory")
        old = self.components[kind].get(name)
        if old is not None:
            raise VaeflowError(
                f"{kind} {name!r} is registered twice: by plugin {old.plugin!r} and by plugin {plugin!r}; "
                f"uninstall one, or limit external plugins with {ENV_VAR}"
            )
        self.components[kind][name] = Component(kind, name, factory, plugin)
        self.plugins[plugin].registered.setdefault(kind, []).append(name)

    def get(self, kind: str, name: str, *, where: str = "") -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            choices = ", ".join(sorted(self.components[kind])) or "(none)"
            at = f"{where}: " if where else ""
            raise VaeflowError(f"{at}unknown {kind} {name!r}; registered {kind}s: {choices}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def _allowed_external() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _entry_points() -> Iterable[md.EntryPoint]:
    return md.entry_points(group=ENTRY_POINT_GROUP)


_FROM_ENV = object()


def build_registry(*, extra: Iterable[tuple[str, object]] = (), load_entry_points: bool = True,
                   allowed=_FROM_ENV) -> Registry:
    """Register the built-ins, the allowed entry-point plugins and ``extra`` (name, object) pairs.

    ``allowed``: names of the external plugins to load; None loads all; by default it comes from
    the environment variable ``VAEFLOW_PLUGINS``."""
    pm = pluggy.PluginManager("vaeflow")
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    from vaeflow_cli import __version__

    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        registry.plugins[modname] = PluginInfo(modname, __version__, builtin=True)
    if load_entry_points:
        if allowed is _FROM_ENV:
            allowed = _allowed_external()
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist is not None else ""
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others' names
                raise VaeflowError(
                    f"plugin {ep.name!r} (entry point {ep.value!r}) failed to import: {exc}; "
                    f"fix or uninstall it, or exclude it with {ENV_VAR}"
                ) from None
            if pm.get_plugin(ep.name) is not None:
                raise VaeflowError(f"two plugins are named {ep.name!r}; uninstall one")
            pm.register(obj, name=ep.name)
            version = ep.dist.version if ep.dist is not None else "unknown"
            registry.plugins[ep.name] = PluginInfo(ep.name, version, builtin=False)
    for name, obj in extra:
        pm.register(obj, name=name)
        registry.plugins[name] = PluginInfo(name, getattr(obj, "__version__", "unknown"), builtin=False)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = ", ".join(KINDS)
        raise VaeflowError(f"plugin {pm.get_name(exc.plugin)!r} has a hook that vaeflow does not define ({exc}); vaeflow's hooks are {hooks}") from None
    # Call each implementation directly so every component is attributed to the plugin that made it.
    for hook_name, kind in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # in registration order
            impl.function(register=lambda name, factory, _k=kind, _p=impl.plugin_name: registry.add(_k, _p, name, factory))
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY
