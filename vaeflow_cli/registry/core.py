"""One plugin manager and the component registry it fills.

Every plugin arrives through the entry-point group ``vaeflow``. The built-ins are the entry points
of the distribution ``vaeflow-builtins`` (``plugins/``, installed as ``vaeflow_plugins``; see its
pyproject.toml): registered exactly like third-party plugins, but always loaded, first, and a
failure among them is a bug in vaeflow that raises.

Choosing plugins: the environment variable ``VAEFLOW_PLUGINS`` selects which third-party plugins
load. It is a comma-separated list of plugin names; a name is an entry-point name or a
distribution name, and an item starting with ``-`` excludes that plugin:

- unset: load all installed plugins;
- ``VAEFLOW_PLUGINS=a,b``: load only ``a`` and ``b``;
- ``VAEFLOW_PLUGINS=-x`` (or ``-x,-y``): load all except ``x`` (and ``y``);
- ``VAEFLOW_PLUGINS=a,b,-b``: load the named ones minus the excluded ones (here ``a``);
- ``VAEFLOW_PLUGINS=`` (empty): load none.

Built-in plugins always load. A bare ``-`` is an error.

A broken plugin: a third-party plugin that fails to import (any exception, a SyntaxError
included), that defines a hook vaeflow does not have, or whose hooks raise or register invalid
components, does not stop vaeflow. It is recorded as failed (``PluginInfo.error``, a one-line
reason) and none of its components are registered; ``vaeflow plugins`` lists it as failed, and
every other command prints one warning line per failed plugin on stderr when the registry is built
(``vaeflow: warning: plugin 'x' failed to load (...); its components are unavailable; exclude it
with VAEFLOW_PLUGINS=-x``). Only a command that needs one of its components fails: the "unknown
component" error then names the failed plugins that may provide it.

The same component name registered by two plugins is an error for every command (a config could
otherwise get either one, depending on install order); the one-line message names both plugins and
how to exclude one.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from vaeflow_cli import hookspecs
from vaeflow_cli.console import warning
from vaeflow_cli.errors import VaeflowError

ENTRY_POINT_GROUP = "vaeflow"
ENV_VAR = "VAEFLOW_PLUGINS"
BUILTIN_DISTRIBUTION = "vaeflow-builtins"
BUILTIN_FIX = "pip install -e ./plugins (in a clone of vaeflow) or pip install vaeflow-builtins"
# hook name -> component kind
KINDS = {
    "register_encoders": "encoder",
    "register_decoders": "decoder",
    "register_priors": "prior",
    "register_flows": "flow",
    "register_datasets": "dataset",
    "register_loggers": "logger",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    def build(self, section: str, origin: tuple[str, str] | None = None, /, **kwargs: Any) -> Any:
        """``factory(**kwargs)``; an exception it raises (other than VaeflowError and memory
        exhaustion) becomes one line naming ``section`` (e.g. "[model.flow]"), the component and
        its plugin: a factory's own ValueError is a config problem, not a crash. ``origin``:
        (where the section's values came from, how to fix them), ``Config.origin``'s answer, which
        leads and ends the line; None: the section alone. A factory's own VaeflowError keeps its
        line, led by where the values came from."""
        try:
            return self.factory(**kwargs)
        except VaeflowError as exc:
            if origin and type(exc) is VaeflowError:  # a factory's own one line (a dataset's): where its options came from first
                raise VaeflowError(f"{origin[0]}: {exc}") from None
            raise
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            where, fix = (f"{origin[0]}: {section}", origin[1]) if origin else (section, f"fix {section}")
            raise VaeflowError(
                f"{where}: {self.kind} {self.name!r} (plugin {self.plugin!r}) cannot be built with these options: {type(exc).__name__}: {first}; {fix}"
            ) from None


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    """Why the plugin failed to load (one line), or None when it loaded."""
    distribution: str = ""
    entry_point: str = ""
    """``module:attr`` for an entry-point plugin; empty for built-ins and ``extra`` plugins."""


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
        self.check_free(kind, plugin, name)
        self.components[kind][name] = Component(kind, name, factory, plugin)
        self.plugins[plugin].registered.setdefault(kind, []).append(name)

    def check_free(self, kind: str, plugin: str, name: str) -> None:
        """Raise the one-line "registered twice" error if ``name`` is taken by another component."""
        old = self.components[kind].get(name)
        if old is not None:
            raise VaeflowError(
                f"{kind} {name!r} is registered twice: by plugin {old.plugin!r} and by plugin {plugin!r}; "
                f"uninstall one, or {self._exclude_either(old.plugin, plugin)}"
            )

    def _exclude_either(self, a: str, b: str) -> str:
        hints = [exclude_hint(self.plugins[p]) for p in dict.fromkeys((a, b)) if p in self.plugins and not self.plugins[p].builtin]
        return " or ".join(hints) if hints else "rename one"

    def failed(self) -> list[PluginInfo]:
        """The plugins that failed to load, in load order."""
        return [p for p in self.plugins.values() if p.error is not None]

    def get(self, kind: str, name: str, *, where: str = "") -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            choices = ", ".join(sorted(self.components[kind])) or "(none)"
            at = f"{where}: " if where else ""
            msg = f"{at}unknown {kind} {name!r}; registered {kind}s: {choices}"
            failed = self.failed()
            if len(failed) == 1:
                msg += f"; plugin {failed[0].name!r} failed to load ({failed[0].error}), which may provide it"
            elif failed:
                listed = ", ".join(f"{p.name!r} ({p.error})" for p in failed)
                msg += f"; plugins {listed} failed to load, which may provide it"
            raise VaeflowError(msg) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def provenance(self, kind: str, name: str) -> dict[str, str]:
        """Who registered component ``name``: ``{"plugin", "distribution", "version"}`` (the
        distribution is empty for a plugin handed to ``build_registry(extra=...)``; all three are
        empty for a name nothing registered). Recorded with each run (``plugins.provenance``)."""
        component = self.components.get(kind, {}).get(name) if isinstance(name, str) else None
        info = self.plugins.get(component.plugin) if component is not None else None
        if info is None:
            return {"plugin": "", "distribution": "", "version": ""}
        return {"plugin": info.name, "distribution": info.distribution, "version": info.version}


# -- choosing plugins (VAEFLOW_PLUGINS) ---------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which third-party plugins load: ``include`` None means all; ``exclude`` always wins."""

    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    def admits(self, *names: str) -> bool:
        """Whether a plugin known by any of ``names`` (entry-point, distribution name) loads."""
        known = {n for n in names if n}
        if known & self.exclude:
            return False
        return self.include is None or bool(known & self.include)


def parse_selection(value: str | Iterable[str] | None) -> Selection:
    """``VAEFLOW_PLUGINS`` syntax (a string, or its items) -> Selection; see the module docstring."""
    if value is None:
        return Selection()
    raw = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() for item in raw if item.strip()]
    if not items:
        return Selection(include=frozenset())
    include = {item for item in items if not item.startswith("-")}
    exclude = {item[1:].strip() for item in items if item.startswith("-")}
    if "" in exclude:
        shown = value if isinstance(value, str) else ",".join(items)
        raise VaeflowError(f"{ENV_VAR}={shown}: a '-' must be followed by a plugin name, e.g. {ENV_VAR}=-myplugin to load all plugins but myplugin")
    return Selection(include=frozenset(include) if include else None, exclude=frozenset(exclude))


