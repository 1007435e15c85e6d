"""The training step and what surrounds it on real hardware: mixed precision, channels_last,
torch.compile, PyTorch DDP under torchrun, and the guard against non-finite losses.
``training.loop`` (the phases) and ``timing`` (Table 4) both run their steps through here.

Precision (``train.precision``): "fp32", "bf16" or "fp16" autocast for the forward pass (fp16 with
a gradient scaler). Whatever the precision, the model sums log-densities and flow log-determinants
in float32 (model/vaeflow.py casts decoder outputs and encoder parameters; the flows cast the coupling
outputs their log-dets are made of).

The device, the thread count and TF32 are set around the steps by ``vaeflow_cli.runtime.devices``
(``configure_backends``); a torchrun job's ranks and collectives are
``vaeflow_cli.runtime.distributed.Dist``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.vaeflow import training_loss
from vaeflow_cli.runtime.distributed import Dist
from vaeflow_cli.runtime.threads import tick

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision (checked by the config)


class Stepper:
    """Runs training steps of one phase: autocast, gradient scaling, clipping, the Adam step, and
    the guard against non-finite steps.

    The guard watches the cause, not the symptom: after the backward pass one fused check (the
    loss and the total gradient norm, computed with foreach kernels; one host sync per step, one
    small all-reduce under DDP) decides whether the step is applied. A step whose loss OR
    gradient is not finite, on any rank, is skipped without a trace: no optimizer update, and the
    buffers its forward pass changed (BatchNorm running statistics, data-dependent ActNorm flags)
    are restored. ``step`` returns the batch's loss, or NaN for a skipped step; ``bad_steps``
    counts consecutive skips. With fp16, a non-finite gradient is the gradient scaler's overflow
    signal: the step is skipped, the scale lowered, and it does not count as a bad step unless
    the loss itself is non-finite.

    Under DDP the first step first finds the parameters that receive no gradient in this phase (a
    prior that is not trained yet, say), freezes them, and only then wraps the objective in
    DistributedDataParallel, so DDP never waits for their gradients; the probe leaves no trace
    (weights, buffers and RNG are restored)."""

    def __init__(
        self,
        model: nn.Module,
        params: list,
        opt: torch.optim.Optimizer,
        *,
        device: torch.device,
        precision: str = "fp32",
        grad_clip: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
        dist: Dist | None = None,
    ) -> None:
        if precision == "fp16" and device.type != "cuda":
            raise VaeflowError('train.precision = "fp16" needs a CUDA device; use bf16 or fp32 on the CPU')
        self.model, self.params, self.opt, self.device = model, params, opt, device
        self.dtype = AUTOCAST_DTYPES[precision]
        self.grad_clip = grad_clip
        self.dist = dist or Dist()
        self.channels_last = channels_last
        self.compile = compile
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.objective: nn.Module | None = None if self.dist.enabled else self._wrap(model)  # the model's forward is its bound
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.bad_steps = 0
        self.kl_weight = 1.0  # the KL term's weight in the loss at this step (training.loop sets it from the warm-up)
        self.free_bits = 0.0  # nats (train.<phase>.free_bits)
        self._buffers = [b for b in model.buffers()]
        self._saved = [b.detach().clone() for b in self._buffers]  # where each step snapshots them

    def _wrap(self, objective: nn.Module) -> nn.Module:
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(objective) if self.compile else objective

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _freeze_unused(self, y: torch.Tensor) -> None:
        """Find (on this batch, agreed over ranks) the parameters that get no gradient and freeze
        them; restore everything the probe touched."""
        state = {k: v.detach().clone() for k, v in self.model.state_dict(keep_vars=True).items()}
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        with self._autocast():
            loss = self.model(y).bpd.float().mean()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True) if loss.requires_grad else [None] * len(self.params)
        used = torch.tensor([0.0 if g is None else 1.0 for g in grads], device=self.device if self.dist_backend_is_nccl() else "cpu")
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(used, op=dist.ReduceOp.MAX)
        with torch.no_grad():
            self.model.load_state_dict(state)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)
        for p, u in zip(self.params, used.tolist(), strict=True):
            if not u:
                p.requires_grad_(False)
        self.params = [p for p, u in zip(self.params, used.tolist(), strict=True) if u]

    def dist_backend_is_nccl(self) -> bool:
        if not self.dist.enabled:
            return False
        import torch.distributed as dist

        return dist.get_backend() == "nccl"

    def step(self, y: torch.Tensor) -> float:
        tick()  # the thread count follows the machine's load (vaeflow_cli.runtime.threads)
        if self.channels_last and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)
        if self.objective is None:  # the first step under DDP
            self._freeze_unused(y)
            self.objective = self._wrap(self.model)
        if self._buffers:
            with torch.no_grad():
                torch._foreach_copy_(self._saved, self._buffers)  # one fused copy per step
        with self._autocast():
            # the loss: the bound in bits/dim averaged over the batch (with a KL warm-up or free bits, their weighting of its KL term)
            loss = training_loss(self.objective(y), kl_weight=self.kl_weight, free_bits=self.free_bits)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # on every rank, even for a bad loss: DDP expects it
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.opt)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else loss.new_zeros(())
        flags = torch.stack([loss.detach().float(), norm.detach().float().to(loss.device)])
        ok = torch.isfinite(flags).all().float()
        if self.dist.enabled:
            import torch.distributed as dist

            ok = ok.reshape(1)
            if not self.dist_backend_is_nccl():
                ok = ok.cpu()
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            ok = ok.to(flags.device).reshape(())
        loss_value, _norm_value, good = torch.cat([flags, ok.reshape(1)]).tolist()  # the one host sync
        if not good:
            if self._buffers:
                with torch.no_grad():
                    torch._foreach_copy_(self._buffers, self._saved)
            self.opt.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # lowers the scale after an overflow
                if math.isfinite(loss_value):
                    return math.nan
            self.bad_steps += 1
            return math.nan
        self.bad_steps = 0
        if self.grad_clip > 0 and grads:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, norm, foreach=True)
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss_value
