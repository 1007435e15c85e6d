"""A run's signature: the parts of its config that fix the model's parameters and the data; a
checkpoint resumes only under a config of the same signature."""

from __future__ import annotations

import copy
import inspect

from vaeflow_cli.config.core import CONTEXT_ARGS, DEFAULTS, factory_defaults
from vaeflow_cli.config.files import COMPONENT_SECTIONS
from vaeflow_cli.errors import VaeflowError

# Plain [model] keys left out of a signature at their schema value, as component keys at their factory's default are
PLAIN_MODEL_DEFAULTS = {k: DEFAULTS["model"][k] for k in ("pixel_transform", "logit_alpha")}


def model_signature(cfg: dict, registry=None) -> dict:
    """The parts of a config that fix the model's parameters and the data (must match to resume).
    Component keys at their factory's default are left out, so that a component gaining a new
    option (with a default) still resumes the checkpoints of its earlier version."""
    return normalize_signature({"data": cfg["data"], "model": cfg["model"]}, registry)


def signature_differences(run: dict, given: dict, limit: int = 3) -> str:
    """Where two model signatures differ, for a message: "model.flow.steps: the run has 2, this
    config 3" per dotted key (at most ``limit`` of them, then how many more), "" when equal. A key
    on one side only is one that the other leaves unset, or at its component's default (which a
    signature leaves out)."""

    def leaves(d, prefix=""):
        if not isinstance(d, dict):
            return {prefix.rstrip("."): d}
        out = {}
        for k, v in d.items():
            out.update(leaves(v, f"{prefix}{k}."))
        return out

    a, b = leaves(run), leaves(given)
    missing = object()
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
    unset = "unset or at its default"
    shown = [
        f"{k}: the run has {a[k]!r}, this config {unset}"
        if k not in b
        else (f"{k}: the run {unset}, this config has {b[k]!r}" if k not in a else f"{k}: the run has {a[k]!r}, this config {b[k]!r}")
        for k in keys[:limit]
    ]
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


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
