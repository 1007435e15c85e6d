"""How vaeflow's training step slows down when another CPU-bound job shares the machine.

    python benchmarks/contention.py                       # vaeflow's default thread policy vs the old one
    python benchmarks/contention.py --rounds 5 --steps 30
    python benchmarks/contention.py --sides default,old,passive,spin10k,one_thread

Each measurement is a fresh interpreter (``--worker``) that builds the embedded default model and
runs ``--steps`` real training steps (``engine.Stepper``: loss, backward, Adam) of phase 1 (the VAE)
and of phase 2 (the Glow layer on the frozen VAE) on synthetic uint8 images of the data's shape,
after 3 untimed steps, and prints its step times and the thread count it ended with. The
``default`` side sets the thread count with ``train.threads = 0`` (auto), exactly as the
``vaeflow`` command does, so it is whatever vaeflow does today; the other sides force a count
and set the OpenMP environment a user could set (``--sides``; their definitions are in SIDES
below).

A round measures every side in three situations, the sides alternating (who goes first rotates
from round to round):

- ``alone``: nothing else runs;
- ``vs_vaeflow``: beside a second vaeflow training of the same side (phase-1 steps in a loop);
- ``vs_matmul``: beside a plain torch loop of 512x512 matmuls with torch's own defaults (every
  core, libgomp's default wait policy) and none of vaeflow's settings.

A competitor starts 3 s before the worker and is killed after it. A round's slowdown is the
median step time beside the competitor over the median step time alone, same side, same round.
The JSON (one line on stdout) gives, per side and phase, the alone seconds per step and each
slowdown as median, min, max and IQR over the rounds, each side's alone speed relative to
``old`` (the policy before the change: a fixed count of every usable core, libgomp's default
spinning), and each step time beside a competitor relative to ``old`` alone (``vs_old_alone_*``:
the slowdown a user of the old default would see). Progress goes to stderr. Run it on an
otherwise quiet machine; it takes about 10 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
PHASES = {"phase1_vae": "vae", "phase2_glow_layer": "glow"}
SHAPE = (1, 28, 28)  # the embedded default's data (MNIST digits); timing does not depend on the pixels

# Environment of each side, on top of the caller's environment without the OpenMP variables.
# "default" adds nothing: train.threads = 0, vaeflow's own policy (an auto count that follows the
# load, vaeflow_cli.runtime.threads). The others force a fixed count (VAEFLOW_BENCH_THREADS; "cores" = the
# usable cores) with libgomp's wait settings: GOMP_SPINCOUNT=300000 is libgomp's default spin count
# when OMP_WAIT_POLICY is unset (libgomp env.c), so "old" is a fixed count of every usable core with
# libgomp's default spinning; "passive" sleeps at once; "spin10k" spins 30x shorter; "one_thread"
# is train.threads = 1.
SIDES = {
    "default": {},
    "old": {"GOMP_SPINCOUNT": "300000", "VAEFLOW_BENCH_THREADS": "cores"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "VAEFLOW_BENCH_THREADS": "cores"},
    "spin10k": {"GOMP_SPINCOUNT": "10000", "VAEFLOW_BENCH_THREADS": "cores"},
    "one_thread": {"VAEFLOW_BENCH_THREADS": "1"},
}
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND")
MATMUL = "import torch\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"


# ------------------------------------------------------------------ worker (one fresh interpreter)


def worker(steps: int, forever: bool) -> None:
    import numpy as np
    import torch

    import vaeflow_cli  # noqa: F401 -- before torch, as the vaeflow command
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.data.loader import BatchLoader
    from vaeflow_cli.model.vaeflow import build_model
    from vaeflow_cli.runtime.devices import set_threads
    from vaeflow_cli.runtime.phases import PHASES
    from vaeflow_cli.runtime.threads import usable_cores
    from vaeflow_cli.training.setup import set_phase_mode, trainable_parameters
    from vaeflow_cli.training.step import Stepper

    forced = os.environ.get("VAEFLOW_BENCH_THREADS", "0")
    set_threads(usable_cores() if forced == "cores" else int(forced))
    cfg = config_mod.resolve(overrides=["train.device='cpu'"])
    device = torch.device("cpu")
    out = {"threads": torch.get_num_threads()}
    for key, phase in PHASES.items():
        if forever and phase != "vae":
            break
        torch.manual_seed(0)
        model = build_model(cfg, SHAPE)
        params = trainable_parameters(model, phase)
        set_phase_mode(model, phase)
        model.use_flow = PHASES[phase].use_flow(None)  # the phase's model: its forward is the loss
        b = cfg["train"][phase]["batch_size"]
        images = np.random.default_rng(0).integers(0, 256, size=(b * 8, *SHAPE), dtype=np.uint8)
        stepper = Stepper(
            model,
            params,
            torch.optim.Adam(params, lr=cfg["train"][phase]["lr"]),
            device=device,
            precision="fp32",
            compile=False,
            grad_clip=cfg["train"][phase]["grad_clip"],
        )
        stepper.channels_last = bool(cfg["train"]["channels_last"])
        loader = BatchLoader(images, batch_size=b, seed=0, drop_last=True, threads=1)

        def batches(loader=loader):
            while True:
                yield from loader.device_batches(device)

        it = batches()
        times = []
        n = 0
        while forever or n < steps + 3:
            y = next(it)[1]
            t = time.perf_counter()
            stepper.step(y)
            if n >= 3:
                times.append(time.perf_counter() - t)
            n += 1
        out[key] = times
        out[f"{key}_threads_at_end"] = torch.get_num_threads()
    print(json.dumps(out))


# ------------------------------------------------------------------ the rounds


def _env(side: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS and k != "VAEFLOW_BENCH_THREADS"}
    env.update(SIDES[side])
    return env


def _competitor(kind: str, side: str) -> subprocess.Popen:
    if kind == "vaeflow":
        cmd, env = [sys.executable, str(HERE), "--worker", "--forever"], _env(side)
    else:
        cmd, env = [sys.executable, "-c", MATMUL], _env("old")
        env.pop("GOMP_SPINCOUNT")  # torch's own defaults, nothing of vaeflow's
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3.0)
    return p


def _measure(side: str, situation: str, steps: int) -> dict:
    comp = None if situation == "alone" else _competitor(situation.removeprefix("vs_"), side)
    try:
        r = subprocess.run([sys.executable, str(HERE), "--worker", "--steps", str(steps)], env=_env(side), capture_output=True, text=True)
    finally:
        if comp is not None:
            comp.kill()
            comp.wait()
    if r.returncode != 0:
        raise SystemExit(f"the worker of side {side} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _spread(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": round(statistics.median(xs), 4), "min": round(xs[0], 4), "max": round(xs[-1], 4), "iqr": round(q[2] - q[0], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="default,old", help=f"comma-separated, of {', '.join(SIDES)}")
    ap.add_argument("--situations", default="alone,vs_vaeflow,vs_matmul")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per phase per measurement")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.steps, args.forever)
    sides = args.sides.split(",")
    situations = args.situations.split(",")
    if "alone" not in situations or any(s not in SIDES for s in sides):
        raise SystemExit(f"--situations must include alone; --sides must be of {', '.join(SIDES)}")
    # per side, phase, situation: each round's median step time
    med: dict = {s: {k: {sit: [] for sit in situations} for k in PHASES} for s in sides}
    threads = {}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        for sit in situations:
            for side in order:
                res = _measure(side, sit, args.steps)
                threads[side] = res["threads"]
                ends = {k: res.get(f"{k}_threads_at_end") for k in PHASES}
                for k in PHASES:
                    med[side][k][sit].append(statistics.median(res[k]))
                print(
                    f"round {r + 1}/{args.rounds} {sit:10s} {side:10s} "
                    + ", ".join(f"{k} {med[side][k][sit][-1] * 1000:.1f} ms/step" for k in PHASES)
                    + f", threads at the end {ends} ({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                )
    out = {
        "config": "embedded default",
        "image_shape": list(SHAPE),
        "rounds": args.rounds,
        "steps": args.steps,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "sides": {s: {"env": SIDES[s], "threads": threads[s]} for s in sides},
        "results": {},
    }
    for side in sides:
        res = {}
        for k in PHASES:
            alone = med[side][k]["alone"]
            entry = {"alone_s_per_step": _spread(alone)}
            old_alone = med["old"][k]["alone"] if "old" in sides else None
            if old_alone and side != "old":
                entry["alone_vs_old"] = _spread([a / o for a, o in zip(alone, old_alone, strict=True)])
            for sit in situations:
                if sit != "alone":
                    entry[f"slowdown_{sit}"] = _spread([c / a for c, a in zip(med[side][k][sit], alone, strict=True)])
                    if old_alone:  # beside the competitor, against the old policy alone: what a user sees
                        entry[f"vs_old_alone_{sit}"] = _spread([c / o for c, o in zip(med[side][k][sit], old_alone, strict=True)])
            res[k] = entry
        out["results"][side] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
