"""Resolving a config: a file laid over its base (``config.files``), merged over the schema
(``config.schema``), ``--set`` overrides, validation against the registry, and writing TOML.

A config is a nested dict until ``resolve`` returns it as a ``Config`` (``config.typed``). A file takes the keys it leaves out from its base: the embedded
default (``defaults/default.toml``, what ``vaeflow config show`` prints) unless it names another
file with ``base = "..."`` (``file_config``). The result is merged key by key over ``DEFAULTS``, the
schema (every plain key and its type; its values fill only what the embedded default leaves out
too). Plain sections (``[data]``, ``[model]``, ``[train]``, ``[train.vae]``, ``[train.glow]``,
``[run]``) merge key by key; a component section
(``[model.encoder]``, ``[model.decoder]``, ``[model.prior]``, ``[model.flow]``) names a registered
factory with ``type`` and passes its other keys to that factory as keyword arguments, checked
against the factory's signature. ``[data]`` works the same way with ``name`` naming the dataset.
Unknown keys and wrong types are errors that name the key and the file.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import shlex
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from vaeflow_cli.config.constraints import declared_constraints, problem
from vaeflow_cli.config.files import BASE_KEY, COMPONENT_SECTIONS, MAX_DEPTH, depth, embedded_default, file_config, is_component, overlay
from vaeflow_cli.config.schema import DEFAULTS, plain_constraints
from vaeflow_cli.config.typed import Config, Origin
from vaeflow_cli.console import debug
from vaeflow_cli.errors import VaeflowError

DEFAULT_CONFIG_NAME = "<embedded default>"


def resolve(
    path: str | Path | None = None,
    overrides: list[str] = (),
    *,
    base: Config | dict | None = None,
    source: str = "run config",
    registry=None,
    check_loggers: bool = True,
) -> Config:
    """The validated, fully-resolved config from a file laid over its base (``file_config``: the
    embedded default unless the file names another; each base file is validated on its own
    first, so an error names the file that holds the key), or from ``base`` (a config dict or
    ``Config``, named ``source`` in errors, laid over the embedded default by the same rule), or the
    embedded default alone; then ``--set KEY=VALUE`` overrides. Give ``path`` or ``base``, not both. Component sections are filled with
    their factories' defaults. ``check_loggers`` off: ``run.loggers`` may name loggers that are not
    installed (a stored run read back to sample or evaluate; training opens its loggers, and
    refuses unknown ones, before it writes anything).
    Returns a ``Config`` (``config.typed``): typed, frozen attributes, a read-only mapping of the
    nested tables, and where each component section's values came from (``Config.origin``).
    Raises VaeflowError (one line) for a bad file or value, and for arguments of the wrong type."""

    if path is not None and (not isinstance(path, (str, os.PathLike)) or not str(path) or "\x00" in str(path)):
        raise VaeflowError(f"path must be None or the path of a TOML config file (a str or Path without NUL bytes), not {path!r}")
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise VaeflowError(f'overrides must be a list of "KEY=VALUE" strings (as --set takes them), not {overrides!r}')
    kept = {}
    if isinstance(base, Config):
        base, kept = base.to_dict(), dict(base.origins)  # validated again; where its values came from stays known
    if base is not None and (not isinstance(base, dict) or not all(isinstance(k, str) for k in base)):
        hint = "; a config file is the path argument" if isinstance(base, (str, os.PathLike)) else ""
        raise VaeflowError(f"base must be None or a config dict with str keys (a resolved config, say), not {type(base).__name__}{hint}")
    if path is not None and base is not None:
        raise VaeflowError("give a config file (path) or a config (base), not both; to change a file's values, pass overrides")
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()
    bases = ()
    if path is not None:
        raw, bases = file_config(path)
        where = str(path)
        if bases:  # each base is a config of its own, its errors naming it; resolving the nearest validates the chain below it
            resolve(bases[0], registry=registry, check_loggers=check_loggers)
    elif base is not None:
        if BASE_KEY in base:
            raise VaeflowError(
                f"{source}: {BASE_KEY!r} names a base file only in a config file given as a path; lay the dict over the file's config instead"
            )
        raw, where = overlay(embedded_default(), base), source
    else:
        raw, where = embedded_default(), DEFAULT_CONFIG_NAME
    cfg = merge(DEFAULTS, raw, where=where)
    set_by = {}
    for item in overrides:
        apply_override(cfg, item)
        set_by[item.split("=", 1)[0].strip()] = f"--set {item}"
    debug(f"config: {where}" + "".join(f", --set {item}" for item in overrides))
    tables = validate(cfg, where=where, registry=registry, set_by=set_by, check_loggers=check_loggers)
    origins = {}
    for sec in ("data", *(f"model.{p}" for p in COMPONENT_SECTIONS)):
        # the file (and its bases), or what a Config validated again knew; a plain dict's values
        # came from elsewhere and the embedded default builds as it is, so neither is named
        known = Origin(sec, file=where, bases=tuple(map(str, bases))) if path is not None else kept.get(sec)
        sets = tuple(item for key, item in set_by.items() if key == sec or key.startswith(sec + "."))
        if sets:
            known = (known or Origin(sec)).with_sets(sets)
        if known:
            origins[sec] = known
    return Config.from_tables(tables, origins=origins)


def unpickled_config(tables: dict) -> Config:
    """A pickled ``Config`` read back: its tables validated again, as any config from outside."""
    return resolve(base=tables, source="a pickled Config")


Config.validate_tables = unpickled_config  # set here: typed.py cannot import this module


def as_config(cfg: Config | dict, *, source: str = "the config given") -> Config:
    """``cfg`` as a ``Config``: itself when it is one, else a config dict (a resolved config's
    tables, edited, say) resolved and validated by the same rules as a file, errors naming ``source``.
    The library's entry points call it, so a Python caller may hand them either."""
    if isinstance(cfg, Config):
        return cfg
    return resolve(base=cfg, source=source)


