"""Which speed options pay on the CPU: torch.compile (``train.compile``), channels_last
(``train.channels_last``) and bf16 autocast (``train.precision = "bf16"``), each against plain
fp32 eager, for both phases of the embedded default config (phase 1: the VAE step; phase 2: the
Glow-layer step on the frozen VAE). Every step is the real one (``engine.Stepper``: loss,
backward, Adam) on batches from the real loader over synthetic uint8 images of the data's shape.

The variants of a phase are interleaved: each round runs ``--steps`` cycles of one step of every
variant (fp32 eager, compile, channels_last, bf16), the order rotating from cycle to cycle, so a
load change on the machine falls on all of them alike; a round's ratio for an option is the median
of its steps over the median of fp32 eager's steps in the same round. The JSON reports, per phase
and option, the median of the ``--rounds`` ratios with their min, max and IQR (a ratio < 1 is
faster than fp32 eager), and ``wins`` when every round's ratio is below 0.9.

    python benchmarks/cpu_options.py --threads 1              # the default: 5 rounds of 4 cycles
    python benchmarks/cpu_options.py --threads 2 --rounds 7

channels_last is applied by the Stepper on any device (the embedded default turns it on).
Progress goes to stderr; the JSON object is the one line on stdout.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import step_common  # noqa: E402 -- benchmarks/, the scripts' folder, is on sys.path
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.data.loader import BatchLoader
from vaeflow_cli.model.vaeflow import build_model
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.training.setup import set_phase_mode, trainable_parameters
from vaeflow_cli.training.step import Stepper
from vaeflow_cli.training.timing import rotating_cycles, spread

VARIANTS = {  # name: (precision, compile, channels_last)
    "fp32_eager": ("fp32", False, False),
    "compile": ("fp32", True, False),
    "channels_last": ("fp32", False, True),
    "bf16": ("bf16", False, False),
}
DEVICE = torch.device("cpu")


class Variant:
    """One option's model, optimizer, stepper and loader for one phase, and its timed steps."""

    def __init__(
        self, cfg: dict, phase: str, shape, images: np.ndarray, *, precision: str, compile: bool, channels_last: bool, batch_size: int, seed: int
    ) -> None:
        torch.manual_seed(seed)  # every variant starts from the same weights
        self.model = build_model(cfg, shape)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = trainable_parameters(self.model, phase)
        set_phase_mode(self.model, phase)
        self.model.use_flow = PHASES[phase].use_flow(None)  # the phase's model: its forward is the loss
        opt = torch.optim.Adam(params, lr=cfg["train"][phase]["lr"])
        self.stepper = Stepper(
            self.model, params, opt, device=DEVICE, precision=precision, compile=compile, grad_clip=cfg["train"][phase]["grad_clip"]
        )
        self.stepper.channels_last = channels_last  # the Stepper turns it on for CUDA only
        self.loader = BatchLoader(images, batch_size=batch_size, seed=seed, drop_last=True, threads=1)
        self.batches = self.loader.device_batches(DEVICE)
        self.times: list[float] = []

    def _batch(self) -> torch.Tensor:
        return next(self.batches)[1]

    def step(self) -> float:
        y = self._batch()
        t = time.perf_counter()
        value = self.stepper.step(y)
        elapsed = time.perf_counter() - t
        if not math.isfinite(value):
            raise SystemExit("a non-finite loss: the benchmark's config does not train")
        return elapsed


def measure_phase(cfg: dict, phase: str, shape, images: np.ndarray, *, batch_size: int, rounds: int, steps: int, warmup: int, seed: int) -> dict:
    variants = {
        name: Variant(cfg, phase, shape, images, precision=p, compile=c, channels_last=cl, batch_size=batch_size, seed=seed)
        for name, (p, c, cl) in VARIANTS.items()
    }
    names = list(variants)
    t0 = time.perf_counter()
    for v in variants.values():
        for _ in range(warmup):  # compile happens here
            v.step()
    print(f"{phase}: warm-up ({warmup} steps each, compile included) {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    per_round = {name: [] for name in names}  # each round's median step time
    cycle = 0
    for r in range(rounds):
        times = rotating_cycles({name: variants[name].step for name in names}, steps, start=cycle)
        cycle += steps
        for name in names:
            per_round[name].append(float(np.median(times[name])))
            variants[name].times += times[name]
        print(f"{phase} round {r + 1}/{rounds}: " + ", ".join(f"{n} {per_round[n][-1]:.4f} s" for n in names), file=sys.stderr)
    base = per_round["fp32_eager"]
    out = {"fp32_eager_s_per_step": spread(variants["fp32_eager"].times)}
    for name in names[1:]:
        ratios = [o / b for o, b in zip(per_round[name], base, strict=True)]
        out[name] = {
            "ratio": spread(ratios),
            "ratios": [round(x, 4) for x in ratios],
            "s_per_step": spread(variants[name].times),
            "wins": max(ratios) < 0.9,
        }
    return out


def main() -> None:
    ap = step_common.arguments(
        __doc__,
        steps=4,
        per_round="option",
        per_cycle="one step of every variant each",
        warmup="untimed steps of each variant first (compile runs here)",
    )
    args = ap.parse_args()
    threads = step_common.start(args)
    cfg = config_mod.resolve(overrides=["train.device='cpu'"])  # the embedded default
    t_start = time.perf_counter()
    results = {}
    for key, phase, b, images in step_common.phase_inputs(args, cfg):
        results[key] = measure_phase(
            cfg, phase, step_common.SHAPE, images, batch_size=b, rounds=args.rounds, steps=args.steps, warmup=args.warmup, seed=cfg["train"]["seed"]
        )
        results[key]["batch_size"] = b
    print(
        json.dumps(
            {
                **step_common.header(args, threads, "option's median s/step over fp32 eager's in the same round; median/iqr/min/max over rounds"),
                "defaults": {k: cfg["train"][k] for k in ("precision", "channels_last", "compile")},
                "seconds": round(time.perf_counter() - t_start, 1),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
