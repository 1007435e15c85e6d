"""The paper's claim, locally, as one command: vaeflow's two-phase model against the standalone
multi-scale Glow baseline, trained for the same wall-clock budget on the same machine.

    python benchmarks/paper_claim.py --out results/paper-claim   # roughly 15-20 min on 2 idle CPU cores

1. vaeflow (the embedded default config, or --vae-config) is trained phase 1 (VAE) then phase 2
   (Glow layer) into OUT/runs/vaeflow through vaeflow_cli.training.loop.train_phase, each phase timed two
   ways: its training seconds (the per-epoch seconds training records in metrics.jsonl: the
   optimizer steps plus the held-out bound at each epoch end, summed) and the wall-clock seconds
   of the whole call (plus data loading, model building, phase 2's starting bound, sample grids).
2. The budget is vaeflow's total training seconds (or --budget-seconds). The standalone Glow
   (configs/glow-mnist.toml, or --glow-config) is trained into OUT/runs/glow one epoch at a time
   (train.baseline.epochs = e, resumed, for e = 1, 2, ...) until its cumulative training seconds
   reach the budget: it never gets less time than vaeflow (at most one epoch more). Training
   seconds are the default measure because each resumed call repeats the start-up, which a single
   run would pay once; --budget-measure wall counts whole calls instead. The learning-rate schedule
   is a function of the epoch and step only, so this is the same training as one run of that many
   epochs.
3. Both runs are scored with vaeflow_cli.evaluation.evaluate.evaluate_run on the same 500 held-out digits:
   vaeflow's bounds in bits/dim (single-sample ELBO and IWAE_K, upper bounds) for the phase-1 model
   and the full model, the Glow's exact bits/dim, and digit_fd (Frechet distance in a small digit
   CNN's features, NOT FID) of --n-samples samples at each temperature, with the same classifier
   file, reference images, seed and sample count for every model. The best temperature per model
   is the one with the lowest digit_fd. ``--sample-metric none`` (for colour images, where no
   digit classifier applies) scores bits/dim only and draws the figure at the first temperature.
4. Writes OUT/paper_claim.json, OUT/paper_claim.md (the table, the digit_fd per temperature, the
   machine) and OUT/paper_claim.png (sample grids side by side at each model's best temperature),
   prints the JSON and Markdown paths on stdout; progress goes to stderr.

Torch's CPU thread count is set explicitly (--threads, default: this process's usable cores) for
training and evaluation of both models, and recorded. --vae-set/--glow-set KEY=VALUE (repeatable)
override either config like `vaeflow --set`. Exit status 2 with one line on stderr for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.console import log
from vaeflow_cli.errors import VaeflowError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GLOW_CONFIG = ROOT / "configs" / "glow-mnist.toml"
DEFAULT_TEMPERATURES = "0.5,0.7,0.85,1.0"
CLASSIFIER_FILE = Path("eval") / "digit-cnn.pt"  # where evaluate_run caches the digit classifier

MODELS = {  # row key -> label
    "vaeflow_vae": "vaeflow, VAE alone (phase 1)",
    "vaeflow_full": "vaeflow, two-phase (VAE + Glow layer)",
    "glow": "standalone multi-scale Glow",
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (runs/, paper_claim.json|.md|.png)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for everything (default: usable cores)")
    ap.add_argument(
        "--budget-seconds", type=float, default=None, help="the Glow's training budget in seconds (default: vaeflow's measured two-phase total)"
    )
    ap.add_argument("--vae-config", type=Path, default=None, help="vaeflow's config (default: the embedded default)")
    ap.add_argument("--glow-config", type=Path, default=DEFAULT_GLOW_CONFIG, help="the standalone Glow's config")
    ap.add_argument("--vae-set", action="append", default=[], metavar="KEY=VALUE", help="override vaeflow's config (repeatable)")
    ap.add_argument("--glow-set", action="append", default=[], metavar="KEY=VALUE", help="override the Glow's config (repeatable)")
    ap.add_argument("--temperatures", default=DEFAULT_TEMPERATURES, help="sampling temperatures scored by digit_fd")
    ap.add_argument(
        "--sample-metric",
        choices=("digit_fd", "none"),
        default="digit_fd",
        help="sample quality score: digit_fd (digits only) or none (bits/dim only; the figure at the first temperature)",
    )
    ap.add_argument("--n-samples", type=int, default=2000, help="samples per model and temperature for digit_fd")
    ap.add_argument("--iwae-k", type=int, default=64, help="importance samples of vaeflow's IWAE bound")
    ap.add_argument("--grid-n", type=int, default=64, help="samples per model in the figure")
    ap.add_argument("--device", default="cpu", help="training and evaluation device for both models (default: cpu)")
    ap.add_argument(
        "--budget-measure",
        choices=("epochs", "wall"),
        default="epochs",
        help="what the budget counts: 'epochs' (default), the per-epoch seconds training records "
        "(steps + held-out bound), summed; 'wall', whole train_phase calls (start-up included, "
        "which the Glow, trained one epoch per call, pays at every epoch)",
    )
    ap.add_argument("--max-glow-epochs", type=int, default=None, help="stop the Glow at this many epochs even within budget")
    ap.add_argument(
        "--digit-classifier",
        type=Path,
        default=None,
        help="a cached digit-classifier file (evaluate's RUN/eval/digit-cnn.pt) to use instead of training one",
    )
    return ap.parse_args(argv)


# ------------------------------------------------------------------ helpers


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts(threads: int, device: str) -> dict:
    from vaeflow_cli.training.step import usable_cores

    facts = {
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vaeflow": _version("vaeflow"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def temperature_scores(value, temperatures) -> dict[str, float]:
    """evaluate_run's digit_fd value (a number for one temperature, else {"T": number}) as a dict."""
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    return {f"{temperatures[0]:g}": float(value)}


