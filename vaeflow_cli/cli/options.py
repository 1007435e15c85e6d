"""The options that several commands share: their help texts, said once, and the parsing of
their comma-separated values (``--metrics``, ``--temperature`` / ``--temperatures``: ``evaluate``,
``sample`` and the benchmarks). No torch here."""

from __future__ import annotations

import math

from vaeflow_cli.config.limits import TEMPERATURE_MAX, temperature_list
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation.metrics import METRICS

RUN_HELP = "Trained run directory (default: the embedded config's, runs/default)."
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N."
JSON_HELP = "Print one JSON object instead of the table."


def parse_metrics(text: str) -> list[str]:
    """``--metrics a,b``: the names, each one of ``METRICS``."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise VaeflowError(f"--metrics {text!r}: choose from {', '.join(METRICS)} (comma-separated)")
    return names


def parse_number(text: str, low: float, high: float) -> float:
    """A number option's text (``--temperature``, ``--max-seconds``) as a float in [low, high], or one
    VaeflowError that echoes the text as the user gave it: ``'abc' is not a number``, ``1e400 is not
    a finite number in [0, 100]`` (float() reads 1e400 as inf), ``-1 is not in [0, 100]``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise VaeflowError(f"{text!r} is not a number") from None
    bounds = f"[{low:g}, {high:g}]".replace("e+", "e").replace("e0", "e")
    if not math.isfinite(value):
        raise VaeflowError(f"{text} is not a finite number in {bounds}")
    if not low <= value <= high:
        raise VaeflowError(f"{text} is not in {bounds}")
    return value


def parse_temperatures(text: str, option: str = "--temperature") -> list[float]:
    """A temperature, or a comma-separated list of them (``option`` names the option in errors),
    as checked floats (``limits.temperature_list``)."""
    if any(not t.strip() for t in text.split(",")):
        raise VaeflowError(f"{option} {text!r} has an empty item; give numbers separated by single commas, e.g. 0,0.25,0.5")
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise VaeflowError(f"{option} {text!r} must be a number or a comma-separated list, e.g. 0,0.25,0.5") from None
    try:
        return temperature_list(values)
    except VaeflowError:
        raise VaeflowError(f"{option} {text!r}: give one or more finite numbers in [0, {TEMPERATURE_MAX:g}]") from None
