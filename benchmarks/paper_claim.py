"""The paper's claim, locally, as one command: vaeflow's two-phase model against the standalone
multi-scale Glow baseline, trained for the same training time on the same machine, at one budget
or several.

    python benchmarks/paper_claim.py --out results/paper-claim      # the embedded digits (docs/reproduce.md has its time)
    python benchmarks/paper_claim.py --out OUT --vae-config configs/cifar10-cpu.toml \\
        --glow-config configs/glow-cifar10-cpu.toml --budgets 600,1200,2400 --side-by-side --threads 1 \\
        --sample-metric cifar_fd --vae-set "data.root='/tmp/data/train'" --glow-set "data.root='/tmp/data/train'"

Training (vaeflow_cli.training.loop.train_phase; a budget counts seconds of the training loop:
its steps and each epoch end's held-out bound, checkpoint and sample grid, not the start-up):

1. vaeflow (the embedded default config, or --vae-config) trains phase 1 (the VAE) to its
   configured end into OUT/runs/vaeflow; its seconds count toward every budget. Then phase 2 (the
   flow decoder) trains in stops: at each budget B of --budgets it stops at the first step boundary
   after B seconds in all (``max_seconds`` = B - the seconds spent so far), and the checkpoint is
   copied to OUT/snapshots/vaeflow-Bs.pt. A budget that phase 1 alone exceeds has no vaeflow model.
2. The standalone Glow (configs/glow-mnist.toml, or --glow-config) trains into OUT/runs/glow in
   stops at the same budgets, a snapshot OUT/snapshots/glow-Bs.pt at each.
   A stop saves a checkpoint that the next call resumes exactly, and the learning-rate schedules
   are functions of the epoch and step alone, so this is the training of one uninterrupted run
   looked at along the way. Where a phase would end its configured epochs before the largest
   budget, its epochs are raised (train.glow.epochs / train.baseline.epochs, as --set would;
   recorded in the JSON's ``epochs_raised``).
3. Without --budgets there is one budget: vaeflow's two phases trained to their configured ends
   (the embedded default), as measured; the Glow then trains for that long.
4. --side-by-side trains the two models at the same time, each in its own process (this script
   with --worker) with train.threads = --threads, so that both see the same machine load; the
   default trains them one after the other. It needs --budgets.

Scoring, at every budget, on the same held-out images (vaeflow's config's test split), seed and
sample count (vaeflow_cli.evaluation):

- vaeflow's single-sample ELBO bound and its latent and pixel parts, and the IWAE_K bound
  (--iwae-k, 0 to skip: a conditional flow decoder runs once per importance sample), upper bounds in
  bits/dim; the Glow's exact bits/dim; each with its per-image distribution (median, p90, ...).
  vaeflow's phase-1 model (the VAE alone) is scored once the same way.
- --sample-metric: digit_fd (digits), cifar_fd (colour images in class folders), simclr_fd (colour
  images, no labels) or none: the Frechet distance (not FID) of --n-samples samples at each of
  --temperatures in the features of a small CNN trained once on vaeflow's run's training images
  (cached in OUT/runs/vaeflow/eval/ and copied to the Glow's run: one file for both models; or
  --metric-network FILE, a file ``vaeflow evaluate`` cached for a run on the same training images).
  The best temperature per model is the one with the lowest score.
- The per-pixel histogram and PNG yardsticks of the same images.

Writes OUT/paper_claim.json (everything, with the machine and the settings), OUT/paper_claim.md
(a table per budget, the sample scores per temperature), OUT/curve.png (held-out bits/dim against
training seconds: the per-epoch held-out bound training records in RUN/metrics.jsonl, on
train.eval_samples images, at the epochs' recorded seconds summed, which leave out each epoch end's
checkpoint and sample grid, so they sit slightly left of the loop seconds; and the budget points,
on every held-out image), OUT/samples.png (both models' samples at their best temperatures at the
largest budget; samples-MODEL.png each alone) and OUT/figure4.png (the paper's Figure 4 for vaeflow
there: a row per latent z, the VAE mean g_mu(z), then flow-decoder samples of the same z), prints the
JSON and Markdown paths on stdout; progress goes to stderr. A failed or interrupted training
process stops the other one too (side by side). On the colour sets training takes the largest
budget (side by side) or twice it, plus start-ups; scoring comes after it (IWAE_64 and training the
sample metric's network take most of that).

--vae-set/--glow-set KEY=VALUE (repeatable) override either config like `vaeflow --set`. Bad
input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.console import counted, log
from vaeflow_cli.errors import VaeflowError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GLOW_CONFIG = ROOT / "configs" / "glow-mnist.toml"
DEFAULT_TEMPERATURES = "0.5,0.7,0.85,1.0"
SAMPLE_METRICS = ("digit_fd", "cifar_fd", "simclr_fd", "none")
METRIC_FILES = {"digit_fd": "digit-cnn.pt", "cifar_fd": "cifar-cnn.pt", "simclr_fd": "simclr-cnn.pt"}  # where evaluate caches them in RUN/eval
PHASE_OF = {"vaeflow": "glow", "glow": "baseline"}  # the phase each model trains in stops
LABELS = {"vaeflow_vae": "vaeflow, VAE alone (phase 1)", "vaeflow": "vaeflow, VAE + flow decoder", "glow": "standalone multi-scale Glow"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line (the script's bad-input pattern), not argparse's usage block
        raise VaeflowError(f"{message} (see --help)")


def parse_args(argv=None) -> argparse.Namespace:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (runs/, snapshots/, paper_claim.json|.md, curve.png, samples.png, figure4.png)")
    ap.add_argument(
        "--budgets",
        default=None,
        help="training budgets in seconds of training-loop time, comma-separated (e.g. 600,1200,2400); default: one, "
        "vaeflow's two phases trained to their configured ends",
    )
    ap.add_argument("--side-by-side", action="store_true", help="train both models at the same time, each in its own process (needs --budgets)")
    ap.add_argument(
        "--threads", type=int, default=None, help="train.threads of each model's training (default: usable cores, half of them side by side)"
    )
    ap.add_argument("--eval-threads", type=int, default=None, help="torch CPU threads of the scoring after training (default: usable cores)")
    ap.add_argument("--vae-config", type=Path, default=None, help="vaeflow's config (default: the embedded default)")
    ap.add_argument("--glow-config", type=Path, default=DEFAULT_GLOW_CONFIG, help="the standalone Glow's config")
    ap.add_argument("--vae-set", action="append", default=[], metavar="KEY=VALUE", help="override vaeflow's config (repeatable)")
    ap.add_argument("--glow-set", action="append", default=[], metavar="KEY=VALUE", help="override the Glow's config (repeatable)")
    ap.add_argument("--temperatures", default=DEFAULT_TEMPERATURES, help="sampling temperatures scored by the sample metric")
    ap.add_argument(
        "--sample-metric",
        choices=SAMPLE_METRICS,
        default="digit_fd",
        help="sample score: digit_fd (digits), cifar_fd (colour, class folders), simclr_fd (colour, no labels), none (the figures at the first temperature)",
    )
    ap.add_argument("--n-samples", type=int, default=2000, help="samples per model and temperature for the sample metric")
    ap.add_argument("--iwae-k", type=int, default=64, help="importance samples of vaeflow's IWAE bound (0: no IWAE bound)")
    ap.add_argument("--grid-n", type=int, default=64, help="samples per model in samples.png")
    ap.add_argument("--figure-rows", type=int, default=8, help="latents z (rows) in figure4.png, each with 5 flow-decoder samples")
    ap.add_argument("--device", default="cpu", help="training and evaluation device for both models (default: cpu)")
    ap.add_argument(
        "--metric-network",
        "--digit-classifier",
        dest="metric_network",
        type=Path,
        default=None,
        help="the sample metric's network file, cached by vaeflow evaluate (RUN/eval/digit-cnn.pt, cifar-cnn.pt or simclr-cnn.pt of a run on "
        "the same training images), instead of training one",
    )
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # --side-by-side: train one model from this spec file
    args = ap.parse_args(argv)
    if args.worker is None and args.out is None:
        raise VaeflowError("--out is required (the output folder)")
    return args


# ------------------------------------------------------------------ helpers


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts(threads: int, eval_threads: int, device: str) -> dict:
    from vaeflow_cli.runtime.threads import usable_cores

    facts = {
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "eval_threads": eval_threads,
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


def parse_budgets(text: str | None) -> list[float] | None:
    """--budgets as increasing positive seconds, or None (one budget: vaeflow's configured training)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VaeflowError(f"--budgets {text!r} must be comma-separated seconds, e.g. 600,1200,2400") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise VaeflowError(f"--budgets {text!r}: give one or more positive finite numbers of seconds")
    if len(set(values)) != len(values):
        raise VaeflowError(f"--budgets {text!r} names a budget twice")
    return sorted(values)


def best_temperature(scores: dict[str, float]) -> tuple[float | None, float | None]:
    """(T, score) with the lowest finite score; (None, None) when none is finite."""
    finite = {t: v for t, v in scores.items() if math.isfinite(v)}
    if not finite:
        return None, None
    t = min(finite, key=finite.get)
    return float(t), finite[t]


def n_parameters(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _fmt(x, spec: str = ".3f", none: str = "") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _score(x) -> str:
    """A sample score: one decimal, three below 10."""
    return _fmt(x, ".1f" if x is None or not math.isfinite(x) or abs(x) >= 10 else ".3f")


def _scored(d: dict, t: str) -> str:
    """A model's sample score at temperature ``t``, with how many of its samples diverged, if any."""
    n = d.get("samples_diverged", {}).get(t)
    return _score(d["sample_scores"].get(t)) + (f" ({n} diverged)" if n else "")


def _budget_name(b: float) -> str:
    return f"{b:g}s"


def heldout_sha(images: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------ training (one model; in-process or a --worker)


def _resolve(spec: dict, epochs: int | None = None) -> dict:
    """The model's config: its file, the --*-set overrides, the forced threads and device, and
    (when raised) the epochs of the phase trained in stops."""
    extra = [] if epochs is None else [f"train.{PHASE_OF[spec['model']]}.epochs={epochs}"]
    cfg = config_mod.resolve(spec["config"], [*spec["sets"], *spec["forced"], *extra])
    cfg["run"]["dir"] = spec["run"]
    return cfg


class _Trainer:
    """One model's training through the budgets: every train_phase call and its seconds, the
    snapshots, and the per-epoch held-out bounds placed on the training-seconds axis."""

    def __init__(self, spec: dict) -> None:
        from vaeflow_cli.data.splits import load_split

        self.spec, self.run = spec, Path(spec["run"])
        self.cfg = _resolve(spec)
        self.phase = PHASE_OF[spec["model"]]
        self.configured_epochs = self.epochs = int(self.cfg["train"][self.phase]["epochs"])
        self.steps_per_epoch = -(-len(load_split(self.cfg, "train")) // int(self.cfg["train"][self.phase]["batch_size"]))
        self.spent = 0.0  # training-loop seconds so far, every phase of this model
        self.phase_start: float | None = None  # self.spent when the phase trained in stops began
        self.complete, self.done_epochs = False, 0  # where the phase trained in stops stands
        self.calls: list[dict] = []
        self.curve: list[dict] = []
        self.snapshots = Path(spec["snapshots"])

    def call(self, phase: str, max_seconds: float | None):
        """One train_phase call (resumed), timed; its epoch ends placed on the seconds axis."""
        from vaeflow_cli.runtime.runs import RunDir
        from vaeflow_cli.training.loop import train_phase

        before = {r["epoch"] for r in RunDir(self.run).read_metrics() if r["phase"] == phase}
        cfg = self.cfg if phase != self.phase else _resolve(self.spec, self.epochs)
        start, wall0, load0 = self.spent, time.time(), load_average()
        if phase == self.phase and self.phase_start is None:
            self.phase_start = start
        t0 = time.perf_counter()
        kwargs = {} if max_seconds is None else {"max_seconds": max_seconds, "smoke": True}
        r = train_phase(cfg, self.run, phase, resume=True, progress=False, **kwargs)
        wall = time.perf_counter() - t0
        self.spent += r.seconds
        if phase == self.phase:
            self.complete, self.done_epochs = r.complete, r.epochs
        x = start
        for rec in RunDir(self.run).read_metrics():  # this call's epoch ends: their seconds are this call's part of the epoch
            if rec["phase"] == phase and rec["epoch"] not in before and rec.get("test_bpd") is not None:
                x += rec.get("seconds", 0.0)
                self.curve.append({"phase": phase, "epoch": rec["epoch"], "seconds": round(min(x, self.spent), 3), "test_bpd": rec["test_bpd"]})
        self.calls.append(
            {
                "phase": phase,
                "max_seconds": None if max_seconds is None else round(max_seconds, 3),
                "seconds": r.seconds,
                "wall_seconds": round(wall, 3),
                "started": round(wall0, 3),
                "ended": round(time.time(), 3),
                "load_average": {"start": load0, "end": load_average()},
                "epochs": r.epochs,
                "complete": r.complete,
                "epochs_setting": cfg["train"][phase]["epochs"],
            }
        )
        log(f"paper_claim: {self.spec['model']} {phase}: {r.seconds:.1f} s of training in this call, {self.spent:.1f} s in all")
        return r

    def snapshot(self, name: str, phase: str) -> dict:
        """Copy the phase's checkpoint to OUT/snapshots/NAME.pt; where it stands."""
        from vaeflow_cli.runtime.runs import RunDir, load_checkpoint

        path = self.snapshots / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RunDir(self.run).checkpoint_path(phase), path)
        state = load_checkpoint(path)
        return {"snapshot": str(path), "epoch": int(state["epoch"]), "step": int(state["step"]), "global_step": int(state["global_step"])}

    def train_to(self, budget: float | None) -> None:
        """Train the phase in stops until ``budget`` seconds in all (None: to its configured end),
        raising its epochs when they would end first."""
        if budget is None:
            self.call(self.phase, None)
            return
        while self.spent < budget:
            if self.complete:  # its epochs ended before this budget: raise them (the estimate, and one to spare)
                per_epoch = max((self.spent - self.phase_start) / max(self.done_epochs, 1), 1e-3)
                self.epochs = self.done_epochs + math.ceil((budget - self.spent) / per_epoch) + 1
                log(
                    f"paper_claim: {self.spec['model']}: {self.done_epochs} epochs end before {budget:g} s; train.{self.phase}.epochs raised to {self.epochs}"
                )
            self.call(self.phase, budget - self.spent)

    def point(self, budget: float, *, name: str) -> dict:
        snap = self.snapshot(name, self.phase)
        epochs = round(snap["epoch"] + snap["step"] / self.steps_per_epoch, 2)
        return {"budget_seconds": budget, "available": True, "seconds": round(self.spent, 3), "epochs_fraction": epochs, **snap}


def train_model(spec: dict) -> dict:
    """Train one model (spec["model"]: "vaeflow" or "glow") through spec["budgets"] (None: vaeflow
    to its configured end); the budget points, calls, per-epoch curve and epochs raised."""
    from vaeflow_cli.runtime.devices import set_threads

    out: dict = {"model": spec["model"], "started": round(time.time(), 3)}
    set_threads(spec["threads"], log=False)
    t = _Trainer(spec)
    points = []
    if spec["model"] == "vaeflow":
        t.call("vae", None)  # phase 1 to its configured end, whatever the budgets
        out["phase1"] = {"seconds": round(t.spent, 3), "epochs": t.calls[-1]["epochs"], **t.snapshot("vaeflow-phase1", "vae")}
        if spec["budgets"] is None:
            t.train_to(None)
            points.append({**t.point(round(t.spent, 3), name="vaeflow-final"), "budget_seconds": round(t.spent, 3)})
    for budget in spec["budgets"] or ():
        if spec["model"] == "vaeflow" and out["phase1"]["seconds"] > budget:
            points.append(
                {"budget_seconds": budget, "available": False, "why": f"phase 1 alone trained {out['phase1']['seconds']:.1f} s, beyond this budget"}
            )
            continue
        t.train_to(budget)
        points.append(t.point(budget, name=f"{spec['model']}-{_budget_name(budget)}"))
    out.update(
        points=points,
        calls=t.calls,
        curve=t.curve,
        seconds=round(t.spent, 3),
        ended=round(time.time(), 3),
        steps_per_epoch=t.steps_per_epoch,
        epochs_raised={
            "key": f"train.{t.phase}.epochs",
            "configured": t.configured_epochs,
            "final": t.epochs,
            "raised": t.epochs != t.configured_epochs,
        },
    )
    return out


def worker(spec_path: Path) -> dict:
    """--worker SPEC: train one model as train_model does and write its result to spec["result"]."""
    from vaeflow_cli.files import atomic_write_bytes

    spec = json.loads(spec_path.read_text())
    result = train_model(spec)
    atomic_write_bytes(Path(spec["result"]), (json.dumps(result, indent=2) + "\n").encode())
    return result


def train_side_by_side(specs: dict[str, dict], out: Path) -> dict[str, dict]:
    """Both models at once, each in its own process running this script with --worker; their
    stderr comes through line by line, prefixed with the model's name."""
    from vaeflow_cli.errors import RuntimeFailure
    from vaeflow_cli.files import atomic_write_bytes

    procs, pumps, tails = {}, [], {}
    for name, spec in specs.items():
        path = out / f"worker-{name}.json"
        spec = {**spec, "result": str(out / f"training-{name}.json")}
        atomic_write_bytes(path, (json.dumps(spec, indent=2) + "\n").encode())
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
        procs[name] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )
        tails[name] = deque(maxlen=20)

        def pump(name=name, proc=procs[name]):
            for line in proc.stdout:
                tails[name].append(line.rstrip("\n"))
                sys.stderr.write(f"[{name}] {line}")
                sys.stderr.flush()

        pumps.append(threading.Thread(target=pump, daemon=True))
        pumps[-1].start()
    failed = None
    try:
        while failed is None and any(proc.poll() is None for proc in procs.values()):
            failed = next((name for name, proc in procs.items() if proc.poll() not in (None, 0)), None)
            time.sleep(0.2)
        failed = failed or next((name for name, proc in procs.items() if proc.returncode != 0), None)
    finally:  # a failed training, or Ctrl-C here: the other one stops too (SIGTERM: at a step boundary, checkpointed)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            proc.wait()
        for th in pumps:
            th.join()
    if failed is not None:
        last = next((line for line in reversed(tails[failed]) if line.strip()), "")
        raise RuntimeFailure(f"the {failed} training process exited with status {procs[failed].returncode}: {last}")
    return {name: json.loads(Path(out / f"training-{name}.json").read_text()) for name in specs}


# ------------------------------------------------------------------ scoring


def sample_metric(metric: str, vae_cfg: dict, vae_run: Path, glow_run: Path, images: np.ndarray, given: Path | None):
    """(featurize(images, progress), facts) of the sample metric's network, trained once on
    vaeflow's run's training images (or ``given``) and cached in both runs' eval/ folders."""
    from vaeflow_cli.data.splits import build_dataset, load_split
    from vaeflow_cli.evaluation import cifarfd, digitfd, simclrfd

    cache = vae_run / "eval" / METRIC_FILES[metric]
    if given is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(given, cache)
    if metric == "digit_fd":
        net, accuracy = digitfd.load_or_train(cache)
        facts = {"accuracy": accuracy, "accuracy_means": "the digit classifier's accuracy on the embedded held-out digits"}

        def featurize(x, progress=None):
            return digitfd.features(net, x, progress=progress)

    elif metric == "cifar_fd":
        net, accuracy, classes = cifarfd.load_or_train(cache, build_dataset(vae_cfg))
        facts = {"accuracy": accuracy, "classes": len(classes), "accuracy_means": "the classifier's accuracy on the run's held-out images"}

        def featurize(x, progress=None):
            return cifarfd.features(net, x, progress=progress)

    else:
        net, accuracy = simclrfd.load_or_train(cache, load_split(vae_cfg, "train"), images)
        facts = {"accuracy": accuracy, "accuracy_means": "SimCLR pair accuracy on the held-out images (an image's other augmented view found)"}

        def featurize(x, progress=None):
            return simclrfd.features(net, x, progress=progress)

    (glow_run / "eval").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache, glow_run / "eval" / METRIC_FILES[metric])  # the same file, should vaeflow evaluate score the Glow's run
    return featurize, {"name": metric, "network": str(cache), **facts}


def score(run, images: np.ndarray, *, seed: int, device, iwae_k: int, fd, temperatures, n_samples: int, what: str, bar) -> dict:
    """The bounds (a flow's exact bits/dim) of one loaded checkpoint on ``images``, and its sample
    score at each temperature (``fd``: (featurize, reference statistics), or None)."""
    from vaeflow_cli.evaluation.bounds import elbo_bpd, iwae_bpd_per_image
    from vaeflow_cli.evaluation.results import per_image_stats
    from vaeflow_cli.evaluation.samples import frechet_by_temperature
    from vaeflow_cli.runtime.phases import PHASES

    bar.message(f"paper_claim: bits/dim of {what} on {len(images)} held-out images")
    b = elbo_bpd(run.model, images, seed=seed, device=device, progress=bar.start(f"bits/dim: {what}", len(images)))
    if PHASES[run.phase].standalone:
        out = {"bpd_exact": b.mean, "per_image": {"exact": per_image_stats(b.per_image, b.mean)}}
    else:
        out = {
            "bpd_elbo": b.mean,
            "latent_bpd": float(b.latent.mean()),
            "pixel_bpd": float(b.pixel.mean()),
            "per_image": {"ELBO": per_image_stats(b.per_image, b.mean)},
        }
        if iwae_k:
            bar.message(f"paper_claim: IWAE_{iwae_k} bound of {what}")
            w = iwae_bpd_per_image(run.model, images, k=iwae_k, seed=seed, device=device, progress=bar.start(f"IWAE_{iwae_k}: {what}", len(images)))
            out["bpd_iwae"] = w.mean
            out["per_image"][f"IWAE_{iwae_k}"] = per_image_stats(w.per_image, w.mean)
    scores, diverged = {}, {}
    if fd is not None:
        featurize, reference = fd
        raw = frechet_by_temperature(run.model, featurize, reference, temperatures, n_samples, seed, f"paper_claim: {what}", bar, diverged=diverged)
        scores = {f"{t:g}": float(v) for t, v in raw.items()}
    t, v = best_temperature(scores)
    diverged = {f"{t:g}": c for t, c in diverged.items()}
    return {**out, "sample_scores": scores, "best_temperature": t, "sample_score_best": v, "samples_diverged": diverged}


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


def curve_figure(path: Path, r: dict) -> Path:
    """Held-out bits/dim against training seconds: training's per-epoch bound (lines) and the
    budget points on every held-out image (markers), both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"vaeflow": "tab:blue", "glow": "tab:orange"}
    for model, train in r["training"].items():
        pts = train["curve"]
        ax.plot(
            [p["seconds"] for p in pts],
            [p["test_bpd"] for p in pts],
            "-",
            color=colours[model],
            alpha=0.6,
            marker=".",
            label=f"{LABELS[model]}: training's per-epoch bound (x: the epochs' recorded seconds, summed)",
        )
    p1 = r["vaeflow_phase1"]
    ax.plot([p1["seconds"]], [p1["bpd_elbo"]], "s", color="tab:green", label="vaeflow phase 1 (VAE alone), ELBO")
    for model, key, marker, what in (
        ("vaeflow", "bpd_elbo", "o", "ELBO"),
        ("vaeflow", "bpd_iwae", "v", f"IWAE_{r['settings']['iwae_k']}"),
        ("glow", "bpd_exact", "D", "exact"),
    ):
        pts = [(b[model]["seconds"], b[model][key]) for b in r["budgets"] if b[model]["available"] and b[model].get(key) is not None]
        if pts:
            ax.plot(
                *zip(*pts, strict=True), marker, color=colours[model], markersize=8, linestyle="none", label=f"{LABELS[model]} at the budgets, {what}"
            )
    for b in r["budgets"]:
        ax.axvline(b["budget_seconds"], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("training seconds (training loop)")
    ax.set_ylabel("held-out bits/dim")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    k, metric = s["iwae_k"], s["sample_metric"]
    temps = [f"{t:g}" for t in s["temperatures"]]
    fd = r.get("sample_metric_network") or {}
    how = (
        f"side by side, each in its own process with train.threads = {s['threads']}"
        if s["side_by_side"]
        else f"one after the other, train.threads = {s['threads']}"
    )
    lines = [
        "# vaeflow against a standalone Glow at equal training budgets",
        "",
        f"Held-out images: {s['heldout_images']} (vaeflow's test split; the same images, seed {s['eval_seed']} and sample counts for every model). "
        f"Bits/dim: vaeflow's are upper bounds (\"<=\": the single-sample ELBO{f' and IWAE_{k}' if k else ''}), the Glow's exact. "
        f"Budgets: {', '.join(f'{b:g}' for b in s['budgets'])} s of training-loop time ({s['budget_source']}); trained {how}.",
        "",
    ]
    if metric != "none":
        lines += [
            f"Sample score: {metric}, the Frechet distance (not FID) of {s['n_samples']} samples per temperature in a small CNN's features, "
            f"the lowest over T = {', '.join(temps)}; {fd['accuracy_means']}: {_fmt(fd['accuracy'])}.",
            "",
        ]
    else:
        lines += [f"No sample score (--sample-metric none); the figures' samples are at T = {temps[0]}.", ""]
    head = f"| model | training s | epochs | ELBO bpd |{f' IWAE_{k} bpd |' if k else ''} latent / pixel bpd | exact bpd | per-image median bpd |" + (
        f" {metric} (best T) | best T |" if metric != "none" else ""
    )
    cols = head.count("|") - 1

    def row(label, d, epochs) -> str:
        cells = [label, _fmt(d["seconds"], ".1f"), epochs, f"<= {d['bpd_elbo']:.4f}" if d.get("bpd_elbo") is not None else ""]
        if k:
            cells.append(f"<= {d['bpd_iwae']:.4f}" if d.get("bpd_iwae") is not None else "")
        cells.append(f"{d['latent_bpd']:.4f} / {d['pixel_bpd']:.4f}" if d.get("latent_bpd") is not None else "")
        cells.append(_fmt(d.get("bpd_exact"), ".4f"))
        main = next(iter(d["per_image"].values()))
        cells.append(_fmt(main["median"], ".4f"))
        if metric != "none":
            cells += [_score(d["sample_score_best"]), _fmt(d["best_temperature"], "g")]
        return "| " + " | ".join(cells) + " |"

    p1 = r["vaeflow_phase1"]
    lines += ["## vaeflow's phase 1 (the VAE alone), trained to its configured end first", "", head, "|---" * cols + "|"]
    lines += [row(LABELS["vaeflow_vae"], p1, str(p1["epochs"])), ""]
    for b in r["budgets"]:
        lines += [f"## Budget {b['budget_seconds']:g} s", "", head, "|---" * cols + "|"]
        v, g = b["vaeflow"], b["glow"]
        if v["available"]:
            lines.append(row(LABELS["vaeflow"], v, f"{v['epochs']['phase 1']} + {v['epochs']['phase 2']:.2f}"))
        else:
            lines.append(f"| {LABELS['vaeflow']} | no model: {v['why']} |" + " |" * (cols - 2))
        lines.append(row(LABELS["glow"], g, f"{g['epochs']:.2f}"))
        if v["available"] and v.get("gap_elbo_minus_exact") is not None:
            lines += ["", f"vaeflow's ELBO bound minus the Glow's exact bits/dim: {v['gap_elbo_minus_exact']:+.4f}."]
        lines.append("")
    if metric != "none":
        lines += [f"## {metric} per temperature (lower is better; {s['n_samples']} samples each)", ""]
        lines += ["| model | budget s | " + " | ".join(f"T = {t}" for t in temps) + " |", "|---|---|" + "---:|" * len(temps)]
        lines.append(f"| {LABELS['vaeflow_vae']} | {p1['seconds']:.1f} | " + " | ".join(_scored(p1, t) for t in temps) + " |")
        for b in r["budgets"]:
            for model in ("vaeflow", "glow"):
                d = b[model]
                if d["available"]:
                    lines.append(f"| {LABELS[model]} | {b['budget_seconds']:g} | " + " | ".join(_scored(d, t) for t in temps) + " |")
        lines += [
            "",
            "(N diverged): N of the samples had non-finite pixels (the flow's inverse overflowed); they are scored as drawn, those pixels black or white.",
            "",
        ]
    y = r["yardsticks"]
    lines += [
        "## Yardsticks and training",
        "",
        f"Per-pixel histogram (exact, fitted on vaeflow's training split): {y['bpd_histogram']:.4f} bpd (per-image median "
        f"{y['bpd_histogram_per_image']['median']:.4f}). PNG files of the held-out images (lossless codec): {y['bpd_png']:.4f} bpd.",
        "",
    ]
    for model, t in r["training"].items():
        raised = t["epochs_raised"]
        note = (
            f"; {raised['key']} raised from {raised['configured']} to {raised['final']} so that training reaches the largest budget"
            if raised["raised"]
            else ""
        )
        params = next((b[model]["parameters"] for b in r["budgets"] if b[model]["available"]), None)
        lines.append(
            f"- {LABELS[model]}{f' ({params:,} parameters)' if params else ''}: {t['seconds']:.1f} s of training in {counted(len(t['calls']), 'train_phase call')}, "
            f"{t['wall_seconds']:.1f} s wall-clock from its start to its end{note}."
        )
    if s["side_by_side"]:
        lines.append(f"- Side by side: the two trainings overlapped for {r['overlap_seconds']:.1f} s of wall-clock time.")
    lines += [
        "",
        "Training s: seconds of the training loop (the steps, and at each epoch end the held-out bound, checkpoint and sample grid), not "
        "the start-up, vaeflow's phase 1 included; each budget stops at the first step boundary after it. Epochs: completed epochs plus "
        "the fraction of the current one (vaeflow: phase 1 + phase 2). Per-image median: of the ELBO bound (vaeflow) or the exact "
        "bits/dim (the Glow).",
        "",
        f"Machine: {m['usable_cores']} usable cores ({m['cpu_count']} CPUs), {m['processor']}; torch {m['torch']}; training threads "
        f"{m['threads']} per model, scoring threads {m['eval_threads']}; device {m['device']}; {m['platform']}. Load average at the start "
        f"{r['load_average']['start']}, after training {r['load_average']['after_training']}, at the end {r['load_average']['end']}.",
        "",
        f"Figures: {Path(r['figures']['curve']).name} (held-out bits/dim against training seconds), {Path(r['figures']['samples']).name} "
        "(samples at the largest budget)"
        + (
            f", {Path(r['figures']['figure4']).name} (Figure 4 at T = {s['figure4_temperature']:g}: the VAE mean, then flow-decoder samples of the same z)."
            if "figure4" in r["figures"]
            else "."
        ),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def check_sample_metric(metric: str, vae_cfg: dict) -> None:
    """Refuse a sample metric that cannot score these images before anything trains (one line)."""
    from vaeflow_cli.data.splits import build_dataset

    if metric == "none":
        return
    dataset = build_dataset(vae_cfg)
    shape = tuple(dataset.image_shape)
    if metric == "digit_fd" and shape != (1, 28, 28):
        raise VaeflowError(f"--sample-metric digit_fd scores 1x28x28 digits, not {'x'.join(map(str, shape))} images; use cifar_fd, simclr_fd or none")
    if metric == "cifar_fd":
        from vaeflow_cli.evaluation import cifarfd

        cifarfd.labelled_splits(dataset)
    if metric == "simclr_fd":
        from vaeflow_cli.evaluation import simclrfd

        simclrfd.check_images(np.zeros((0, *shape), np.uint8))


class Plan(NamedTuple):
    """What one comparison does, checked before anything trains."""

    args: argparse.Namespace
    temperatures: list[float]
    budgets: list[float] | None  # None: one budget, vaeflow's configured training
    threads: int
    eval_threads: int
    specs: dict[str, dict]  # the two models' training specs (train_model)
    vae_cfg: dict
    images: np.ndarray  # the held-out images every model is scored on
    same_heldout: bool
    out: Path
    runs: dict[str, Path]


def plan(args: argparse.Namespace) -> Plan:
    """Check the options, the two configs and the sample metric (one VaeflowError line each)."""
    from vaeflow_cli.cli.options import parse_temperatures
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.runtime.threads import usable_cores

    temperatures = parse_temperatures(args.temperatures, "--temperatures")
    budgets = parse_budgets(args.budgets)
    if args.n_samples < 2 or args.iwae_k < 0 or args.grid_n < 1 or args.figure_rows < 1:
        raise VaeflowError("--n-samples must be at least 2, --iwae-k at least 0, --grid-n and --figure-rows at least 1")
    if args.side_by_side and budgets is None:
        raise VaeflowError("--side-by-side needs --budgets: the Glow cannot wait for vaeflow's measured training time while both train")
    threads = args.threads if args.threads is not None else max(1, usable_cores() // (2 if args.side_by_side else 1))
    eval_threads = args.eval_threads if args.eval_threads is not None else usable_cores()
    if threads < 1 or eval_threads < 1:
        raise VaeflowError(f"--threads and --eval-threads must be at least 1, got {threads} and {eval_threads}")
    if args.metric_network is not None and (args.sample_metric == "none" or not args.metric_network.is_file()):
        raise VaeflowError(f"--metric-network {args.metric_network}: needs --sample-metric digit_fd, cifar_fd or simclr_fd and an existing file")
    out = args.out
    runs = {"vaeflow": out / "runs" / "vaeflow", "glow": out / "runs" / "glow"}
    for run in runs.values():
        if (run / "checkpoints").exists():
            raise VaeflowError(f"{run} already has checkpoints; choose a new --out")
    configs = {"vaeflow": (None if args.vae_config is None else str(args.vae_config), args.vae_set), "glow": (str(args.glow_config), args.glow_set)}
    specs = {
        model: {
            "model": model,
            "config": config,
            "sets": sets,
            "run": str(runs[model]),
            "forced": [f"train.threads={threads}", f"train.device='{args.device}'"],
            "threads": threads,
            "budgets": budgets,
            "snapshots": str(out / "snapshots"),
        }
        for model, (config, sets) in configs.items()
    }
    vae_cfg, glow_cfg = _resolve(specs["vaeflow"]), _resolve(specs["glow"])  # bad configs fail before anything trains
    images, glow_images = load_split(vae_cfg, "test"), load_split(glow_cfg, "test")
    for cfg in (vae_cfg, glow_cfg):  # decoded and cached here once, not by both training processes at once
        load_split(cfg, "train")
    if tuple(glow_images.shape[1:]) != tuple(images.shape[1:]):
        shapes = ["x".join(map(str, a.shape[1:])) for a in (glow_images, images)]
        raise VaeflowError(f"the Glow's images are {shapes[0]}, vaeflow's {shapes[1]}: the two configs must hold the same images")
    same_heldout = heldout_sha(images) == heldout_sha(glow_images)
    if not same_heldout:
        log("paper_claim: warning: the Glow's config holds out other images than vaeflow's; both are scored on vaeflow's")
    check_sample_metric(args.sample_metric, vae_cfg)
    return Plan(args, temperatures, budgets, threads, eval_threads, specs, vae_cfg, images, same_heldout, out, runs)


def train_both(p: Plan) -> dict[str, dict]:
    """Both models through the budgets: side by side, or vaeflow then the Glow."""
    p.out.mkdir(parents=True, exist_ok=True)
    if p.args.side_by_side:
        log(f"paper_claim: training both models side by side, {p.threads} thread(s) each, to {', '.join(f'{b:g}' for b in p.budgets)} s")
        return train_side_by_side(p.specs, p.out)
    training = {"vaeflow": train_model(p.specs["vaeflow"])}
    if p.budgets is None:  # the Glow gets what vaeflow's configured training took
        p.specs["glow"]["budgets"] = [training["vaeflow"]["points"][0]["budget_seconds"]]
    training["glow"] = train_model(p.specs["glow"])
    return training


def score_all(p: Plan, training: dict[str, dict]) -> dict:
    """Every snapshot scored on the same images, seed and sample count: vaeflow's phase 1 once,
    both models at each budget; the sample metric's network and the yardsticks."""
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation import fid as fid_mod
    from vaeflow_cli.evaluation.results import per_image_stats
    from vaeflow_cli.evaluation.yardsticks import HISTOGRAM_ALPHA, histogram_bpd, png_bpd
    from vaeflow_cli.progress import Progress
    from vaeflow_cli.runtime.devices import set_threads

    args, images = p.args, p.images
    set_threads(p.eval_threads, log=False)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    network, fd, loaded = None, None, {}
    with Progress() as bar:
        if args.sample_metric != "none":
            featurize, network = sample_metric(args.sample_metric, p.vae_cfg, p.runs["vaeflow"], p.runs["glow"], images, args.metric_network)
            fd = (featurize, fid_mod.statistics(featurize(images, bar.start(f"{args.sample_metric}: features of the held-out images", len(images)))))
        common = {
            "seed": p.vae_cfg["train"]["seed"],
            "device": device,
            "iwae_k": args.iwae_k,
            "fd": fd,
            "temperatures": p.temperatures,
            "n_samples": args.n_samples,
            "bar": bar,
        }
        p1 = training["vaeflow"]["phase1"]
        run = load_run(p.runs["vaeflow"], device=device, checkpoint=p1["snapshot"])
        phase1 = {**p1, **score(run, images, what="vaeflow's phase 1", **common)}
        phase1["parameters"] = sum(n_parameters(getattr(run.model, m)) for m in ("encoder", "decoder", "prior"))
        rows = []
        for i, budget in enumerate(b["budget_seconds"] for b in training["glow"]["points"]):
            row = {"budget_seconds": budget}
            for model in ("vaeflow", "glow"):
                point = row[model] = training[model]["points"][i]
                if not point["available"]:
                    continue
                run = loaded[model] = load_run(p.runs[model], device=device, checkpoint=point["snapshot"])
                d = row[model] = {
                    **point,
                    **score(run, images, what=f"{LABELS[model]} at {budget:g} s", **common),
                    "parameters": n_parameters(run.model),
                }
                if model == "vaeflow":
                    d["epochs"] = {"phase 1": p1["epochs"], "phase 2": point["epochs_fraction"]}
                    d["seconds_phase1"], d["seconds_phase2"] = p1["seconds"], round(point["seconds"] - p1["seconds"], 3)
                else:
                    d["epochs"] = point["epochs_fraction"]
            if row["vaeflow"]["available"]:
                row["vaeflow"]["gap_elbo_minus_exact"] = row["vaeflow"]["bpd_elbo"] - row["glow"]["bpd_exact"]
            rows.append(row)
        hist = histogram_bpd(load_split(p.vae_cfg, "train"), images, alpha=HISTOGRAM_ALPHA)
        png = png_bpd(images)
    yardsticks = {
        "bpd_histogram": float(hist.mean()),
        "bpd_histogram_per_image": per_image_stats(hist),
        "histogram_alpha": HISTOGRAM_ALPHA,
        "bpd_png": float(png.mean()),
        "bpd_png_per_image": per_image_stats(png),
    }
    return {"network": network, "phase1": phase1, "rows": rows, "loaded": loaded, "yardsticks": yardsticks}


def sample_figures(p: Plan, rows: list[dict], loaded: dict) -> tuple[dict, float]:
    """samples.png (and each model's grid alone, samples-MODEL.png) at the largest budget where the
    model exists, each at its best temperature; figure4.png for vaeflow there. (paths, Figure 4's T)."""
    from vaeflow_cli.data.images import grid, png_bytes, to_uint8
    from vaeflow_cli.evaluation.samples import generate
    from vaeflow_cli.files import atomic_write_bytes

    args, seed = p.args, p.vae_cfg["train"]["seed"]
    panels, figure4_t = [], p.temperatures[0]
    last = {m: next(b[m] for b in reversed(rows) if b[m]["available"]) for m in ("vaeflow", "glow") if m in loaded}
    for model, d in last.items():
        t = d["best_temperature"] if d["best_temperature"] is not None else p.temperatures[0]
        g = grid(generate(loaded[model].model, args.grid_n, temperature=t, seed=seed))
        atomic_write_bytes(p.out / f"samples-{model}.png", png_bytes(g))
        bpd = f"bpd <= {d['bpd_elbo']:.3f}" if model == "vaeflow" else f"bpd = {d['bpd_exact']:.3f}"
        fd_text = f"{args.sample_metric} {_score(d['sample_score_best'])}, " if d["sample_scores"] else ""
        panels.append((f"{LABELS[model]}, {d['budget_seconds']:g} s budget, T = {t:g}\n{fd_text}{bpd}, {d['seconds']:.0f} s training", g))
        if model == "vaeflow":
            figure4_t = t
    figures = {"curve": str(p.out / "curve.png"), "samples": str(sample_figure(p.out / "samples.png", panels))}
    if "vaeflow" in loaded:  # vaeflow had a model at some budget
        per_z = 5
        cmp = loaded["vaeflow"].compare(args.figure_rows, per_z, temperature=figure4_t, seed=seed)
        g = grid(to_uint8(cmp.reshape(-1, *cmp.shape[2:])), nrow=1 + per_z)
        title = f"vaeflow at {last['vaeflow']['budget_seconds']:g} s, T = {figure4_t:g}: a row per z ~ p(z),\nthe VAE mean g_mu(z), then {per_z} flow-decoder samples of that z"
        figures["figure4"] = str(sample_figure(p.out / "figure4.png", [(title, g)]))
    return figures, figure4_t


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    from vaeflow_cli.files import atomic_write_bytes

    p = plan(args)
    load_start, t_start = load_average(), time.perf_counter()
    training = train_both(p)
    load_after_training = load_average()
    scored = score_all(p, training)
    figures, figure4_t = sample_figures(p, scored["rows"], scored["loaded"])
    result = {
        "machine": machine_facts(p.threads, p.eval_threads, args.device),
        "load_average": {"start": load_start, "after_training": load_after_training, "end": None},
        "settings": {
            "vae_config": str(args.vae_config) if args.vae_config else config_mod.DEFAULT_CONFIG_NAME,
            "glow_config": str(args.glow_config),
            "vae_set": args.vae_set,
            "glow_set": args.glow_set,
            "budgets": [b["budget_seconds"] for b in scored["rows"]],
            "budget_source": "--budgets" if p.budgets is not None else "vaeflow's two phases trained to their configured ends, as measured",
            "side_by_side": args.side_by_side,
            "threads": p.threads,
            "eval_threads": p.eval_threads,
            "temperatures": p.temperatures,
            "sample_metric": args.sample_metric,
            "n_samples": args.n_samples,
            "iwae_k": args.iwae_k,
            "grid_n": args.grid_n,
            "figure_rows": args.figure_rows,
            "figure4_temperature": figure4_t,
            "eval_seed": p.vae_cfg["train"]["seed"],
            "heldout_images": len(p.images),
            "heldout_sha256": heldout_sha(p.images),
            "same_heldout_images": p.same_heldout,
        },
        "sample_metric_network": scored["network"],
        "vaeflow_phase1": scored["phase1"],
        "budgets": scored["rows"],
        "yardsticks": scored["yardsticks"],
        "training": {m: {**t, "wall_seconds": round(t["ended"] - t["started"], 3)} for m, t in training.items()},
        "runs": {m: str(r) for m, r in p.runs.items()},
        "figures": figures,
    }
    v, g = result["training"]["vaeflow"], result["training"]["glow"]
    result["overlap_seconds"] = round(max(0.0, min(v["ended"], g["ended"]) - max(v["started"], g["started"])), 3)
    curve_figure(p.out / "curve.png", result)
    result["total_seconds"] = round(time.perf_counter() - t_start, 3)
    result["load_average"]["end"] = load_average()
    json_path, md_path = p.out / "paper_claim.json", p.out / "paper_claim.md"
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
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
