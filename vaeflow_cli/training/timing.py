"""Training time per epoch, the paper's Table 4 on the user's hardware: the VAE phase, the
Glow-layer phase and a standalone multi-scale Glow (Kingma & Dhariwal) on the same data shape,
batch size and device.

Each model runs the real training step (``training.step.Stepper``: the loss, backward, Adam) on
batches from the real loader (Rust dequantization, background prefetch) over synthetic uint8
images of the dataset's shape, so the data need not be downloaded. ``warmup`` steps of each model
run first (data-dependent ActNorm init, allocator and kernel caches). Then the three models'
steps are interleaved: ``steps`` rounds of one step of each (the order rotates every round), each
step timed on its own, so that whatever else loads the machine (another job, a thermal or
frequency change) falls on all three alike. Each model's median seconds per step, extrapolated to
one epoch of the dataset's training split, is its time; the interquartile range of its steps is
the spread. torch's thread count is set first (``train.threads``, ``runtime.devices.set_threads``).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.console import log
from vaeflow_cli.data.loader import BatchLoader
from vaeflow_cli.data.splits import build_dataset
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.vaeflow import FlowModel, build_model
from vaeflow_cli.runtime.devices import configure_backends, resolve_device
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.training.setup import set_phase_mode, training_state
from vaeflow_cli.training.step import Stepper

PAPER_SPEEDUP = 3.5  # Table 4: Glow 512 s/epoch against VAE 118 s and Glow layer 162 s (GTX 1080 Ti)

# The paper's baseline (Kingma & Dhariwal's CIFAR-10 Glow): L=3 levels of K=32 steps, width 512.
BASELINE = {"levels": 3, "steps": 32, "hidden_channels": 512, "coupling": "affine"}


def dataset_shape(cfg: dict) -> tuple[tuple[int, int, int], int, str]:
    """(image shape, training-split size, where the size came from). The size is read from the
    data when it is there, else the dataset's published size (``train_size``)."""
    ds = build_dataset(cfg)
    try:
        n = ds.info()["splits"]["train"] if hasattr(ds, "info") else len(ds.split("train"))  # info(): no decoding
        return tuple(ds.image_shape), n, "data"
    except VaeflowError:
        size = getattr(ds, "train_size", None)
        if size is None:
            raise
        return tuple(ds.image_shape), int(size), "published split size (data not found)"


@dataclass
class _Timed:
    """One model's training steps on its own loader, and the seconds each timed step took."""

    name: str
    phase: str
    stepper: Stepper
    loader: BatchLoader
    batches: object
    device: torch.device
    times: list = field(default_factory=list)
    peak: int | None = None

    def step(self, timed: bool) -> None:
        cuda = self.device.type == "cuda"
        if timed and cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t = time.perf_counter()
        _, batch = next(self.batches)
        value = self.stepper.step(batch)
        if cuda:
            torch.cuda.synchronize(self.device)
        if not math.isfinite(value):
            raise VaeflowError(f"timing: the {self.phase} model gave a non-finite loss; check the config")
        if timed:
            self.times.append(time.perf_counter() - t)
            if cuda:
                self.peak = max(self.peak or 0, torch.cuda.max_memory_allocated(self.device))


def _prepare(name: str, model, phase: str, cfg: dict, *, images: np.ndarray, batch_size: int, device: torch.device) -> _Timed:
    """``model``'s training step for ``phase`` as the trainer builds it (``setup.training_state``:
    the phase's own lr, grad_clip and free_bits, the config's precision, compile and
    channels_last), on ``batch_size`` batches of ``images`` dequantized on the host."""
    _, stepper, loader = training_state(cfg, phase, model, images, device=device, batch_size=batch_size, drop_last=True, dequantize=True)
    set_phase_mode(model, phase, cfg.train.phase(phase).train_prior)
    model.use_flow = PHASES[phase].use_flow(None)
    return _Timed(name, phase, stepper, loader, loader.device_epoch(0, device), device)


def interleave(timed: list[_Timed], *, steps: int, warmup: int) -> None:
    """``warmup`` untimed steps of each model, then ``steps`` rounds of one timed step of each;
    round r starts with model r mod len(timed), so none always follows the same one."""
    for t in timed:
        for _ in range(warmup):
            t.step(timed=False)
        t.loader.wait_seconds = 0.0
    for r in range(steps):
        for i in range(len(timed)):
            timed[(r + i) % len(timed)].step(timed=True)


