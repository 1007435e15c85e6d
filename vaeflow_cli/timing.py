"""Training time per epoch, the paper's Table 4 on the user's hardware: the VAE phase, the
Glow-layer phase and a standalone multi-scale Glow (Kingma & Dhariwal) on the same data shape,
batch size and device.

Each model runs the real training step (``train.training_step``: the loss, backward, Adam) on
batches from the real loader (Rust dequantization, background prefetch) over synthetic uint8
images of the dataset's shape, so the data need not be downloaded. ``warmup`` steps run first
(data-dependent ActNorm init, allocator and kernel caches), then ``steps`` steps are timed and
extrapolated to one epoch of the dataset's training split.
"""

from __future__ import annotations

import math
import platform
import time

import numpy as np
import torch

from vaeflow_cli.console import log
from vaeflow_cli.data import BatchLoader, build_dataset
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model import FlowModel, build_model
from vaeflow_cli.engine import Stepper, configure_backends
from vaeflow_cli.train import resolve_device, set_phase_mode, trainable_parameters

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


def _time_model(model, phase: str, *, images: np.ndarray, batch_size: int, steps: int, warmup: int,
                device: torch.device, lr: float, seed: int, precision: str = "fp32", compile: bool = False,
                channels_last: bool = False) -> dict:
    """{"s_per_step": mean seconds per training step over ``steps`` after ``warmup``,
    "data_wait_share": the share of that time spent waiting for the loader, "peak_memory_bytes":
    peak CUDA memory allocated (None on the CPU)}."""
    params = trainable_parameters(model, phase)
    opt = torch.optim.Adam(params, lr=lr)
    set_phase_mode(model, phase)
    stepper = Stepper(model, params, opt, use_flow=phase != "vae", device=device, precision=precision,
                      compile=compile, channels_last=channels_last)
    loader = BatchLoader(images, batch_size=batch_size, seed=seed, drop_last=True, pin_memory=device.type == "cuda")
    batches = loader.device_epoch(0, device)

    def step():
        _, batch = next(batches)
        value = stepper.step(batch)
        if not math.isfinite(value):
            raise VaeflowError(f"timing: the {phase} model gave a non-finite loss; check the config")

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    loader.wait_seconds = 0.0
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t
    batches.close()
    return {"s_per_step": total / steps, "data_wait_share": loader.wait_seconds / total,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def run_timing(cfg: dict, *, steps: int = 20, warmup: int = 3, batch_size: int | None = None,
               baseline: dict | None = None, device: str | None = None, image_shape=None,
               train_images: int | None = None) -> dict:
    """Time the three models of Table 4 for a resolved config; returns the result dict (JSON-ready).
    ``image_shape`` and ``train_images`` override the dataset's (benchmarks use synthetic shapes).
    Precision, compile and channels_last come from the config's [train] section."""
    if steps < 1 or warmup < 1:
        raise VaeflowError("timing needs --steps >= 1 and --warmup >= 1")
    tcfg = cfg["train"]
    dev = resolve_device(device or tcfg["device"])
    configure_backends(dev, tcfg)
    if image_shape is not None:
        shape, n_train, size_source = tuple(image_shape), int(train_images), "given"
    else:
        shape, n_train, size_source = dataset_shape(cfg)
    b = batch_size or cfg["train"]["vae"]["batch_size"]
    if b > n_train:
        raise VaeflowError(f"batch size {b} is larger than the training split ({n_train} images)")
    baseline = {**BASELINE, **{k: v for k, v in (baseline or {}).items() if v is not None}}
    levels = baseline["levels"]
    while levels > 1 and (shape[1] % 2**levels or shape[2] % 2**levels):
        levels -= 1  # e.g. 28x28 MNIST: 2 levels (28 is not divisible by 8)
    if levels != baseline["levels"]:
        log(f"timing: {shape[1]}x{shape[2]} images are not divisible by 2^{baseline['levels']}: the standalone Glow uses {levels} levels")
        baseline["levels"] = levels
    seed = cfg["train"]["seed"]
    n_images = b * (steps + warmup)
    images = np.random.default_rng(seed).integers(0, 256, size=(n_images, *shape), dtype=np.uint8)
    steps_per_epoch = math.ceil(n_train / b)

    torch.manual_seed(seed)
    vae = build_model(cfg, shape).to(dev)
    from vaeflow_cli.plugins import get_registry

    try:
        glow_flow = get_registry().get("flow", "multiscale-glow").factory(image_shape=shape, **baseline)
    except ValueError as exc:
        raise VaeflowError(f"timing: the standalone Glow cannot be built: {exc}") from None
    glow = FlowModel(flow=glow_flow, image_shape=shape).to(dev)
    lr = cfg["train"]["vae"]["lr"]
    measured = {}
    for name, model, phase in (("vae", vae, "vae"), ("glow_layer", vae, "glow"), ("glow_baseline", glow, "baseline")):
        log(f"timing {name}: {warmup} warm-up + {steps} timed steps of batch {b} on {dev} ({tcfg['precision']})")
        measured[name] = _time_model(model, phase, images=images, batch_size=b, steps=steps, warmup=warmup,
                                     device=dev, lr=lr, seed=seed, precision=tcfg["precision"],
                                     compile=tcfg["compile"], channels_last=tcfg["channels_last"])
    per_step = {k: v["s_per_step"] for k, v in measured.items()}
    epoch = {k: v * steps_per_epoch for k, v in per_step.items()}
    result = {
        "vae_s_per_epoch": epoch["vae"],
        "glow_layer_s_per_epoch": epoch["glow_layer"],
        "glow_baseline_s_per_epoch": epoch["glow_baseline"],
        "speedup": epoch["glow_baseline"] / ((epoch["vae"] + epoch["glow_layer"]) / 2),
        "paper_speedup": PAPER_SPEEDUP,
        "vae_s_per_step": per_step["vae"],
        "glow_layer_s_per_step": per_step["glow_layer"],
        "glow_baseline_s_per_step": per_step["glow_baseline"],
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "image_shape": list(shape),
        "batch_size": b,
        "train_images": n_train,
        "train_images_source": size_source,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "glow_layer": {k: v for k, v in cfg["model"]["flow"].items()},
        "glow_baseline": baseline,
        "parameters": {"vae": sum(p.numel() for m in (vae.encoder, vae.decoder, vae.prior) for p in m.parameters()),
                       "glow_layer": sum(p.numel() for p in vae.flow.parameters()),
                       "glow_baseline": sum(p.numel() for p in glow.parameters())},
        "precision": tcfg["precision"],
        "data_wait_share": {k: v["data_wait_share"] for k, v in measured.items()},
        "peak_memory_bytes": {k: v["peak_memory_bytes"] for k, v in measured.items()},
        "torch": torch.__version__,
    }
    return result


def format_table(r: dict) -> str:
    """The result as a table like the paper's Table 4."""
    rows = [("VAE (phase 1)", r["vae_s_per_step"], r["vae_s_per_epoch"]),
            ("Glow layer (phase 2)", r["glow_layer_s_per_step"], r["glow_layer_s_per_epoch"]),
            ("standalone Glow", r["glow_baseline_s_per_step"], r["glow_baseline_s_per_epoch"])]
    lines = [f"device {r['device']}, images {'x'.join(map(str, r['image_shape']))}, batch {r['batch_size']}, "
             f"{r['steps_per_epoch']} steps per epoch ({r['train_images']} training images)",
             f"{'model':24s}{'s/step':>12s}{'s/epoch':>14s}"]
    lines += [f"{name:24s}{step:12.4f}{ep:14.1f}" for name, step, ep in rows]
    lines.append(f"speedup (Glow epoch / mean of the two phases): {r['speedup']:.2f}x  (paper: {r['paper_speedup']}x on a GTX 1080 Ti)")
    return "\n".join(lines)