def selection_from_env() -> Selection:
    return parse_selection(os.environ.get(ENV_VAR))


def exclude_hint(info: PluginInfo) -> str:
    """How to stop third-party plugin ``info`` from loading, given the current ``VAEFLOW_PLUGINS``."""
    if not info.entry_point:  # handed to build_registry(extra=...), not chosen by VAEFLOW_PLUGINS
        return f"drop {info.name!r} from build_registry(extra=...)"
    current = os.environ.get(ENV_VAR)
    try:
        selection = parse_selection(current)
    except VaeflowError:
        selection = Selection()
    if selection.include is not None:
        named = [n for n in (info.name, info.distribution) if n in selection.include]
        return f"remove {named[0] if named else info.name!r} from {ENV_VAR}"
    kept = [item.strip() for item in (current or "").split(",") if item.strip() and item.strip() != f"-{info.name}"]
    return f"exclude it with {ENV_VAR}={','.join([*kept, f'-{info.name}'])}"


# -- building the registry ----------------------------------------------------------------------


class _PluginFailed(Exception):
    """A third-party plugin is broken: recorded in its PluginInfo, never raised to the user."""


def _where(exc: BaseException) -> str:
    """' at file.py:LINE' of the first frame outside vaeflow_cli (its loader, the logger wrappers)
    and importlib, the plugin's own code, or ''."""
    if isinstance(exc, SyntaxError):  # its message names the file and line already
        return ""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # vaeflow_cli/
    for frame in traceback.extract_tb(exc.__traceback__):
        path = frame.filename
        if path.startswith("<") or os.path.abspath(path).startswith(package) or f"{os.sep}importlib{os.sep}" in path:
            continue
        base = os.path.basename(path)
        if base == "__init__.py":
            base = f"{os.path.basename(os.path.dirname(path))}/{base}"
        return f" at {base}:{frame.lineno}"
    return ""