def rotating_cycles(steps: dict, cycles: int, *, start: int = 0) -> dict[str, list[float]]:
    """Run ``cycles`` cycles of one call of every ``steps[name]()`` (each returns its seconds);
    cycle c starts with item (start + c) mod n, so none always follows the same one (for two
    items: who goes first alternates). Returns every name's seconds, in order. Benchmarks build
    their interleaved rounds on this."""
    names = list(steps)
    times = {name: [] for name in names}
    for c in range(cycles):
        for i in range(len(names)):
            name = names[(start + c + i) % len(names)]
            times[name].append(steps[name]())
    return times


def spread(times) -> dict:
    """{"median", "iqr" (75th minus 25th percentile), "min", "max"} of a list of seconds."""
    q25, q50, q75 = np.percentile(np.asarray(times, dtype=np.float64), [25, 50, 75])
    return {"median": float(q50), "iqr": float(q75 - q25), "min": float(min(times)), "max": float(max(times))}


def run_timing(
    cfg,
    *,
    steps: int = 20,
    warmup: int = 3,
    batch_size: int | None = None,
    baseline: dict | None = None,
    device: str | None = None,
    image_shape=None,
    train_images: int | None = None,
    threads: int | None = None,
) -> dict:
    """Time the three models of Table 4 for a resolved config; returns the result dict (JSON-ready).
    ``image_shape`` and ``train_images`` override the dataset's (benchmarks use synthetic shapes).
    Precision, compile, channels_last and threads come from the config's [train] section
    (``threads`` overrides train.threads)."""
    if steps < 1 or warmup < 1:
        raise VaeflowError("timing needs --steps >= 1 and --warmup >= 1")
    cfg = config_mod.as_config(cfg, source="the config given to run_timing")
    tcfg = cfg.train
    threads = tcfg.threads if threads is None else threads
    dev = resolve_device(device or tcfg.device, "--device" if device else "train.device")
    if image_shape is not None:
        shape, n_train, size_source = tuple(image_shape), int(train_images), "given"
    else:
        shape, n_train, size_source = dataset_shape(cfg)
    b = batch_size or tcfg.phase("vae").batch_size
    if b > n_train:
        source = f"--batch-size {b}" if batch_size else f"train.vae.batch_size = {b}"
        raise VaeflowError(f"{source} is larger than the training split ({n_train} images); give a smaller --batch-size")
    baseline, levels_note = _baseline_options(baseline, shape)
    seed = tcfg.seed
    n_images = b * (steps + warmup)
    from vaeflow_cli.config.limits import require_memory

    require_memory(
        n_images * math.prod(shape),
        f"timing's {n_images} synthetic images (--batch-size {b} x (--steps {steps} + --warmup {warmup}))",
        "lower --steps, --warmup or --batch-size",
    )
    images = np.random.default_rng(seed).integers(0, 256, size=(n_images, *shape), dtype=np.uint8)

    torch.manual_seed(seed)
    vae = build_model(cfg, shape).to(dev)
    torch.manual_seed(seed)
    vae2 = build_model(cfg, shape).to(dev)  # phase 2's own copy: the phases' frozen parts and modes differ
    from vaeflow_cli.registry.core import get_registry

    glow_flow = get_registry().get("flow", "multiscale-glow").build("timing's standalone Glow (--glow-*)", image_shape=shape, **baseline)
    glow = FlowModel(flow=glow_flow, image_shape=shape).to(dev)
    if levels_note:
        log(levels_note)
    with configure_backends(
        dev, threads=threads, tf32=tcfg.tf32
    ):  # after the checks: a refused start prints its error line only; the caller's threads again after
        timed = [
            _prepare(name, model, phase, cfg, images=images, batch_size=b, device=dev)
            for name, model, phase in (("vae", vae, "vae"), ("glow_layer", vae2, "glow"), ("glow_baseline", glow, "baseline"))
        ]
        log(
            f"timing: {warmup} warm-up steps of each model, then {steps} rounds of one step of each (interleaved), "
            f"batch {b} on {dev} ({tcfg.precision}, torch threads = {torch.get_num_threads()})"
        )
        try:
            interleave(timed, steps=steps, warmup=warmup)
        finally:
            for t in timed:
                t.batches.close()
        return _result(
            cfg,
            timed,
            baseline,
            (vae, glow),
            device=dev,
            batch_size=b,
            shape=shape,
            n_train=(n_train, size_source),
            steps=steps,
            warmup=warmup,
            precision=tcfg.precision,
        )


BASELINE_OPTIONS = {"levels": "--glow-levels", "steps": "--glow-steps", "hidden_channels": "--glow-width", "coupling": "--glow-coupling"}


