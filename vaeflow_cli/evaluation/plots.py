"""PNG plots (matplotlib, Agg backend): training curves and the FID-against-temperature sweep."""

from __future__ import annotations

import io
import math
from pathlib import Path

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.files import atomic_write_bytes
from vaeflow_cli.training.runs import RunDir


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(*args, **kwargs)


def _save(plt, fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def training_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Training loss and held-out bound (bits/dim) per epoch for every phase in RUN/metrics.jsonl,
    the phases one after another on the x axis: RUN/training-curves.png by default."""
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
            ax.plot(*zip(*train, strict=True), "-", label=f"{phase}: training loss")
        ax.plot(xs, [r["test_bpd"] if r["test_bpd"] is not None else math.nan for r in rows], "o-", ms=3, label=f"{phase}: held-out bound")
        offset = max(xs)
        ax.axvline(offset, color="grey", lw=0.5)
    values = [v for r in records for v in (r.get("test_bpd"), r.get("train_bpd")) if isinstance(v, (int, float)) and math.isfinite(v)]
    # Every value is shown: nothing is clipped. When early epochs or a held-out spike (127 bpd, say)
    # are far above the rest, a log axis keeps both them and the converged values readable.
    log_axis = bool(values) and min(values) > 0 and max(values) / min(values) > 2
    if log_axis:
        ax.set_yscale("log")
    ax.set_xlabel("epoch (phases one after another)")
    ax.set_ylabel("bits/dim (upper bound)" + (", log scale" if log_axis else ""))
    ax.set_title(f"{rd.path.name}: training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, Path(out) if out else rd.path / "training-curves.png")


def fid_sweep(path: Path, scores: dict[float, float], model: str, n: int) -> Path:
    """FID against temperature."""
    plt, fig, ax = _figure(figsize=(5, 3.5), dpi=120)
    temps = sorted(scores)
    ax.plot(temps, [scores[t] for t in temps], "o-")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("FID")
    ax.set_title(f"FID against temperature ({model} model, {n} samples)")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)