def describe_exception(exc: BaseException, *, limit: int = 240) -> str:
    """``Type: message at file:line`` on one line, at most ``limit`` characters."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a plugin's exception whose __str__ fails
        text = ""
    out = (f"{type(exc).__name__}: {text}" if text else type(exc).__name__) + _where(exc)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _register(pm: pluggy.PluginManager, obj: object, name: str) -> None:
    """Register ``obj`` under ``name``; raise _PluginFailed (leaving ``pm`` as before) if it is invalid."""
    if pm.is_registered(obj):
        raise _PluginFailed(f"its object is already registered as plugin {pm.get_name(obj)!r}")
    try:
        pm.register(obj, name=name)
    except Exception as exc:
        if pm.get_plugin(name) is obj:
            pm.unregister(obj, name=name)
        if isinstance(exc, pluggy.PluginValidationError):
            raise _PluginFailed(f"invalid hook: {_one_line(str(exc))}") from None
        raise _PluginFailed(f"registering it raised {describe_exception(exc)}") from None
    unknown = sorted(
        hc.name
        for hc in pm.get_hookcallers(obj) or []
        if not hc.has_spec() and not all(i.optionalhook for i in hc.get_hookimpls() if i.plugin is obj)
    )
    if unknown:
        pm.unregister(obj, name=name)
        raise _PluginFailed(f"it has a hook that vaeflow does not define ({', '.join(unknown)}); vaeflow's hooks are {', '.join(KINDS)}")


def _collect(pm: pluggy.PluginManager, plugin: str, *, strict: bool = False) -> list[tuple[str, str, Any]]:
    """Call plugin ``plugin``'s hooks; its (kind, component name, factory) triples, checked.

    ``strict`` (built-ins): a hook's exception propagates as it is, traceback and all."""
    out: list[tuple[str, str, Any]] = []
    for hook_name, kind in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != plugin:
                continue
            if impl.wrapper or impl.hookwrapper:
                raise _PluginFailed(f"its {hook_name} is a hook wrapper; it must be a plain hook")

            def register(name, factory, _kind=kind):  # hookspecs: register(name, factory)
                out.append((_kind, name, factory))

            try:
                impl.function(register=register)
            except Exception as exc:
                if strict:
                    raise
                raise _PluginFailed(f"{hook_name} raised {describe_exception(exc)}") from None
    seen = set()
    for kind, component, factory in out:
        if not isinstance(component, str) or not component:
            raise _PluginFailed(f"it registered a {kind} without a name")
        if not callable(factory):
            raise _PluginFailed(f"it registered {kind} {component!r} with a non-callable factory")
        if (kind, component) in seen:
            raise _PluginFailed(f"it registered {kind} {component!r} twice")
        seen.add((kind, component))
    return out


