"""What the training step's guard costs on the CPU: ``engine.Stepper.step`` (the guarded step)
against an unguarded reference step, for both phases of the embedded default config (phase 1:
the VAE step; phase 2: the Glow-layer step on the frozen VAE).

The guarded step is the real one. Before the forward pass it snapshots (clones) every model
buffer (BatchNorm running statistics), so that a skipped step can restore them; after the backward
pass it computes the total gradient norm with foreach kernels, stacks it with the loss, checks
both for finiteness and syncs with the host once (``.tolist()``), and only then applies the Adam
step. The reference is the step the engine had before the guard, written out here: fp32 with
autocast off, the loss (``model(y).bpd.float().mean()``), one host sync on
``loss.item()``, backward skipped when that loss is not finite, else zero_grad, backward and
``opt.step()``; no buffer snapshot and no gradient check. Both sides run fp32 with the embedded
default's ``train.channels_last`` (model and batch), each with its own model and Adam started from
the same weights and its own loader (same seed) over synthetic uint8 images of the data's shape.

Gradient clipping is off on both sides by default, so the two steps differ by the guard alone.
``--grad-clip`` turns it on for both at the config's ``train.<phase>.grad_clip`` (as the default
config trains): the guarded step then clips with the norm its guard has already computed, the
reference with ``clip_grad_norm_`` (which computes its own), as the pre-guard step did; this is
the guard's cost against the step it replaced.

The two sides of a phase are interleaved: each round runs ``--steps`` cycles of one step of each,
which side goes first alternating from cycle to cycle, so a load change on the machine falls on
both alike; a round's ratio is the median of the guarded side's steps over the median of the
reference's steps in the same round. The JSON reports, per phase, the median of the ``--rounds``
ratios with their min, max and IQR: a ratio of 1.03 means the guard makes a step 3 % slower; a
spread that straddles 1 means the guard's cost is within the machine's noise.

    python benchmarks/step_guard.py --threads 1              # the default: 5 rounds of 8 cycles
    python benchmarks/step_guard.py --threads 1 --rounds 7 --steps 12 --grad-clip

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

SIDES = ("guarded", "unguarded")
DEVICE = torch.device("cpu")


class Side:
    """One side's model, optimizer and loader for one phase, and its timed steps."""

    def __init__(
        self, name: str, cfg: dict, phase: str, shape, images: np.ndarray, *, batch_size: int, channels_last: bool, grad_clip: float, seed: int
    ) -> None:
        self.name = name
        torch.manual_seed(seed)  # both sides start from the same weights
        self.model = build_model(cfg, shape)
        self.params = trainable_parameters(self.model, phase)
        set_phase_mode(self.model, phase)
        self.model.use_flow = PHASES[phase].use_flow(None)  # the phase's model: its forward is the loss
        self.opt = torch.optim.Adam(self.params, lr=cfg["train"][phase]["lr"])
        self.channels_last = channels_last
        self.grad_clip = grad_clip
        if name == "guarded":  # the Stepper puts the model in channels_last itself
            self.stepper = Stepper(
                self.model, self.params, self.opt, device=DEVICE, precision="fp32", grad_clip=grad_clip, channels_last=channels_last
            )
        elif channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loader = BatchLoader(images, batch_size=batch_size, seed=seed, drop_last=True, threads=1)
        self.batches = self.loader.device_batches(DEVICE)
        self.times: list[float] = []
        self.losses: list[float] = []

    def _batch(self) -> torch.Tensor:
        return next(self.batches)[1]

    def _unguarded(self, y: torch.Tensor) -> float:
        """The reference: one host sync on the loss, no buffer snapshot, no gradient check."""
        if self.channels_last and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)
        loss = self.model(y).bpd.float().mean()
        value = loss.item()
        self.opt.zero_grad(set_to_none=True)
        if not math.isfinite(value):
            return math.nan
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        return value

    def step(self) -> float:
        y = self._batch()
        t = time.perf_counter()
        value = self.stepper.step(y) if self.name == "guarded" else self._unguarded(y)
        elapsed = time.perf_counter() - t
        if not math.isfinite(value):
            raise SystemExit(f"{self.name}: a non-finite loss: the benchmark's config does not train")
        self.losses.append(value)
        return elapsed


def measure_phase(
    cfg: dict, phase: str, shape, images: np.ndarray, *, batch_size: int, rounds: int, steps: int, warmup: int, grad_clip: float, seed: int
) -> dict:
    channels_last = bool(cfg["train"]["channels_last"])
    sides = {
        name: Side(name, cfg, phase, shape, images, batch_size=batch_size, channels_last=channels_last, grad_clip=grad_clip, seed=seed)
        for name in SIDES
    }
    t0 = time.perf_counter()
    for _ in range(warmup):  # data-dependent initialisation, allocator and kernel caches
        for side in sides.values():
            side.step()
    print(f"{phase}: warm-up ({warmup} steps each) {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    per_round = {name: [] for name in SIDES}  # each round's median step time
    cycle = 0
    for r in range(rounds):
        times = rotating_cycles({name: sides[name].step for name in SIDES}, steps, start=cycle)  # who goes first alternates
        cycle += steps
        for name in SIDES:
            per_round[name].append(float(np.median(times[name])))
            sides[name].times += times[name]
        ratio = per_round["guarded"][-1] / per_round["unguarded"][-1]
        print(
            f"{phase} round {r + 1}/{rounds}: " + ", ".join(f"{n} {per_round[n][-1]:.4f} s" for n in SIDES) + f", ratio {ratio:.4f}", file=sys.stderr
        )
    ratios = [g / u for g, u in zip(per_round["guarded"], per_round["unguarded"], strict=True)]
    timed = rounds * steps
    return {
        "ratio": spread(ratios),
        "ratios": [round(x, 4) for x in ratios],
        "guarded_s_per_step": spread(sides["guarded"].times),
        "unguarded_s_per_step": spread(sides["unguarded"].times),
        "median_loss_bpd": {n: float(np.median(sides[n].losses[-timed:])) for n in SIDES},
        "buffers": {"count": len(list(sides["guarded"].model.buffers())), "elements": sum(b.numel() for b in sides["guarded"].model.buffers())},
        "trainable_parameters": sum(p.numel() for p in sides["guarded"].params),
    }


def main() -> None:
    ap = step_common.arguments(__doc__, steps=8, per_round="phase", per_cycle="one step of each side each", warmup="untimed steps of each side first")
    ap.add_argument(
        "--grad-clip", action="store_true", help="clip on both sides at the config's train.<phase>.grad_clip (default: no clipping on either)"
    )
    args = ap.parse_args()
    threads = step_common.start(args)
    cfg = config_mod.resolve(None, [])  # the embedded default
    t_start = time.perf_counter()
    results = {}
    for key, phase, b, images in step_common.phase_inputs(args, cfg):
        clip = float(cfg["train"][phase]["grad_clip"]) if args.grad_clip else 0.0
        results[key] = measure_phase(
            cfg,
            phase,
            step_common.SHAPE,
            images,
            batch_size=b,
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            grad_clip=clip,
            seed=cfg["train"]["seed"],
        )
        results[key]["batch_size"] = b
        results[key]["grad_clip"] = clip
    print(
        json.dumps(
            {
                **step_common.header(
                    args, threads, "guarded median s/step over unguarded's in the same round; median/iqr/min/max over rounds (> 1: the guard costs)"
                ),
                "precision": "fp32",
                "channels_last": bool(cfg["train"]["channels_last"]),
                "grad_clip": args.grad_clip,
                "seconds": round(time.perf_counter() - t_start, 1),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