def _baseline_options(given: dict | None, shape) -> tuple[dict, str | None]:
    """The standalone Glow's options: BASELINE overridden by ``given``, checked by the
    multiscale-glow flow's declared constraints (the rules of a [model.flow] section), with as many
    levels as the image sides allow (each level halves them); and the line to log where it took
    fewer levels (None otherwise), which the caller logs once every model is built, so that a
    refused start prints its error line only. Raises VaeflowError naming the ``--glow-*`` option."""
    from vaeflow_cli.config.core import component_options
    from vaeflow_cli.registry.core import get_registry

    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(BASELINE_OPTIONS))
    if unknown:
        raise VaeflowError(f"timing's standalone Glow has no option {unknown[0]!r}; its options are {', '.join(BASELINE_OPTIONS)}")
    options = {**BASELINE, **given}
    baseline = component_options("flow", "multiscale-glow", options, registry=get_registry(), options_by=BASELINE_OPTIONS)
    baseline = {k: baseline[k] for k in options}
    levels = baseline["levels"]
    while levels > 1 and (shape[1] % 2**levels or shape[2] % 2**levels):
        levels -= 1  # e.g. 28x28 MNIST: 2 levels (28 is not divisible by 8)
    note = None
    if levels != baseline["levels"]:
        note = f"timing: {shape[1]}x{shape[2]} images are not divisible by 2^{baseline['levels']}: the standalone Glow uses {levels} levels"
        baseline["levels"] = levels
    return baseline, note


def _result(cfg, timed, baseline, models, *, device, batch_size, shape, n_train, steps, warmup, precision) -> dict:
    """The JSON-ready result of ``run_timing`` from its timed models."""
    vae, glow = models
    n_train, size_source = n_train
    steps_per_epoch = math.ceil(n_train / batch_size)
    stats = {t.name: spread(t.times) for t in timed}
    per_step = {k: v["median"] for k, v in stats.items()}
    epoch = {k: v * steps_per_epoch for k, v in per_step.items()}
    rounds = [g / ((v + p) / 2) for v, p, g in zip(*(t.times for t in timed), strict=True)]  # each round's own speedup
    cpu = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "vae_s_per_epoch": epoch["vae"],
        "glow_layer_s_per_epoch": epoch["glow_layer"],
        "glow_baseline_s_per_epoch": epoch["glow_baseline"],
        "speedup": epoch["glow_baseline"] / ((epoch["vae"] + epoch["glow_layer"]) / 2),
        "paper_speedup": PAPER_SPEEDUP,
        "vae_s_per_step": per_step["vae"],
        "glow_layer_s_per_step": per_step["glow_layer"],
        "glow_baseline_s_per_step": per_step["glow_baseline"],
        **{f"{k}_s_per_step_{s}": v[s] for k, v in stats.items() for s in ("median", "iqr", "min", "max")},
        "spread": "iqr: 75th minus 25th percentile of the timed steps' seconds; *_s_per_step and *_s_per_epoch are medians",
        "speedup_per_round": spread(rounds),
        "interleaved": True,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "image_shape": list(shape),
        "batch_size": batch_size,
        "train_images": n_train,
        "train_images_source": size_source,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "glow_layer": {"type": cfg.model.flow.name, **cfg.model.flow.kwargs()},
        "glow_baseline": baseline,
        "parameters": {
            "vae": sum(p.numel() for m in (vae.encoder, vae.decoder, vae.prior) for p in m.parameters()),
            "glow_layer": sum(p.numel() for p in vae.flow.parameters()),
            "glow_baseline": sum(p.numel() for p in glow.parameters()),
        },
        "precision": precision,
        "data_wait_share": {t.name: t.loader.wait_seconds / sum(t.times) for t in timed},
        "peak_memory_bytes": {t.name: t.peak for t in timed},
        "torch": torch.__version__,
    }


def format_table(r: dict) -> str:
    """The result as a table like the paper's Table 4."""
    rows = [("VAE (phase 1)", "vae"), ("Glow layer (phase 2)", "glow_layer"), ("standalone Glow", "glow_baseline")]
    lines = [
        f"device {r['device']}, images {'x'.join(map(str, r['image_shape']))}, batch {r['batch_size']}, "
        f"{r['steps_per_epoch']} steps per epoch ({r['train_images']} training images), "
        f"{r['timed_steps']} interleaved rounds",
        f"{'model':24s}{'s/step (median)':>16s}{'IQR':>10s}{'s/epoch':>14s}",
    ]
    lines += [f"{name:24s}{r[k + '_s_per_step']:16.4f}{r[k + '_s_per_step_iqr']:10.4f}{r[k + '_s_per_epoch']:14.1f}" for name, k in rows]
    lines.append(f"speedup (Glow epoch / mean of the two phases): {r['speedup']:.2f}x  (paper: {r['paper_speedup']}x on a GTX 1080 Ti)")
    return "\n".join(lines)