def _add_all(registry: Registry, name: str, components: list[tuple[str, str, Any]]) -> None:
    """Add a plugin's checked components: all of them, or (on a name clash) none."""
    for kind, component, _ in components:
        registry.check_free(kind, name, component)
    for kind, component, factory in components:
        registry.add(kind, name, component, factory)


def _entry_points() -> Iterable[md.EntryPoint]:
    return md.entry_points(group=ENTRY_POINT_GROUP)


def _distribution(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ""


_FROM_ENV = object()


def build_registry(*, extra: Iterable[tuple[str, object]] = (), load_entry_points: bool = True, allowed=_FROM_ENV) -> Registry:
    """Register the built-ins, the selected third-party entry-point plugins (unless
    ``load_entry_points`` is off) and ``extra`` (name, object) pairs.

    ``allowed``: which external plugins load: None loads all, otherwise a ``VAEFLOW_PLUGINS``
    value (a string) or its items (names; ``-name`` excludes); by default it comes from the
    environment variable ``VAEFLOW_PLUGINS``.

    A third-party plugin (entry point or ``extra``) that fails to import, has an invalid hook, or
    whose hooks raise is recorded with ``PluginInfo.error`` and adds no components. A built-in
    that fails is a bug in vaeflow and raises. The same component name from two plugins raises
    VaeflowError. Prints nothing: ``get_registry`` warns about failed plugins."""
    pm = pluggy.PluginManager("vaeflow")
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    found = list(_entry_points())
    builtins = sorted((ep for ep in found if _distribution(ep) == BUILTIN_DISTRIBUTION), key=lambda ep: ep.name)
    if not builtins:
        raise VaeflowError(f"vaeflow's built-in components (the distribution {BUILTIN_DISTRIBUTION!r}) are not installed; {BUILTIN_FIX}")
    for ep in builtins:
        pm.register(ep.load(), name=ep.name)
        registry.plugins[ep.name] = PluginInfo(ep.name, ep.dist.version, builtin=True, distribution=BUILTIN_DISTRIBUTION, entry_point=ep.value)
        for kind, component, factory in _collect(pm, ep.name, strict=True):
            registry.add(kind, ep.name, component, factory)

    # (info, loader) for each third-party plugin, in load order
    pending: list[tuple[PluginInfo, Callable[[], object]]] = []
    if load_entry_points:
        selection = selection_from_env() if allowed is _FROM_ENV else parse_selection(allowed)
        for ep in found:
            dist = _distribution(ep)
            if dist == BUILTIN_DISTRIBUTION or not selection.admits(ep.name, dist):
                continue
            version = ep.dist.version if ep.dist is not None else "unknown"
            pending.append((PluginInfo(ep.name, version, builtin=False, distribution=dist, entry_point=ep.value), ep.load))
    for name, obj in extra:
        pending.append((PluginInfo(name, getattr(obj, "__version__", "unknown"), builtin=False), lambda _obj=obj: _obj))

    for info, load in pending:
        other = registry.plugins.get(info.name)
        if other is not None:
            dists = " and ".join(repr(d) for d in (other.distribution, info.distribution) if d)
            fix = f"exclude one by its distribution name, e.g. {ENV_VAR}=-{info.distribution}" if info.distribution else "rename one"
            raise VaeflowError(f"two plugins are named {info.name!r}" + (f" (distributions {dists})" if dists else "") + f"; uninstall one, or {fix}")
        registry.plugins[info.name] = info
        try:
            try:
                obj = load()
            except (Exception, SystemExit) as exc:  # any import-time failure, SyntaxError included
                raise _PluginFailed(f"import failed: {describe_exception(exc)}") from None
            _register(pm, obj, info.name)
            try:
                components = _collect(pm, info.name)
            except _PluginFailed:
                pm.unregister(obj, name=info.name)
                raise
        except _PluginFailed as exc:
            info.error = str(exc)
            continue
        _add_all(registry, info.name, components)
    return registry


# -- the process-wide registry and its warnings -------------------------------------------------


def failure_warning(info: PluginInfo) -> str:
    """The one-line warning for a plugin that failed to load (without the ``vaeflow: warning:`` prefix)."""
    return f"plugin {info.name!r} failed to load ({info.error}); its components are unavailable; {exclude_hint(info)}"


_REGISTRY: Registry | None = None
_WARNED: set[str] = set()


def warn_failed(registry: Registry) -> None:
    """Warn once per process about each plugin of ``registry`` that failed to load."""
    for info in registry.failed():
        if info.name not in _WARNED:
            _WARNED.add(info.name)
            warning(failure_warning(info))


def get_registry(*, warn_failures: bool = True) -> Registry:
    """The process-wide registry, built on first use; warns about failed plugins unless told not to
    (``vaeflow plugins`` lists them instead)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    if warn_failures:
        warn_failed(_REGISTRY)
    return _REGISTRY


def blame(exc: BaseException) -> str | None:
    """Which plugin's code raised ``exc``, from its traceback, as text for an error line:
    "[model.encoder] of plugin 'demo' (path/to/module.py:12)", or None when no registered plugin's
    code is on the traceback (a bug in vaeflow or a library). The innermost frame in a plugin's
    package names the plugin and the place; the section comes from the component object that
    frame (or one above it) runs on: a model's encoder, decoder, prior or flow, or a dataset.
    Looks only at a registry already built (never loads plugins while reporting an error)."""
    import traceback

    registry = _REGISTRY
    if registry is None or exc.__traceback__ is None:
        return None
    owners: dict[str, dict[str, set[str]]] = {}  # top-level package -> {plugin: kinds it registered}
    for by_name in registry.components.values():
        for component in by_name.values():
            top = (getattr(component.factory, "__module__", "") or "").split(".")[0]
            if top and top != "vaeflow_cli":
                owners.setdefault(top, {}).setdefault(component.plugin, set()).add(component.kind)
    frames = list(traceback.walk_tb(exc.__traceback__))
    culprit = None
    for i in range(len(frames) - 1, -1, -1):  # innermost first
        frame, lineno = frames[i]
        top = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if top in owners:
            culprit = i
            break
    if culprit is None:
        return None
    frame, lineno = frames[culprit]
    section, kind = None, None
    model = None
    for f, _ in frames[: culprit + 1]:  # outer to inner: the component a model method called into
        obj = f.f_locals.get("self")
        if model is not None and section is None and obj is not None:
            kind = next((name for name in ("encoder", "decoder", "prior", "flow") if getattr(model, name, None) is obj), None)
            section = f"[model.{kind}]" if kind else None
        if type(obj).__module__ == "vaeflow_cli.model.vaeflow" and type(obj).__name__ in ("VAEFlow", "FlowModel"):
            model = obj
    if section is None:
        obj = frame.f_locals.get("self")
        is_dataset = obj is not None and callable(getattr(obj, "split", None))
        section, kind = ("[data] dataset", "dataset") if is_dataset else ("a component", None)
    candidates = owners[str(frame.f_globals.get("__name__", "")).split(".")[0]]
    of_kind = [p for p, kinds in candidates.items() if kind in kinds] or list(candidates)  # the package's plugins that register such components
    plugins = " or ".join(repr(p) for p in sorted(of_kind))
    return f"{section} of plugin {plugins} ({frame.f_code.co_filename}:{lineno}, in {frame.f_code.co_name})"
