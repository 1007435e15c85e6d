"""After phase 2, is more of phase 2 or a joint fine-tune the better use of the same seconds?

    python benchmarks/fine_tune.py --run RUN --seconds 600 --out OUT \\
        --metrics bpd,cifar_fd -t 0.7,1 --n-samples 2000 [--joint-set train.joint.lr=1e-4 ...]

RUN is a run whose phase 2 has trained (to its end, or stopped by a time budget such as
``benchmarks/paper_claim.py``'s snapshots). The script copies it twice into OUT and trains the
copies at the same time, each in its own process with ``--threads`` threads, for ``--seconds``
seconds of training loop each (``train_phase(..., max_seconds=S)``, the budget rule of
``paper_claim.py``):

- ``continue``: phase 2 goes on where it stopped (the frozen VAE, the flow decoder and, with
  ``train_prior``, the prior), with the run's own ``[train.glow]``;
- ``joint``: the joint fine-tuning (``vaeflow train-joint``: encoder, decoder, prior and flow
  decoder together on the ELBO, the paper's section 3.4), with the run's ``[train.joint]`` and the
  ``--joint-set`` overrides.

Each phase's epochs are raised so that the budget, not the epoch count, ends it. Then both copies
are scored by ``vaeflow evaluate`` on the run's whole held-out split with the same seed and sample
count (bits/dim with the latent and pixel parts, and the sample metric at each temperature), and
the starting point once (its phase-2 model, from the ``joint`` copy's evaluation). Prints one JSON
object on stdout and writes OUT/fine_tune.json and OUT/fine_tune.md; progress goes to stderr.
Seconds are of ``--threads`` threads beside the other copy: run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SIDES = {"continue": "glow", "joint": "joint"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker(run: str, phase: str, seconds: float, threads: int, sets: list[str]) -> None:
    """One copy's training, in its own process; its result as one JSON line on stdout."""
    from vaeflow_cli.config.core import resolve
    from vaeflow_cli.training.loop import train_phase

    cfg = resolve(Path(run) / "config.toml", overrides=[f"train.threads={threads}", *sets])
    # the budget, not the epoch count, ends the phase (no schedule depends on the epoch count)
    epochs = f"train.{phase}.epochs={cfg.train.phase(phase).epochs + 100_000}"
    cfg = resolve(base=cfg, overrides=[epochs])
    r = train_phase(cfg, run, phase, resume=(phase == "glow"), progress=False, max_seconds=seconds, smoke=True)
    print(json.dumps({"seconds": round(r.seconds, 1), "steps": r.steps, "batch_size": cfg.train.phase(phase).batch_size}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run whose phase 2 has trained")
    ap.add_argument("--out", help="new folder for the two copies and the results")
    ap.add_argument("--seconds", type=float, default=600.0, help="training-loop seconds of each side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side (they train at the same time)")
    ap.add_argument("--joint-set", action="append", default=[], help="a --set override of the joint side (repeatable)")
    ap.add_argument("--metrics", default="bpd", help="vaeflow evaluate --metrics")
    ap.add_argument("-t", "--temperatures", default="0.7,1", help="vaeflow evaluate -t")
    ap.add_argument("--n-samples", type=int, default=2000, help="vaeflow evaluate --n-samples")
    ap.add_argument("--worker", nargs=2, metavar=("RUN", "PHASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.seconds, args.threads, args.joint_set)
        return
    if not args.run or not args.out:
        sys.exit("fine_tune: give --run RUN (a run whose phase 2 has trained) and --out OUT (a new folder)")
    src, out = Path(args.run), Path(args.out)
    if not (src / "config.toml").is_file() or not (src / "checkpoints" / "glow.pt").is_file():
        sys.exit(f"fine_tune: {src} is not a run whose phase 2 has trained (no config.toml or checkpoints/glow.pt)")
    if out.exists():
        sys.exit(f"fine_tune: {out} exists; give a new folder")
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    procs = {}
    for side, phase in SIDES.items():
        shutil.copytree(src, out / side, ignore=shutil.ignore_patterns("*-step*.pt", "samples"))
        cmd = [sys.executable, __file__, "--worker", str(out / side), phase, "--seconds", str(args.seconds), "--threads", str(args.threads)]
        cmd += [f"--joint-set={s}" for s in args.joint_set] if side == "joint" else []
        procs[side] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(out / f"{side}.log", "w"), text=True, env=env)
        log(f"fine_tune: {side} ({phase}) training for {args.seconds:g} s")
    training = {}
    for side, p in procs.items():
        stdout, _ = p.communicate()
        if p.returncode:
            sys.exit(f"fine_tune: the {side} side failed (exit {p.returncode}); see {out / (side + '.log')}")
        training[side] = json.loads(stdout.strip().splitlines()[-1])
    scores = {}
    for side in SIDES:
        log(f"fine_tune: scoring {side}")
        cmd = ["vaeflow", "-q", "evaluate", "--run", str(out / side), "--metrics", args.metrics, "-t", args.temperatures]
        cmd += ["--n-samples", str(args.n_samples), "--json", "--device", "cpu"]
        scores[side] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    metric = next((m for m in args.metrics.split(",") if m.endswith("_fd") or m == "fid"), None)

    def row(name: str, d: dict, model: str, tr: dict | None) -> dict:
        r = {"model": name, "elbo_bpd": d[f"bpd_elbo_{model}"], "latent_bpd": d[f"bpd_latent_{model}"], "pixel_bpd": d[f"bpd_pixel_{model}"]}
        if metric:
            r[metric] = d[f"{metric}_{model}"]
        return {**r, **(tr or {})}

    rows = [
        row("start (phase 2 as given)", scores["joint"], "full", None),
        row("phase 2 continued", scores["continue"], "full", training["continue"]),
        row("joint fine-tune", scores["joint"], "joint", training["joint"]),
    ]
    result = {
        "run": str(src),
        "seconds_each": args.seconds,
        "threads_each": args.threads,
        "joint_set": args.joint_set,
        "images": scores["joint"]["images"],
        "n_samples": args.n_samples,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    lines = [f"| model | ELBO bpd (latent / pixel) | steps x batch | {metric or ''} |", "|---|---|---:|---|"]
    for r in rows:
        fd = " / ".join(f"T {t}: {v:.1f}" for t, v in r.get(metric, {}).items()) if metric else ""
        steps = f"{r['steps']} x {r['batch_size']}" if "steps" in r else ""
        lines.append(f"| {r['model']} | {r['elbo_bpd']:.4f} ({r['latent_bpd']:.4f} / {r['pixel_bpd']:.4f}) | {steps} | {fd} |")
    (out / "fine_tune.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "fine_tune.md").write_text("\n".join(lines) + "\n")
    log(f"fine_tune: {time.strftime('%H:%M:%S')} done; {out / 'fine_tune.md'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
