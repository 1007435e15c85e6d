"""Config files: reading TOML, the one rule for defaults (a file laid over its base), and the
embedded default. ``core.resolve`` validates what ``file_config`` returns."""

from __future__ import annotations

import copy
import difflib
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from vaeflow_cli.errors import VaeflowError

COMPONENT_SECTIONS = {"encoder": "encoder", "decoder": "decoder", "prior": "prior", "flow": "flow"}
"""The [model.NAME] sections that name a registered component with ``type``, by their kind."""


def is_component(dotted: str) -> bool:
    """Whether the dotted key names a component section (``model.encoder``, ...)."""
    parts = dotted.split(".")
    return len(parts) == 2 and parts[0] == "model" and parts[1] in COMPONENT_SECTIONS


CONFIG_FIX = "pass a TOML file to --config"


def load_toml(path: str | Path, *, fix: str = CONFIG_FIX) -> dict[str, Any]:
    """The TOML file ``path`` as a dict (a UTF-8 byte-order mark at its start is skipped); one
    VaeflowError (ending with ``fix``) when it is missing, a folder, unreadable, not UTF-8 or not
    valid TOML."""
    p = Path(path)
    if p.is_dir():
        raise VaeflowError(f"config file {str(p)!r} is a directory; {fix}")
    if p.exists() and not p.is_file():
        raise VaeflowError(f"config file {str(p)!r} is not a regular file (a FIFO or device would block or never end); {fix}")
    bom = b""
    try:
        with p.open("rb") as fh:
            raw = fh.read()
        bom = b"\xef\xbb\xbf" if raw.startswith(b"\xef\xbb\xbf") else b""  # editors on Windows write one; it is not TOML
        data = tomllib.loads(raw[len(bom) :].decode("utf-8"))
    except RecursionError:
        raise VaeflowError(f"{p}: nested too deeply to be a config; {fix}") from None
    except FileNotFoundError:
        raise VaeflowError(f"config file {str(p)!r} not found; {fix}") from None
    except UnicodeDecodeError as exc:
        raise VaeflowError(f"{p}: not UTF-8 text (byte {exc.start + len(bom)}); a TOML config must be UTF-8: {fix}") from None
    except tomllib.TOMLDecodeError as exc:
        raise VaeflowError(f"{p}: not valid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise VaeflowError(f"config file {str(p)!r} cannot be read ({exc.strerror}); {fix}") from None
    if depth(data) > MAX_DEPTH:
        raise VaeflowError(f"{p}: tables or arrays nested more than {MAX_DEPTH} deep; a config is not; {fix}")
    return data


def config_fix(path: str | Path) -> str:
    """How to fix a --config ``path``: for a file that does not exist, the config of that name
    (``.toml`` added when it has none; else the closest name) in its own folder or in ./configs."""
    p = Path(path)
    if os.path.lexists(p):
        return CONFIG_FIX
    wanted = p.name if p.suffix else p.name + ".toml"
    for folder in dict.fromkeys([p.parent, Path("configs")]):
        try:
            names = sorted(c.name for c in folder.glob("*.toml") if c.is_file())
        except (OSError, ValueError):  # an unreadable folder, a name glob refuses
            continue
        match = wanted if wanted in names else next(iter(difflib.get_close_matches(wanted, names, n=1, cutoff=0.8)), None)
        if match is not None:
            return f"{folder / match} exists: pass --config {folder / match}"
    return CONFIG_FIX


MAX_DEPTH = 16  # a config nests a few tables deep; deeper input is refused before it is copied


def depth(obj) -> int:
    """How deeply ``obj`` nests dicts and lists (iteratively: no recursion limit)."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, d + 1) for v in node)
    return deepest


def embedded_default() -> dict[str, Any]:
    text = resources.files("vaeflow_cli").joinpath("defaults/default.toml").read_text()
    return tomllib.loads(text)


BASE_KEY = "base"  # a file's top-level key naming the config it takes its missing keys from
MAX_BASES = 8  # a chain of bases deeper than this is a mistake (or a loop)


def file_config(path: str | Path, *, fix: str | None = None, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """The config file ``path`` laid over its base, unresolved (the one rule for defaults), and
    the base files it was laid over, nearest first.

    A file takes every key it leaves out from its base: the embedded default (what ``vaeflow
    config show`` prints) unless it names another with a top-level ``base = "other.toml"`` (a path
    relative to the folder of the file, a link followed to the file it names; that file may name
    its own base, up to MAX_BASES deep). The layering is ``overlay``'s. Raises VaeflowError (ending
    with ``fix`` for the file itself) for an unreadable file, a base that is not a string, a
    missing base, or a chain of bases that loops or is too deep."""
    p = Path(path)
    raw = load_toml(p, fix=(fix or config_fix(p)) if not _chain else f"fix the base in {_chain[-1]}")
    named = raw.pop(BASE_KEY, None)
    if named is None:
        return overlay(embedded_default(), raw), ()
    if not isinstance(named, str) or not named or "\x00" in named:
        raise VaeflowError(f'{p}: {BASE_KEY} must name a TOML config file (a path relative to this file), got {named!r}; e.g. base = "cifar10.toml"')
    here = p.resolve()
    target = (here.parent / named).resolve()
    chain = (*_chain, here)
    if target in chain:
        raise VaeflowError(f"{p}: {BASE_KEY} = {named!r} leads back to {target}: the bases form a loop; remove {BASE_KEY} from one of them")
    if len(chain) > MAX_BASES:
        raise VaeflowError(f"{chain[0]}: more than {MAX_BASES} bases in its chain (at {p}); name a base that has none of its own sooner")
    below, bases = file_config(target, _chain=chain)
    return overlay(below, raw), (target, *bases)


def overlay(base: dict, raw: dict, *, prefix: str = "") -> dict:
    """``raw`` laid over ``base`` (both unresolved config dicts) key by key. A component section
    (``[model.encoder]`` ...) or ``[data]`` that names another ``type`` / ``name`` than the base's
    replaces the base's section whole, since options belong to the component that declares them;
    other tables merge recursively and values replace."""
    out = copy.deepcopy(base)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        below = out.get(key)
        if not (isinstance(value, dict) and isinstance(below, dict)):
            out[key] = copy.deepcopy(value)
        elif dotted == "data" or is_component(dotted):
            name_key = "name" if dotted == "data" else "type"
            same = value.get(name_key, below.get(name_key)) == below.get(name_key)
            out[key] = {**below, **copy.deepcopy(value)} if same else copy.deepcopy(value)
        else:
            out[key] = overlay(below, value, prefix=dotted + ".")
    return out
