"""What the interleaved training-step benchmarks (cpu_options.py, step_guard.py) share: their
command-line options and their synthetic inputs, phase by phase."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Iterator

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.runtime.devices import set_threads

PHASES = {"phase1_vae": "vae", "phase2_glow_layer": "glow"}
SHAPE = (1, 28, 28)  # the embedded default's data: MNIST digits (synthetic here: timing does not depend on the pixels)


def arguments(description: str, *, steps: int, per_round: str, per_cycle: str, warmup: str) -> argparse.ArgumentParser:
    """The options every step benchmark takes; the caller adds its own and parses."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: train.threads' auto rule)")
    ap.add_argument("--rounds", type=int, default=5, help=f"rounds; each gives one ratio per {per_round}")
    ap.add_argument("--steps", type=int, default=steps, help=f"cycles per round ({per_cycle})")
    ap.add_argument("--warmup", type=int, default=3, help=warmup)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train.<phase>.batch_size")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    return ap


def phase_inputs(args: argparse.Namespace, cfg: dict) -> Iterator[tuple[str, str, int, np.ndarray]]:
    """(key, phase, batch size, uint8 images enough for every timed and warm-up step) per phase asked for."""
    seed = cfg["train"]["seed"]
    for key in args.phases.split(","):
        phase = PHASES[key]
        b = args.batch_size or cfg["train"][phase]["batch_size"]
        n = b * (args.warmup + args.rounds * args.steps)
        yield key, phase, b, np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def header(args: argparse.Namespace, threads: int, ratio: str) -> dict:
    """The fields every step benchmark's JSON starts with."""
    return {
        "config": config_mod.DEFAULT_CONFIG_NAME,
        "image_shape": list(SHAPE),
        "threads": threads,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup": args.warmup,
        "ratio": ratio,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def start(args: argparse.Namespace) -> int:
    """Set the thread count the benchmark runs with (returned)."""
    return set_threads(args.threads)
