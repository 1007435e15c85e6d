"""Seconds per training step of config variants, interleaved: what a model choice costs per step.

    python benchmarks/step_cost.py --threads 2 --shape 1,28,28 --batch-size 64 \\
        "unconditional=:glow:model.flow.conditional=false" "conditional=:glow"
    python benchmarks/step_cost.py --threads 1 --shape 3,32,32 --batch-size 32 \\
        "glow=configs/glow-cifar10-cpu.toml:baseline" "vaeflow=configs/cifar10-cpu.toml:glow"

Each variant is NAME=CONFIG:PHASE[:KEY=VALUE,...] (CONFIG empty: the embedded default; the
overrides as --set takes them). Every variant builds its model from the same seed and takes real
training steps of PHASE as the trainer builds them (``training.setup.training_state``: the loss,
the backward pass, clipping and the Adam step on the phase's trainable parts, with the phase's
free bits and the config's precision and channels_last) on random dequantized images of --shape; the
variants are interleaved step by step, the first one alternating (``timing.rotating_cycles``), so
that a noisy, shared machine slows them alike. Prints one JSON object: each variant's median
seconds per step over the rounds and its ratio to the first variant's. Timing does not depend on
the pixels, so the images are synthetic; the phase's frozen parts are at their initialisation.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vaeflow_cli.config.core import resolve
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.vaeflow import build_model
from vaeflow_cli.runtime.devices import set_threads
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.training.setup import set_phase_mode, training_state
from vaeflow_cli.training.timing import rotating_cycles


def _prog() -> str:
    """The script that was run (this one, or one that imports it), for its error lines."""
    return Path(sys.argv[0]).stem


def parse_variant(text: str) -> tuple[str, str | None, str, list[str]]:
    name, _, rest = text.partition("=")
    config, _, rest = rest.partition(":")
    phase, _, sets = rest.partition(":")
    if not name or phase not in PHASES:
        raise SystemExit(f"{_prog()}: {text!r} is not NAME=CONFIG:PHASE[:KEY=VALUE,...] with PHASE one of {', '.join(PHASES)}")
    return name, config or None, phase, [s for s in sets.split(",") if s]


def check_variants(texts: list[str]) -> list[tuple[str, str | None, str, list[str]]]:
    """Every variant parsed and its config resolved before any work: a malformed variant, a config
    that is not there or a bad override is one line (SystemExit), not a traceback halfway."""
    parsed = [parse_variant(t) for t in texts]
    for name, config, _, sets in parsed:
        try:
            resolve(config, overrides=sets)
        except VaeflowError as exc:
            raise SystemExit(f"{_prog()}: variant {name}: {exc}") from None
    return parsed


def add_step_options(ap: argparse.ArgumentParser, *, steps: int, steps_help: str, warmup: int, rounds: int | None = None) -> None:
    """The options every step benchmark of this folder takes (threads, image shape, batch size,
    steps, warm-up, seed, and rounds where it repeats), with its own defaults."""
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W of the images")
    ap.add_argument("--batch-size", type=int, default=32)
    if rounds is not None:
        ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--steps", type=int, default=steps, help=steps_help)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--seed", type=int, default=0)


def check_counts(args: argparse.Namespace) -> None:
    """The counts among ``args`` (threads, batch size, rounds, steps, rows: at least 1; warm-up: at
    least 0), or one line (SystemExit) naming each that is not."""
    bad = [
        f"--{n.replace('_', '-')} must be at least 1, got {getattr(args, n)}"
        for n in ("threads", "batch_size", "rounds", "steps", "rows")
        if getattr(args, n, 1) < 1
    ]
    if args.warmup < 0:
        bad.append(f"--warmup must be at least 0, got {args.warmup}")
    if bad:
        raise SystemExit(f"{_prog()}: {'; '.join(bad)}")


def parse_shape(text: str) -> tuple[int, ...]:
    """--shape C,H,W as positive integers, or one line (SystemExit)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise SystemExit(f"{_prog()}: --shape {text!r} is not C,H,W (three positive integers, e.g. 3,32,32)")
    return shape


def make_step(config: str | None, phase: str, sets: list[str], shape: tuple[int, ...], batch: int, seed: int, n_batches: int):
    """One variant's timed step (a callable returning its seconds): the model's training step for
    ``phase`` as the trainer builds it (``setup.training_state``), over ``n_batches`` batches of
    synthetic uint8 images dequantized on the host."""
    return make_stepper(config, phase, sets, shape, batch, seed, n_batches)[1]


def make_stepper(config: str | None, phase: str, sets: list[str], shape: tuple[int, ...], batch: int, seed: int, n_batches: int):
    """(the Stepper, its timed step): ``make_step``'s step with the Stepper that takes it, for a
    benchmark that changes a part of it (benchmarks/adam_impl.py swaps its optimizer)."""
    cfg = resolve(config, overrides=sets)
    torch.manual_seed(seed)
    model = build_model(cfg, shape, baseline=PHASES[phase].standalone)
    images = np.random.default_rng(seed).integers(0, 256, size=(batch * n_batches, *shape), dtype=np.uint8)
    cpu = torch.device("cpu")
    _, stepper, loader = training_state(cfg, phase, model, images, device=cpu, batch_size=batch, drop_last=True, dequantize=True)
    set_phase_mode(model, phase, cfg.train.phase(phase).train_prior)
    model.use_flow = PHASES[phase].use_flow(None)
    batches = loader.device_epoch(0, cpu)

    def step() -> float:
        _, y = next(batches)
        t = time.perf_counter()
        stepper.step(y)
        return time.perf_counter() - t

    return stepper, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=CONFIG:PHASE[:KEY=VALUE,...]; the first is the reference")
    add_step_options(ap, steps=6, steps_help="steps of every variant per round", warmup=3, rounds=5)
    args = ap.parse_args()
    check_counts(args)
    parsed = check_variants(args.variants)
    shape = parse_shape(args.shape)
    threads = set_threads(args.threads)
    n_batches = args.warmup + args.rounds * args.steps
    steps = {name: make_step(config, phase, sets, shape, args.batch_size, args.seed, n_batches) for name, config, phase, sets in parsed}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    per_round = {name: [] for name in steps}
    for r in range(args.rounds):
        times = rotating_cycles(steps, args.steps, start=r)
        for name, t in times.items():
            per_round[name].append(statistics.median(t))
        print(f"step_cost: round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {per_round[n][-1] * 1000:.0f} ms" for n in steps), file=sys.stderr)
    ref = statistics.median(per_round[parsed[0][0]])
    result = {
        "threads": threads,
        "shape": list(shape),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "variants": {
            name: {"spec": text, "s_per_step": statistics.median(per_round[name]), "ratio": statistics.median(per_round[name]) / ref}
            for (name, *_), text in zip(parsed, args.variants, strict=True)
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
