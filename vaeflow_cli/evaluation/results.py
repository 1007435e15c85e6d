"""The results of ``evaluate`` as numbers and as a file: the per-image distribution of a bound
(``per_image_stats``), and the results an earlier call wrote, merged with a new call's
(``earlier_results``, ``keeping_their_temperature``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaeflow_cli.runtime.phases import PHASES

PHASE_LABELS = {p.label for p in PHASES.values()}  # the models a sample score is given for: vae, full, ...
PER_IMAGE_STATS = ("mean", "median", "p90", "max")


def per_image_stats(bpd: np.ndarray, mean: float | None = None) -> dict:
    """{"mean", "median", "p90", "max"} of per-image bits/dim (float64 (N,), N >= 1), as floats.

    p90 is numpy's default (linear-interpolation) 90th percentile. ``mean`` replaces the computed
    mean when given, so that the reported mean is exactly the headline number (e.g. the ELBO bound
    summed batch by batch), which equals bpd.mean() up to float rounding."""
    bpd = np.asarray(bpd, np.float64)
    return {
        "mean": float(bpd.mean() if mean is None else mean),
        "median": float(np.median(bpd)),
        "p90": float(np.percentile(bpd, 90)),
        "max": float(bpd.max()),
    }


def earlier_results(path: Path) -> dict:
    """The results an earlier ``evaluate`` of the same split wrote (other metrics, say), or {} when
    there are none or the file is not a results object (it is then rewritten)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return earlier if isinstance(earlier, dict) else {}


def keeping_their_temperature(earlier: dict, temperature) -> dict:
    """``earlier`` results to merge with those of a call at ``temperature`` (a number, or a list
    for a sweep), whose "temperature" replaces theirs: a single sample score of theirs at another
    temperature becomes {"T": score}, a sweep's form, so every merged number keeps its own
    temperature (a FID at 0.5 and a digit_fd sweep share one results file and one table)."""
    t = earlier.get("temperature")
    if t == temperature or isinstance(t, bool) or not isinstance(t, (int, float)):
        return earlier
    scores = [k for k in earlier if k == "fid" or (k.startswith(("digit_fd_", "cifar_fd_", "simclr_fd_")) and k.split("_")[-1] in PHASE_LABELS)]
    return {**earlier, **{k: {f"{t:g}": earlier[k]} for k in scores if isinstance(earlier[k], (int, float))}}