def best_temperature(scores: dict[str, float]) -> tuple[float | None, float | None]:
    """(T, digit_fd) with the lowest finite digit_fd; (None, None) when none is finite."""
    finite = {t: v for t, v in scores.items() if math.isfinite(v)}
    if not finite:
        return None, None
    t = min(finite, key=finite.get)
    return float(t), finite[t]


def epoch_seconds(run: Path, phase: str) -> float:
    """Sum of the per-epoch seconds (training steps + held-out bound) that training recorded."""
    from vaeflow_cli.training.runs import RunDir

    return round(sum(r.get("seconds", 0.0) for r in RunDir(run).read_metrics() if r["phase"] == phase), 3)


def seconds_per_epoch(run: Path, phase: str) -> float | None:
    """Median recorded seconds of the phase's epochs (the Table 4 analogue)."""
    from vaeflow_cli.training.runs import RunDir

    seconds = [r["seconds"] for r in RunDir(run).read_metrics() if r["phase"] == phase and r.get("seconds")]
    return round(float(np.median(seconds)), 3) if seconds else None


def n_parameters(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _fmt(x, spec: str = ".3f", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _fd(x) -> str:
    """A digit_fd value: one decimal, or three significant digits below 10."""
    return _fmt(x, ".1f" if x is None or not math.isfinite(x) or abs(x) >= 10 else ".3g")


# ------------------------------------------------------------------ training


def train_vaeflow(cfg: dict, run: Path) -> dict:
    from vaeflow_cli.training.loop import train_phase

    out = {}
    for phase in ("vae", "glow"):
        log(f"paper_claim: vaeflow {phase} phase ({cfg['train'][phase]['epochs']} epochs) into {run}")
        t0 = time.perf_counter()
        result = train_phase(cfg, run, phase)
        seconds = time.perf_counter() - t0
        out[phase] = {
            "seconds": round(seconds, 3),
            "epoch_seconds": epoch_seconds(run, phase),
            "epochs": result.epochs,
            "last_epoch_bpd": result.test_bpd,
        }
        log(f"paper_claim: vaeflow {phase} phase took {seconds:.1f} s")
    return out


def train_glow_for(resolve_glow, run: Path, budget: float, max_epochs: int | None, measure: str) -> dict:
    """Epoch by epoch (train.baseline.epochs = e, resumed) until the cumulative seconds, counted
    as ``measure`` says ("epochs": recorded per-epoch seconds; "wall": whole calls), reach ``budget``."""
    from vaeflow_cli.training.loop import train_phase

    wall, spent, epochs, per_call = 0.0, 0.0, 0, []
    while epochs < 1 or (spent < budget and (max_epochs is None or epochs < max_epochs)):
        epochs += 1
        cfg = resolve_glow(epochs)
        t0 = time.perf_counter()
        train_phase(cfg, run, "baseline", resume=True)
        dt = time.perf_counter() - t0
        wall += dt
        per_call.append(round(dt, 3))
        spent = wall if measure == "wall" else epoch_seconds(run, "baseline")
        log(f"paper_claim: Glow epoch {epochs}: {dt:.1f} s wall-clock; {spent:.1f} of {budget:.1f} s budget ({measure})")
    return {
        "seconds": round(wall, 3),
        "epoch_seconds": epoch_seconds(run, "baseline"),
        "epochs": epochs,
        "seconds_per_call": per_call,
        "stopped_by": "budget" if spent >= budget else "max_glow_epochs",
    }


# ------------------------------------------------------------------ evaluation


def heldout_sha(cfg: dict) -> str:
    import hashlib

    from vaeflow_cli.data.pipeline import load_split

    return hashlib.sha256(np.ascontiguousarray(load_split(cfg, "test")).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------ outputs


def sample_figure(path: Path, panels: list[tuple[str, np.ndarray]]) -> Path:
    """Grids (uint8 (H, W, C)) side by side, each titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.8))
    for ax, (title, g) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(g[:, :, 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(r: dict) -> str:
    k = r["settings"]["iwae_k"]
    m = r["machine"]
    lines = [
        "# The paper's claim on this machine: vaeflow vs. a standalone Glow, same wall-clock budget",
        "",
        f"Held-out split: {r['settings']['heldout_images']} images. Bits/dim: vaeflow's are upper bounds "
        f'("<=": single-sample ELBO and IWAE_{k}); the Glow\'s is exact. '
        + (
            f"digit_fd: Frechet distance in the "
            f"features of a small digit CNN (held-out accuracy {_fmt(r['digit_fd_classifier_accuracy'])}), "
            f"{r['settings']['n_samples']} samples per temperature, the lowest over T = "
            f"{', '.join(f'{t:g}' for t in r['settings']['temperatures'])}; it is not FID. "
            if r["settings"].get("sample_metric", "digit_fd") == "digit_fd"
            else f"No sample-quality score (--sample-metric none); the figure's samples are at T = {r['settings']['temperatures'][0]:g}. "
        )
        + f"Budget: {r['budget']['seconds']:.1f} s ({r['budget']['source']}).",
        "",
        f"| model | parameters | ELBO bpd | IWAE_{k} bpd | exact bpd | digit_fd (best T) | best T | training s | wall-clock s | epochs |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in r["rows"]:

        def bound(key, row=row):
            return "" if row.get(key) is None else f"<= {row[key]:.4f}"

        exact = "" if row.get("bpd_exact") is None else f"{row['bpd_exact']:.4f}"

        def seconds(total, per_phase):
            if len(per_phase) > 1:
                return " + ".join(f"{v:.1f} ({p})" for p, v in per_phase.items()) + f" = {total:.1f}"
            return f"{total:.1f}"

        epochs = row["epochs"]
        epochs_text = " + ".join(f"{v} ({p})" for p, v in epochs.items()) if isinstance(epochs, dict) else str(epochs)
        lines.append(
            f"| {row['label']} | {row['parameters']:,} | {bound('bpd_elbo')} | {bound('bpd_iwae')} | {exact} | "
            f"{_fd(row['digit_fd_best'])} | {_fmt(row['best_temperature'], 'g')} | "
            f"{seconds(row['train_seconds'], row['train_seconds_per_phase'])} | "
            f"{seconds(row['wall_seconds'], row['wall_seconds_per_phase'])} | {epochs_text} |"
        )
    temps = [f"{t:g}" for t in r["settings"]["temperatures"]]
    if any(row["digit_fd"] for row in r["rows"]):
        lines += [
            "",
            "digit_fd per temperature (lower is better):",
            "",
            "| model | " + " | ".join(f"T = {t}" for t in temps) + " |",
            "|---|" + "---:|" * len(temps),
        ]
        for row in r["rows"]:
            lines.append(f"| {row['label']} | " + " | ".join(_fd(row["digit_fd"].get(t)) for t in temps) + " |")
    lines += ["", "Per-image bits/dim (median / p90) and seconds per epoch (median over epochs, the Table 4 analogue):", ""]
    lines += ["| model | per-image bpd: median / p90 | s per epoch |", "|---|---|---|"]
    for row in r["rows"]:
        cells = ", ".join(
            f"{kind} {_fmt(st.get('median'), '.3f')} / {_fmt(st.get('p90'), '.3f')}" for kind, st in row.get("per_image", {}).items() if st
        )
        secs = ", ".join(f"{p} {_fmt(v, '.1f')}" for p, v in row.get("seconds_per_epoch", {}).items())
        lines.append(f"| {row['label']} | {cells} | {secs} |")
    for name, st in (r.get("yardstick_per_image") or {}).items():
        if st:
            lines.append(f"| {name} yardstick | {_fmt(st.get('median'), '.3f')} / {_fmt(st.get('p90'), '.3f')} | |")
    hist = r.get("bpd_histogram")
    lines += [
        "",
        f"Per-pixel histogram baseline (exact, fitted on the training split): {_fmt(hist, '.4f')} bpd. "
        f"PNG files of the held-out images (lossless codec, Pillow optimize): {_fmt(r.get('bpd_png'), '.4f')} bpd.",
        "Training s: the seconds training records per epoch (optimizer steps plus the held-out bound at the "
        "epoch end), summed per phase. Wall-clock s: the whole training calls (data loading, model building, "
        "phase 2's starting bound, sample grids too); the Glow, trained one epoch per call, pays that start-up "
        f"at every epoch. The budget counts {'wall-clock' if r['budget']['measure'] == 'wall' else 'training'} s; "
        "the Glow trains one more epoch until its total reaches it (so it never gets less time than vaeflow).",
        "",
        f"Machine: {m['usable_cores']} usable cores ({m['cpu_count']} CPUs); torch {m['torch']}, "
        f"threads = {m['threads']} (training and evaluation); device {m['device']}, {m['platform']}; load average at start "
        f"{r['load_average']['start']}, at end {r['load_average']['end']}.",
        "",
        f"Samples: {Path(r['figure']).name}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def main(argv=None) -> dict:
    args = parse_args(argv)
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.images import grid, png_bytes
    from vaeflow_cli.evaluation.evaluate import evaluate_run, generate, parse_temperatures
    from vaeflow_cli.files import atomic_write_bytes
    from vaeflow_cli.training.step import set_threads, usable_cores

    temperatures = parse_temperatures(args.temperatures, "--temperatures")
    if args.n_samples < 2 or args.iwae_k < 1 or args.grid_n < 1:
        raise VaeflowError("--n-samples must be at least 2, --iwae-k and --grid-n at least 1")
    threads = args.threads if args.threads is not None else usable_cores()
    if threads < 1:
        raise VaeflowError(f"--threads must be at least 1, got {threads}")
    set_threads(threads)
    load_start = load_average()
    out = args.out
    vae_run, glow_run = out / "runs" / "vaeflow", out / "runs" / "glow"
    for run in (vae_run, glow_run):
        if (run / "checkpoints").exists():
            raise VaeflowError(f"{run} already has checkpoints; choose a new --out")
    forced = [f"train.threads={threads}", f"train.device='{args.device}'"]
    vae_cfg = config_mod.resolve(args.vae_config, [*args.vae_set, *forced])
    vae_cfg["run"]["dir"] = str(vae_run)

    def resolve_glow(epochs: int) -> dict:
        cfg = config_mod.resolve(args.glow_config, [*args.glow_set, *forced, f"train.baseline.epochs={epochs}"])
        cfg["run"]["dir"] = str(glow_run)
        return cfg

    glow_cfg = resolve_glow(1)  # fail on a bad Glow config before training anything
    same_heldout = heldout_sha(vae_cfg) == heldout_sha(glow_cfg)
    if not same_heldout:
        log("paper_claim: warning: the two configs' held-out splits differ; the bits/dim are not comparable")

    t_start = time.perf_counter()
    vae_train = train_vaeflow(vae_cfg, vae_run)
    key = "seconds" if args.budget_measure == "wall" else "epoch_seconds"  # what the budget counts
    for d in vae_train.values():
        d["train_seconds"] = d[key]
    vae_total = vae_train["vae"][key] + vae_train["glow"][key]
    vae_wall = vae_train["vae"]["seconds"] + vae_train["glow"]["seconds"]
    budget = args.budget_seconds if args.budget_seconds is not None else vae_total
    source = "--budget-seconds" if args.budget_seconds is not None else "vaeflow's measured two-phase training time"
    log(f"paper_claim: standalone Glow budget {budget:.1f} s ({source}; counted as {args.budget_measure})")
    glow_train = train_glow_for(resolve_glow, glow_run, budget, args.max_glow_epochs, args.budget_measure)
    glow_train["train_seconds"] = glow_train[key]

    seed = vae_cfg["train"]["seed"]
    eval_device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.digit_classifier is not None:
        (vae_run / CLASSIFIER_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.digit_classifier, vae_run / CLASSIFIER_FILE)
    fd_metrics = ["digit_fd"] if args.sample_metric == "digit_fd" else []
    log(f"paper_claim: evaluating vaeflow ({', '.join(['bpd', 'iwae', *fd_metrics])})")
    ev_vae = evaluate_run(
        vae_run,
        metrics=["bpd", "iwae", *fd_metrics],
        iwae_k=args.iwae_k,
        n_samples=args.n_samples,
        temperatures=temperatures,
        device=eval_device,
        seed=seed,
    )
    if fd_metrics:  # the same classifier file for the Glow (evaluate_run would otherwise train its own copy)
        (glow_run / CLASSIFIER_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vae_run / CLASSIFIER_FILE, glow_run / CLASSIFIER_FILE)
    log(f"paper_claim: evaluating the standalone Glow ({', '.join(['bpd', *fd_metrics])})")
    ev_glow = evaluate_run(glow_run, metrics=["bpd", *fd_metrics], n_samples=args.n_samples, temperatures=temperatures, device=eval_device, seed=seed)
    glow_fd = temperature_scores(ev_glow["digit_fd_baseline"], temperatures) if fd_metrics else {}

    full_model = load_run(vae_run, device=eval_device, checkpoint="glow").model
    glow_model = load_run(glow_run, device=eval_device, checkpoint="baseline").model
    vae_params = sum(n_parameters(getattr(full_model, m)) for m in ("encoder", "decoder", "prior"))
    vae_fd = temperature_scores(ev_vae["digit_fd_vae"], temperatures) if fd_metrics else {}
    full_fd = temperature_scores(ev_vae["digit_fd_full"], temperatures) if fd_metrics else {}
    rows = []
    for key, fd, extra in (
        (
            "vaeflow_vae",
            vae_fd,
            {
                "bpd_elbo": ev_vae["bpd_elbo_vae"],
                "bpd_iwae": ev_vae["bpd_iwae_vae"],
                "bpd_exact": None,
                "per_image": {"ELBO": ev_vae["bpd_elbo_vae_per_image"], f"IWAE_{args.iwae_k}": ev_vae["bpd_iwae_vae_per_image"]},
                "seconds_per_epoch": {"phase 1": seconds_per_epoch(vae_run, "vae")},
                "parameters": vae_params,
                "train_seconds": vae_train["vae"]["train_seconds"],
                "train_seconds_per_phase": {"phase 1": vae_train["vae"]["train_seconds"]},
                "wall_seconds": vae_train["vae"]["seconds"],
                "wall_seconds_per_phase": {"phase 1": vae_train["vae"]["seconds"]},
                "epochs": vae_train["vae"]["epochs"],
            },
        ),
        (
            "vaeflow_full",
            full_fd,
            {
                "bpd_elbo": ev_vae["bpd_elbo_full"],
                "bpd_iwae": ev_vae["bpd_iwae_full"],
                "bpd_exact": None,
                "per_image": {"ELBO": ev_vae["bpd_elbo_full_per_image"], f"IWAE_{args.iwae_k}": ev_vae["bpd_iwae_full_per_image"]},
                "seconds_per_epoch": {"phase 1": seconds_per_epoch(vae_run, "vae"), "phase 2": seconds_per_epoch(vae_run, "glow")},
                "parameters": n_parameters(full_model),
                "train_seconds": round(vae_total, 3),
                "train_seconds_per_phase": {"phase 1": vae_train["vae"]["train_seconds"], "phase 2": vae_train["glow"]["train_seconds"]},
                "wall_seconds": round(vae_wall, 3),
                "wall_seconds_per_phase": {"phase 1": vae_train["vae"]["seconds"], "phase 2": vae_train["glow"]["seconds"]},
                "epochs": {"phase 1": vae_train["vae"]["epochs"], "phase 2": vae_train["glow"]["epochs"]},
            },
        ),
        (
            "glow",
            glow_fd,
            {
                "bpd_elbo": None,
                "bpd_iwae": None,
                "bpd_exact": ev_glow["bpd_baseline"],
                "per_image": {"exact": ev_glow["bpd_baseline_per_image"]},
                "seconds_per_epoch": {"baseline": seconds_per_epoch(glow_run, "baseline")},
                "parameters": n_parameters(glow_model),
                "train_seconds": glow_train["train_seconds"],
                "train_seconds_per_phase": {"baseline": glow_train["train_seconds"]},
                "wall_seconds": glow_train["seconds"],
                "wall_seconds_per_phase": {"baseline": glow_train["seconds"]},
                "epochs": glow_train["epochs"],
            },
        ),
    ):
        t, v = best_temperature(fd)
        rows.append(
            {
                "model": key,
                "label": MODELS[key],
                **extra,
                "bpd_kind": "exact" if key == "glow" else "upper bound",
                "digit_fd": fd,
                "best_temperature": t,
                "digit_fd_best": v,
            }
        )

    # the figure: the two full models at their best temperatures, the same number of samples each
    panels = []
    for key, model, what in (("vaeflow_full", full_model, "vaeflow (VAE + Glow layer)"), ("glow", glow_model, "standalone Glow")):
        row = next(r for r in rows if r["model"] == key)
        t = row["best_temperature"] if row["best_temperature"] is not None else temperatures[0]
        images = generate(model, args.grid_n, temperature=t, seed=seed)
        g = grid(images)
        atomic_write_bytes(out / f"samples-{key}.png", png_bytes(g))
        bpd = f"bpd <= {row['bpd_elbo']:.3f}" if row["bpd_exact"] is None else f"bpd = {row['bpd_exact']:.3f}"
        fd = f"digit_fd {_fd(row['digit_fd_best'])}, " if fd_metrics else ""
        panels.append((f"{what}, T = {t:g}\n{fd}{bpd}, {row['train_seconds']:.0f} s training", g))
    figure = sample_figure(out / "paper_claim.png", panels)

    result = {
        "machine": machine_facts(threads, args.device),
        "load_average": {"start": load_start, "end": load_average()},
        "settings": {
            "vae_config": str(args.vae_config) if args.vae_config else config_mod.DEFAULT_CONFIG_NAME,
            "glow_config": str(args.glow_config),
            "vae_set": args.vae_set,
            "glow_set": args.glow_set,
            "temperatures": temperatures,
            "sample_metric": args.sample_metric,
            "n_samples": args.n_samples,
            "iwae_k": args.iwae_k,
            "grid_n": args.grid_n,
            "eval_seed": seed,
            "heldout_images": ev_vae["images"],
            "same_heldout_images": same_heldout,
            "max_glow_epochs": args.max_glow_epochs,
        },
        "budget": {
            "seconds": round(budget, 3),
            "source": source,
            "measure": args.budget_measure,
            "vaeflow_seconds": round(vae_total, 3),
            "glow_seconds": glow_train["train_seconds"],
            "vaeflow_wall_seconds": round(vae_wall, 3),
            "glow_wall_seconds": glow_train["seconds"],
            "glow_stopped_by": glow_train["stopped_by"],
            "glow_wall_seconds_per_epoch_call": glow_train["seconds_per_call"],
        },
        "rows": rows,
        "digit_fd_classifier_accuracy": ev_vae.get("digit_fd_classifier_accuracy"),
        "bpd_histogram": ev_vae.get("bpd_histogram"),
        "bpd_png": ev_vae.get("bpd_png"),
        "yardstick_per_image": {"histogram": ev_vae.get("bpd_histogram_per_image"), "PNG": ev_vae.get("bpd_png_per_image")},
        "runs": {"vaeflow": str(vae_run), "glow": str(glow_run)},
        "evaluations": {"vaeflow": str(vae_run / "eval" / "evaluate-test.json"), "glow": str(glow_run / "eval" / "evaluate-test.json")},
        "figure": str(figure),
        "total_seconds": round(time.perf_counter() - t_start, 3),
    }
    json_path, md_path = out / "paper_claim.json", out / "paper_claim.md"
    result["json"], result["markdown"] = str(json_path), str(md_path)
    atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(md_path, markdown(result).encode())
    print(json_path, flush=True)
    print(md_path, flush=True)
    return result


def cli() -> int:
    try:
        main()
    except VaeflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