def merge(defaults: dict, raw: dict, *, where: str, prefix: str = "") -> dict:
    """Recursively merge ``raw`` over ``defaults``, rejecting unknown plain keys and wrong types."""
    out = copy.deepcopy(defaults)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            if prefix == "data.":  # dataset keyword arguments are checked against the dataset
                out[key] = value
                continue
            if key == BASE_KEY:
                raise VaeflowError(f"{where}: {dotted!r}: {BASE_KEY} is a top-level key of a config file, before its first [table]; move it there")
            raise VaeflowError(f"{where}: unknown key {dotted!r}{_suggest(key, [*defaults, BASE_KEY] if not prefix else defaults)}")
        default = defaults[key]
        if is_component(dotted):
            if not isinstance(value, dict):
                raise VaeflowError(f"{where}: {dotted!r} must be a table ([{dotted}]) with a 'type' key")
            # A component section replaces the default one unless it keeps the same type.
            out[key] = {**default, **value} if value.get("type", default["type"]) == default["type"] else dict(value)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise VaeflowError(f"{where}: {dotted!r} must be a table ([{dotted}])")
            out[key] = merge(default, value, where=where, prefix=dotted + ".")
        else:
            out[key] = check_type(value, default, key=dotted, where=where, constraints=plain_constraints(dotted))
    return out


