"""What a phase trains and how, set up before its first step: the parts it trains and freezes, the
learning-rate and KL-weight schedules, the model checked on its data, and the optimizer, training
step and loader (``training_state``). ``train_phase`` and the timing (``training.timing``) both
start from here."""

from __future__ import annotations

import math

import numpy as np
import torch

from vaeflow_cli.config.typed import Config, PhaseSettings
from vaeflow_cli.data.loader import BatchLoader
from vaeflow_cli.data.splits import Splits, load_splits
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.contracts import check_components
from vaeflow_cli.model.sampling import bin_centres
from vaeflow_cli.model.vaeflow import VAEFlow, build_model
from vaeflow_cli.runtime.distributed import Dist
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.training.state import TrainingState
from vaeflow_cli.training.step import Stepper


def adam(params: list[torch.nn.Parameter], *, lr: float) -> torch.optim.Adam:
    """torch's Adam (Kingma & Ba, 2015; its defaults betas (0.9, 0.999), eps 1e-8) over ``params``,
    with its fused kernel where torch has one for every parameter's device and dtype (CUDA since
    torch 2.0, the CPU since 2.4): one kernel updates every tensor instead of a Python loop of a
    dozen small ops per tensor, the same update up to float rounding. Measured by
    ``benchmarks/adam_impl.py``: on one CPU thread the fused step over phase 2's 1.7 million
    parameters of ``configs/cifar10-cpu.toml`` (the flow decoder and the prior) takes 0.30 of the
    loop's time, and the whole training step 0.95 (docs/gpu.md). Where torch refuses
    ``fused=True`` (an older torch on the CPU, a device without the kernel) it builds the default
    Adam; the update is the same. A checkpoint's optimizer keeps the choice it was written with
    (torch's ``load_state_dict`` restores each group's ``fused``), so a resumed run goes on as it
    would have."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for a parameter's device or dtype in this torch
        return torch.optim.Adam(params, lr=lr)


def learning_rate(pcfg: PhaseSettings, epoch: int, global_step: int) -> float:
    """The learning rate at ``epoch`` and ``global_step`` (the phase's optimizer steps before this
    one): ``lr``, halved every ``lr_halve_every`` epochs (paper: 250); times a cosine decay over the
    ``lr_cosine_steps`` steps after the warm-up, from 1 to ``lr_final_fraction`` along
    ``f + (1 - f) (1 + cos(pi t)) / 2``, t = min(1, (global_step - warmup_steps) / lr_cosine_steps),
    held at ``f`` after it (Loshchilov & Hutter, 2017, SGDR without restarts; torch's
    CosineAnnealingLR with eta_min = f lr); times ``min(1, (global_step + 1) / warmup_steps)``
    during a linear warm-up over the first ``warmup_steps`` steps. A function of the position
    alone, so a resumed run continues it exactly."""
    lr = pcfg.lr
    if pcfg.lr_halve_every > 0:
        lr *= 0.5 ** (epoch // pcfg.lr_halve_every)
    if pcfg.lr_cosine_steps > 0:
        t = min(1.0, max(0, global_step - pcfg.warmup_steps) / pcfg.lr_cosine_steps)
        f = pcfg.lr_final_fraction
        lr *= f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * t))
    if pcfg.warmup_steps > 0:
        lr *= min(1.0, (global_step + 1) / pcfg.warmup_steps)
    return lr


def kl_weight(kl_warmup_steps: int, global_step: int) -> float:
    """The KL term's weight in the training loss at ``global_step``: rising linearly from 1 /
    kl_warmup_steps to 1 over the first ``kl_warmup_steps`` steps, then 1 (always 1 without a warm-up)."""
    return min(1.0, (global_step + 1) / kl_warmup_steps) if kl_warmup_steps > 0 else 1.0


def phase_modules(model, phase: str, train_prior: bool = False) -> list[torch.nn.Module]:
    """The model parts ``phase`` trains (``PHASES[phase].trains``, and the prior too where the
    phase's config ``pcfg`` sets ``train_prior``); a FlowModel is its flow alone."""
    if not isinstance(model, VAEFlow):
        return [model.flow]
    return [getattr(model, part) for part in PHASES[phase].trained_parts(train_prior)]


def trainable_parameters(model, phase: str, train_prior: bool = False) -> list[torch.nn.Parameter]:
    """The parameters ``phase`` trains (``phase_modules``). The other modules are frozen
    (requires_grad off): the VAE in phase 2, the unused Glow layer in phase 1 (which DDP requires)."""
    if isinstance(model, VAEFlow):
        for m in (model.encoder, model.decoder, model.prior, model.flow):
            m.requires_grad_(False)
    for m in phase_modules(model, phase, train_prior):
        m.requires_grad_(True)
    return [p for m in phase_modules(model, phase, train_prior) for p in m.parameters()]


def set_phase_mode(model: VAEFlow, phase: str, train_prior: bool = False) -> None:
    """Train mode for what this phase trains; the frozen parts stay in eval mode."""
    model.eval()
    for m in phase_modules(model, phase, train_prior):
        m.train()


def data_and_model(cfg: Config, phase: str, ddp, device: torch.device, *, fresh_flow: bool):
    """The decoded data and the model, built on ``device`` with the phase's seed, every component
    run once on two training images (``check_components``; ``fresh_flow``: a VAE's pixel flow is
    still at its initialisation and must be the identity there)."""
    data: Splits = load_splits(cfg)
    if len(data.train) < ddp.world_size or len(data.test) < 1:
        raise VaeflowError(
            f"the dataset has {len(data.train)} training and {len(data.test)} held-out images; training needs at least {ddp.world_size} and 1"
        )
    torch.manual_seed(cfg.train.seed + list(PHASES).index(phase) + 1000 * ddp.rank)
    model = build_model(cfg, data.image_shape, baseline=PHASES[phase].standalone).to(device)
    y = bin_centres(data.train[:2], device)
    check_components(model, y, identity_flow=fresh_flow, flow_type=cfg.model.flow.name)
    return data, model


def training_state(
    cfg: Config,
    phase: str,
    model,
    images: np.ndarray,
    *,
    device: torch.device,
    ddp: Dist | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
    dequantize: bool | None = None,
) -> tuple[TrainingState, Stepper, BatchLoader]:
    """A fresh TrainingState of ``model`` for ``phase`` (Adam on the parameters it trains, at the
    phase's ``lr``), its Stepper (the training step, with the phase's ``grad_clip`` and
    ``free_bits``) and the rank's BatchLoader over the uint8 ``images``. The trainer and the
    timing (``training.timing``) both start from here. ``batch_size``: the global batch
    (default ``train.<phase>.batch_size``); ``dequantize``: whether the loader dequantizes on the
    host (default: unless ``train.dequantize`` is "device")."""
    ddp = ddp or Dist()
    tcfg, pcfg = cfg.train, cfg.train.phase(phase)
    batch_size = pcfg.batch_size if batch_size is None else batch_size
    dequantize = tcfg.dequantize != "device" if dequantize is None else dequantize
    params = trainable_parameters(model, phase, pcfg.train_prior)
    if not params:
        raise VaeflowError(
            f"the {phase} phase has no parameters to train: the components it trains "
            f"({', '.join(type(m).__name__ for m in phase_modules(model, phase, pcfg.train_prior))}) have none; check the [model] types"
        )
    opt = adam(params, lr=pcfg.lr)
    stepper = Stepper(
        model,
        params,
        opt,
        device=device,
        precision=tcfg.precision,
        grad_clip=pcfg.grad_clip,
        compile=tcfg.compile,
        channels_last=tcfg.channels_last,
        dist=ddp,
    )
    stepper.free_bits = pcfg.free_bits
    loader = BatchLoader(
        images,
        batch_size=batch_size // ddp.world_size,
        seed=tcfg.seed,
        drop_last=drop_last,
        dequantize=dequantize,
        rank=ddp.rank,
        world_size=ddp.world_size,
        pin_memory=device.type == "cuda",
    )
    return TrainingState(model, opt, stepper.scaler, device), stepper, loader
