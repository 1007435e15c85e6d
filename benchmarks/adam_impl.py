"""Seconds per training step with torch's fused Adam (what training uses, ``training.setup.adam``)
against the for-loop Adam (torch's default on the CPU), interleaved on the same model.

    python benchmarks/adam_impl.py --threads 1 configs/cifar10-cpu.toml:glow configs/glow-cifar10-cpu.toml:baseline

Each CONFIG:PHASE builds the phase's model from the same seed and takes real training steps as the
trainer builds them (``training.setup.training_state``: the loss, the backward pass, clipping and
the Adam step on the phase's trainable parts) on random dequantized images of --shape, twice: once
with the fused Adam and once with ``torch.optim.Adam(foreach=False)``; the two alternate step by
step, who goes first alternating (``timing.rotating_cycles``), so that a noisy, shared machine slows
them alike. It also times the optimizer step alone on the same parameters and gradients. Prints
one JSON object per CONFIG:PHASE: median seconds per step and per optimizer step of each, and the
ratios fused / loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from step_cost import (  # this folder's step benchmark: the same model, data and training step
    add_step_options,
    check_counts,
    check_variants,
    make_stepper,
    parse_shape,
)

from vaeflow_cli.runtime.devices import set_threads
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.training.timing import rotating_cycles


def make_steps(config: str, phase: str, shape, batch: int, seed: int, n_batches: int, fused: bool):
    """(one training step, one optimizer step alone, each returning its seconds; the number of
    trained parameters). The training step is step_cost's (``step_cost.make_stepper``), with the
    for-loop Adam swapped in unless ``fused``."""
    stepper, step = make_stepper(config, phase, [], shape, batch, seed, n_batches)
    if not fused:
        stepper.opt = torch.optim.Adam(stepper.params, lr=stepper.opt.param_groups[0]["lr"], foreach=False)
    elif not stepper.opt.param_groups[0]["fused"]:
        raise SystemExit("adam_impl: this torch has no fused Adam for the CPU (torch >= 2.4 has one)")

    def opt_step() -> float:
        with torch.no_grad():
            for p in stepper.params:
                p.grad = torch.randn_like(p) * 1e-3
        t = time.perf_counter()
        stepper.opt.step()
        return time.perf_counter() - t

    return step, opt_step, sum(p.numel() for p in stepper.params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="CONFIG:PHASE")
    add_step_options(ap, steps=6, steps_help="steps of each side per round", warmup=2, rounds=5)
    args = ap.parse_args()
    check_counts(args)
    models = []
    for spec in args.models:  # every model checked before any work
        config, _, phase = spec.rpartition(":")
        if phase not in PHASES or not config:
            raise SystemExit(f"adam_impl: {spec!r} is not CONFIG:PHASE with PHASE one of {', '.join(PHASES)}")
        models.append((config, phase))
    check_variants([f"{config}={config}:{phase}" for config, phase in models])
    shape = parse_shape(args.shape)
    threads = set_threads(args.threads)
    n_batches = args.warmup + args.rounds * args.steps
    for spec, (config, phase) in zip(args.models, models, strict=True):
        sides = {name: make_steps(config, phase, shape, args.batch_size, args.seed, n_batches, name == "fused") for name in ("fused", "loop")}
        for step, _, _ in sides.values():
            for _ in range(args.warmup):
                step()
        whole = {name: [] for name in sides}
        alone = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, t in rotating_cycles({n: s[0] for n, s in sides.items()}, args.steps, start=r).items():
                whole[name].append(statistics.median(t))
            for name, t in rotating_cycles({n: s[1] for n, s in sides.items()}, 3 * args.steps, start=r).items():
                alone[name].append(statistics.median(t))
            print(f"adam_impl: {spec} round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {whole[n][-1] * 1000:.0f} ms" for n in sides), file=sys.stderr)
        med = {kind: {n: statistics.median(v[n]) for n in sides} for kind, v in (("step", whole), ("optimizer_step", alone))}
        n_params = sides["fused"][2]
        print(
            json.dumps(
                {
                    "model": spec,
                    "threads": threads,
                    "batch_size": args.batch_size,
                    "rounds": args.rounds,
                    "trained_parameters": n_params,
                    "torch": torch.__version__,
                    "s_per_step": med["step"],
                    "s_per_optimizer_step": med["optimizer_step"],
                    "ratio_step_fused_over_loop": med["step"]["fused"] / med["step"]["loop"],
                    "ratio_optimizer_step_fused_over_loop": med["optimizer_step"]["fused"] / med["optimizer_step"]["loop"],
                }
            )
        )


if __name__ == "__main__":
    main()