def _suggest(key: str, choices) -> str:
    if not choices:
        return "; it takes no keys"
    close = difflib.get_close_matches(key, list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys here: {', '.join(sorted(choices))}"


def check_type(value: Any, default: Any, *, key: str, where: str, constraints=()) -> Any:
    """``value`` converted to the type of ``default`` (int -> float and tuple -> list allowed), or
    a clear error whose fix, where it suggests a value, meets ``constraints`` (the key's declared
    ones, which the caller checks next)."""
    if default is None:
        return value
    want = type(default)
    if want is list and isinstance(value, tuple):
        value = list(value)  # a Config's own lists read back as tuples (cfg.run.loggers)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise VaeflowError(f"{where}: {key!r} = {value} is too large for a number") from None
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        found = problem(value, [])
        if found:
            raise VaeflowError(f"{where}: {key!r} {found}, got {value!r}")
        return value
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    raise VaeflowError(
        f"{where}: {key!r} must be {names.get(want, want.__name__)}, got {type(value).__name__} {value!r}; {_type_fix(value, default, key, where, constraints)}"
    )


def _type_fix(value: Any, default: Any, key: str, where: str, constraints=()) -> str:
    """How to fix a value of the wrong type, for ``check_type``'s error: a quoted string that reads
    (whole, on one line) as the wanted type loses its quotes, a float with an integer's value
    becomes one, a value given where a string belongs is quoted, a single string where a list of
    strings belongs is put in one, and anything else is shown ``default``'s TOML literal; each
    suggestion meets ``constraints``, and is written as a --set (quoted for the shell) or as a file
    line, as ``where`` says the value came."""
    section, _, leaf = key.rpartition(".")

    def written(v: Any) -> str:
        literal = _literal(v)
        if len(literal) > 120 or not literal.isprintable():
            raise TypeError("not shown")
        if where.startswith("--set "):
            return f"--set {shlex.quote(f'{key}={literal}')}"  # as the shell must pass it
        return f"{leaf} = {literal} in [{section}]" if section else f"{leaf} = {literal}"

    def fits(v: Any) -> bool:
        same = isinstance(v, type(default)) and not (isinstance(v, bool) and not isinstance(default, bool))
        return (same or (isinstance(default, float) and type(v) is int)) and not problem(v, constraints)

    candidates = []
    if isinstance(value, str) and "\n" not in value and "\r" not in value:
        try:
            parsed = tomllib.loads(f"v = {value}")
        except (tomllib.TOMLDecodeError, RecursionError):
            parsed = {}
        if list(parsed) == ["v"] and fits(parsed["v"]):
            candidates.append(("write it without quotes:", parsed["v"]))
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer() and fits(int(value)):
        candidates.append(("write it as an integer:", int(value)))
    if isinstance(default, str) and (isinstance(value, (int, float)) or type(value).__module__ == "datetime"):
        text = _literal_or_none(value)
        if text is not None and fits(text):
            candidates.append(("quote it:", text))
    if isinstance(default, list) and all(isinstance(x, str) for x in default) and isinstance(value, str) and fits([value]):
        candidates.append(("put it in a list:", [value]))
    if fits(default):
        candidates.append(("for example", default))
    for text, v in candidates:
        try:
            return f"{text} {written(v)}"
        except TypeError:  # a value TOML cannot write, or not fit to show
            continue
    return "give it the type of its default"


def _literal_or_none(v: Any) -> str | None:
    try:
        return _literal(v)
    except TypeError:
        return None


def _literal(v: Any) -> str:
    """``v`` (a scalar or a list of them) as a one-line TOML literal. Raises TypeError otherwise."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return dumps({"v": v}).partition("=")[2].strip()


# ------------------------------------------------------------------ --set KEY=VALUE


def parse_value(text: str) -> Any:
    """A TOML literal (3, 1e-4, true, "x", [1, 2]); anything else is taken as a bare string. A
    value is one line: it cannot smuggle in other keys."""
    if "\n" in text or "\r" in text:
        raise VaeflowError(f"--set value {text!r} spans several lines; give one value per --set")
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise VaeflowError(f"--set value {text[:40]!r}... is nested too deeply") from None
    if list(parsed) != ["v"] or depth(parsed) > MAX_DEPTH:
        raise VaeflowError(f"--set value {text[:80]!r} is not a single value of a config")
    return parsed["v"]


def apply_override(cfg: dict, item: str) -> None:
    where = f"--set {item}"
    if "=" not in item:
        raise VaeflowError(f"{where}: expected KEY=VALUE, e.g. --set train.vae.epochs=3")
    key, text = item.split("=", 1)
    key = key.strip()
    if key == BASE_KEY:
        raise VaeflowError(f'{where}: {BASE_KEY} names a config file\'s base; it is set in the file (base = "other.toml" at its top), not with --set')
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise VaeflowError(f"{where}: unknown section {'.'.join(parts[: i + 1])!r}{_suggest(part, node if isinstance(node, dict) else {})}")
        node = node[part]
    leaf = parts[-1]
    value = parse_value(text)
    section = ".".join(parts[:-1])
    if is_component(section) or section == "data":
        if leaf == "type" and is_component(section) and value != node.get("type"):
            node.clear()  # a new component type starts from its own defaults
        elif leaf == "name" and section == "data" and value != node.get("name"):
            for k in [k for k in node if k not in ("name", "root")]:
                del node[k]
        node[leaf] = value  # checked against the component's signature by validate()
        return
    if leaf not in node:
        raise VaeflowError(f"{where}: unknown key {key!r}{_suggest(leaf, node)}")
    if isinstance(node[leaf], dict):
        raise VaeflowError(f"{where}: {key!r} is a section; set one of its keys, e.g. {key}.{next(iter(node[leaf]), 'x')}=...")
    node[leaf] = check_type(value, node[leaf], key=key, where=where, constraints=plain_constraints(key))


# ------------------------------------------------------------------ validation against the registry


def factory_defaults(factory, *, skip: tuple[str, ...]) -> dict[str, Any]:
    """Keyword arguments of ``factory`` (minus those vaeflow passes itself) and their defaults;
    ``inspect.Parameter.empty`` marks a required one."""
    params = {}
    for p in inspect.signature(factory).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[p.name] = p.default
    return params


# Arguments that vaeflow itself hands to each kind of factory (see hookspecs).
CONTEXT_ARGS = {
    "encoder": ("image_shape", "latent_dim"),
    "decoder": ("image_shape", "latent_dim"),
    "prior": ("latent_dim",),
    "flow": ("image_shape",),
    "dataset": ("root",),
}


def _source(set_by: dict | None, dotted: str, where: str) -> str:
    """Where the value of the key ``dotted`` came from, for error lines: the ``--set`` that gave it
    or a section above it (``set_by``: dotted key -> "--set KEY=VALUE"), else ``where`` (the file)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        found = (set_by or {}).get(".".join(parts[:i]))
        if found:
            return found
    return where


def _validate_component(section: dict, kind: str, key: str, *, where: str, registry, name_key: str, set_by: dict | None = None) -> dict:
    name = section.get(name_key)
    named_by = _source(set_by, f"{key}.{name_key}", where)
    if not isinstance(name, str):
        raise VaeflowError(f'{named_by}: [{key}] needs {name_key} = "<registered {kind}>"; registered: {", ".join(registry.names(kind))}')
    comp = registry.get(kind, name, where=f"{named_by}: {key}.{name_key}")
    params = factory_defaults(comp.factory, skip=CONTEXT_ARGS[kind])
    fixed = {name_key} | ({"root"} if kind == "dataset" else set())
    out = {k: section[k] for k in section if k in fixed}
    if "root" in out:  # a dataset's folder, given to its factory beside its options
        out["root"] = check_type(out["root"], "", key=f"{key}.root", where=_source(set_by, f"{key}.root", where))
    declared = declared_constraints(comp.factory)
    for k, v in section.items():
        if k in fixed:
            continue
        src = _source(set_by, f"{key}.{k}", where)  # the --set that gave the value, else the file
        if k not in params:
            raise VaeflowError(f"{src}: unknown key '{key}.{k}' for {kind} {name!r}{_suggest(k, params)}")
        default = params[k]
        out[k] = v if default is inspect.Parameter.empty else check_type(v, default, key=f"{key}.{k}", where=src, constraints=declared.get(k, []))
        found = problem(out[k], declared.get(k, []))
        if found:
            fix = f"fix it in [{key}]" if src == where else "fix the --set"  # _source: the file, or the --set that gave it
            raise VaeflowError(f"{src}: '{key}.{k}' {found} for {kind} {name!r}, got {out[k]!r}; {fix}")
    for k, default in params.items():
        if k in out:
            continue
        if default is inspect.Parameter.empty:
            raise VaeflowError(f"{where}: {kind} {name!r} needs '{key}.{k}'; add it to [{key}]")
        out[k] = default
    for k, v in out.items():
        if not _is_toml_value(v):
            raise VaeflowError(f"{where}: '{key}.{k}' = {v!r} cannot be written to TOML; give it a value in the config")
    return out


def component_options(kind: str, name: str, options: dict, *, registry, options_by: dict[str, str]) -> dict:
    """A component's options outside a config file (e.g. ``vaeflow timing``'s ``--glow-*``), checked
    by the same rules as a config section (the factory's keys, types and declared constraints)
    and completed with its defaults. ``options_by``: option key -> the command-line option that
    gave it (named in the error). Raises VaeflowError."""
    set_by = {f"{kind}.{k}": f"{options_by[k]} {v}" for k, v in options.items()}
    out = _validate_component({"type": name, **options}, kind, kind, where="the command line", registry=registry, name_key="type", set_by=set_by)
    return {k: v for k, v in out.items() if k != "type"}


def validate(cfg: dict, *, where: str, registry, set_by: dict | None = None, check_loggers: bool = True) -> dict:
    """``cfg`` checked against the registry (component keys, their types and declared constraints)
    and the plain keys' CONSTRAINTS. Errors name ``where`` (the file), or the ``--set`` that gave
    the value (``set_by``: dotted key -> "--set KEY=VALUE")."""
    out = copy.deepcopy(cfg)
    out["data"] = _validate_component(cfg["data"], "dataset", "data", where=where, registry=registry, name_key="name", set_by=set_by)
    for sec, kind in COMPONENT_SECTIONS.items():
        out["model"][sec] = _validate_component(
            cfg["model"][sec], kind, f"model.{sec}", where=where, registry=registry, name_key="type", set_by=set_by
        )
    _check_plain(out, where, set_by=set_by or {})
    for name in out["run"]["loggers"] if check_loggers else ():  # strings, each once (CONSTRAINTS); each registered
        registry.get("logger", name, where=f"{_source(set_by, 'run.loggers', where)}: run.loggers")
    return out


def _check_plain(cfg: dict, where: str, prefix: str = "", *, set_by: dict) -> None:
    """The declared constraints (CONSTRAINTS) and finiteness of every plain key."""
    for k, v in cfg.items():
        dotted = f"{prefix}{k}"
        if dotted == "data" or is_component(dotted):
            continue
        if isinstance(v, dict):
            _check_plain(v, where, dotted + ".", set_by=set_by)
            continue
        found = problem(v, plain_constraints(dotted))
        if found:
            raise VaeflowError(f"{_source(set_by, dotted, where)}: {dotted!r} {found}, got {v!r}")


def _is_toml_value(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_toml_value(x) for x in v)
    return False


# ------------------------------------------------------------------ writing


def dumps(cfg: dict) -> str:
    """TOML text for a config (nested tables of scalars and lists), written by tomli-w;
    ``tomllib.loads`` inverts it. Raises TypeError for a value TOML cannot hold (None, objects)."""
    import tomli_w

    return tomli_w.dumps(cfg.to_dict() if isinstance(cfg, Config) else cfg)
