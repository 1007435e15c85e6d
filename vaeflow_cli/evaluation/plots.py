"""Plots (matplotlib, Agg backend; PNG unless asked otherwise): training curves and a sample
score against temperature."""

from __future__ import annotations

import io
import math
from pathlib import Path

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.files import atomic_write_bytes
from vaeflow_cli.runtime.runs import RunDir


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(*args, **kwargs)


PLOT_FORMATS = ("png", "svg", "pdf")  # the formats a plot is written in, chosen by its file's extension


def _render(plt, fig, fmt: str) -> bytes:
    """``fig``'s bytes in ``fmt`` (one of PLOT_FORMATS, PNG otherwise); the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=fmt if fmt in PLOT_FORMATS else "png")
    plt.close(fig)
    return buf.getvalue()


def _save(plt, fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its extension names (PNG otherwise)."""
    atomic_write_bytes(path, _render(plt, fig, path.suffix.lower().lstrip(".")))
    return path


def training_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Training loss and held-out bound (bits/dim) per epoch for every phase in RUN/metrics.jsonl,
    the phases one after another on the x axis: RUN/training-curves.png by default (``out``: PNG,
    SVG or PDF by its extension). Every epoch is a marker, so a one-epoch phase shows; the epochs
    are whole numbers on the axis."""
    plt, fig, rd = _training_curves_figure(run)
    return _save(plt, fig, Path(out) if out else rd.path / "training-curves.png")


def training_curves_bytes(run: str | Path, fmt: str = "png") -> bytes:
    """``training_curves``' plot as bytes in ``fmt`` (png, svg or pdf), written nowhere
    (``vaeflow plot --out -``)."""
    plt, fig, _ = _training_curves_figure(run)
    return _render(plt, fig, fmt)


def _training_curves_figure(run: str | Path):
    """(plt, the training curves' figure, the RunDir); see ``training_curves``."""
    rd = RunDir(run)
    records = [r for r in rd.read_metrics() if "test_bpd" in r] if rd.metrics_path.exists() else []
    if not records:
        raise VaeflowError(f"{rd.path} has no metrics yet (metrics.jsonl); train it first")
    plt, fig, ax = _figure(figsize=(7, 4), dpi=120)
    offset, order = 0, []
    for r in records:
        if r["phase"] not in order:
            order.append(r["phase"])
    for phase in order:
        rows = [r for r in records if r["phase"] == phase]
        xs = [offset + r["epoch"] for r in rows]
        train = [(x, r["train_bpd"]) for x, r in zip(xs, rows, strict=True) if "train_bpd" in r]
        if train:
            ax.plot(*zip(*train, strict=True), "s-", ms=3, label=f"{phase}: training loss")
        ax.plot(xs, [r["test_bpd"] if r["test_bpd"] is not None else math.nan for r in rows], "o-", ms=3, label=f"{phase}: held-out bound")
        offset = max(xs)
        ax.axvline(offset, color="grey", lw=0.5)
    values = [v for r in records for v in (r.get("test_bpd"), r.get("train_bpd")) if isinstance(v, (int, float)) and math.isfinite(v)]
    # Every value is shown: nothing is clipped. When early epochs or a held-out spike (127 bpd, say)
    # are far above the rest, a log axis keeps both them and the converged values readable.
    log_axis = bool(values) and min(values) > 0 and max(values) / min(values) > 2
    if log_axis:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (phases one after another)")
    ax.set_ylabel("bits/dim (upper bound)" + (", log scale" if log_axis else ""))
    ax.set_title(f"{rd.path.name}: training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return plt, fig, rd


def temperature_sweep(path: Path, metric: str, scores: dict[str, dict[float, float]], n: int) -> Path:
    """A sample score (``fid``, ``digit_fd``, ``cifar_fd``) against temperature, one line per model
    (``scores``: {model label: {T: score}})."""
    plt, fig, ax = _figure(figsize=(5, 3.5), dpi=120)
    for label, by_t in scores.items():
        temps = sorted(by_t)
        ax.plot(temps, [by_t[t] for t in temps], "o-", label=f"{label} model")
    name = "FID" if metric == "fid" else metric
    ax.set_xlabel("temperature T")
    ax.set_ylabel(name)
    ax.set_title(f"{name} against temperature ({n} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _histogram_range(sets: list, in_index: int) -> tuple[float, float]:
    """The x range of a score's histograms: from the smallest value to the largest, except that
    a set far outside the in-distribution set's spread (uniform noise can score 1e12 bits/dim)
    does not squash every other histogram into one bin: the range ends at the in-distribution
    set's 99th percentile plus 5 times its spread (p99 - p1), and larger values are drawn in the
    last bin."""
    import numpy as np

    everything = np.concatenate(sets) if sets else np.zeros(0)
    if not len(everything):
        return 0.0, 0.0
    lo, hi = float(everything.min()), float(everything.max())
    ref = sets[in_index] if len(sets[in_index]) else everything
    p1, p99 = np.percentile(ref, [1, 99])
    cap = float(p99 + 5 * max(p99 - p1, 1e-9))
    return lo, min(hi, cap)


def score_histograms(path, values: dict[str, dict[str, object]], titles: dict[str, str], in_label: str) -> Path:
    """``vaeflow ood``'s figure: one panel per score, a histogram of each set's values in it (the
    in-distribution set ``in_label`` filled, the others outlined), on shared bins, so that their
    overlap shows. ``values``: {set label: {score name: 1-D array}}; ``titles``: {score name: panel title}."""
    import numpy as np

    names = [n for n in titles if n in next(iter(values.values()))]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    plt, fig, axes = _figure(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=110, squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        finite = [np.asarray(v[name], np.float64)[np.isfinite(v[name])] for v in values.values()]
        lo, hi = _histogram_range(finite, list(values).index(in_label) if in_label in values else 0)
        bins = np.linspace(lo, hi, 41) if hi > lo else 10
        clipped = any(len(d) and d.max() > hi for d in finite)
        for (label, _), data in zip(values.items(), finite, strict=True):
            if not len(data):  # no value of this set for this score (fewer images than a typicality batch): nothing to draw
                continue
            data = np.clip(data, lo, hi) if hi > lo else data  # far outliers pile up in the last bin (said on the axis)
            short = label if len(label) <= 40 else "..." + label[-37:]
            if label == in_label:
                ax.hist(data, bins=bins, density=True, alpha=0.45, label=f"in: {short} ({len(data)})")
            else:
                ax.hist(data, bins=bins, density=True, histtype="step", lw=1.4, label=f"{short} ({len(data)})")
        ax.set_title(titles[name], fontsize=9)
        ax.set_xlabel(
            "bits/dim"
            + (" (|batch mean - reference|)" if name == "typicality" else "")
            + (f"; the last bin holds all values above {hi:.3g}" if clipped else ""),
            fontsize=8,
        )
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("density")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, Path(path))
