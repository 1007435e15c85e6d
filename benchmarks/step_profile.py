"""Where a training step's seconds go: torch.profiler over real training steps of config variants.

    python benchmarks/step_profile.py --threads 1 --shape 3,64,64 --batch-size 64 \\
        "glow=configs/glow-celeba64-cpu.toml:baseline" "vaeflow=configs/celeba64-cpu.toml:glow"

Each variant is NAME=CONFIG:PHASE[:KEY=VALUE,...] as ``benchmarks/step_cost.py`` takes it, built
the same way (``step_cost.make_stepper``: the phase's loss, backward pass, clipping and Adam step
on random dequantized images of --shape). After --warmup steps, --steps steps of each variant run
under ``torch.profiler`` (CPU). Prints one JSON object: per variant the mean seconds per step under
the profiler and the --rows operators with the most self CPU time, in milliseconds per step, each
with its calls per step. ``step_cost.py`` is the instrument for ratios (interleaved, repeated,
without the profiler's overhead); this one says which operators make a difference between two
variants, for example the frozen VAE's forward convolutions in vaeflow's phase 2.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from step_cost import (  # this folder's step benchmark: the same model, data and step
    add_step_options,
    check_counts,
    check_variants,
    make_stepper,
    parse_shape,
    parse_variant,
)
from torch.profiler import ProfilerActivity, profile

from vaeflow_cli.runtime.devices import set_threads


def profile_variant(spec: str, shape: tuple[int, ...], batch: int, seed: int, warmup: int, steps: int, rows: int) -> dict:
    """One variant's profile: mean s per step and its top operators by self CPU time (ms per step)."""
    _, config, phase, sets = parse_variant(spec)
    _, step = make_stepper(config, phase, sets, shape, batch, seed, warmup + steps)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = [step() for _ in range(steps)]
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "spec": spec,
        "s_per_step": sum(seconds) / steps,
        "top_ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps, "calls_per_step": e.count / steps} for e in events],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=CONFIG:PHASE[:KEY=VALUE,...]")
    add_step_options(ap, steps=4, steps_help="profiled steps per variant", warmup=3)
    ap.add_argument("--rows", type=int, default=12, help="operators listed per variant")
    args = ap.parse_args()
    check_counts(args)
    check_variants(args.variants)
    shape = parse_shape(args.shape)
    threads = set_threads(args.threads)
    result = {
        "threads": threads,
        "shape": list(shape),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "variants": {
            spec.partition("=")[0]: profile_variant(spec, shape, args.batch_size, args.seed, args.warmup, args.steps, args.rows)
            for spec in args.variants
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
