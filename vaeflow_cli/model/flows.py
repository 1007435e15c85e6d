"""Building blocks shared by flow components (built-in and third-party)."""

from __future__ import annotations

import torch
from torch import nn


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over the ranks of a torchrun job (an all-reduce, in float64,
    without gradient); ``t`` itself when torch.distributed is not initialised or the job has one
    process. Every rank must call it, in the same order and with the same shape, or the job waits
    forever. Returned in ``t``'s dtype and on its device. See ``global_mean`` for the contract."""
    if not _distributed():
        return t
    import torch.distributed as dist

    flat = t.detach().reshape(-1).double()
    if dist.get_backend() == "nccl" and flat.device.type != "cuda":
        flat = flat.cuda()
    dist.all_reduce(flat)
    return flat.reshape(t.shape).to(device=t.device, dtype=t.dtype)


def global_mean(t: torch.Tensor, weight: float | None = None) -> torch.Tensor:
    """The mean of ``t`` over the ranks of a torchrun job (all-reduced in float64, without
    gradient); ``t`` itself when torch.distributed is not initialised or the job has one process.
    Every rank must call it, in the same order and with the same shape, or the job waits forever.

    ``weight``: how many items this rank's ``t`` averages (its local batch size, say); the result
    is then sum_r weight_r * t_r / sum_r weight_r, the mean over the whole global batch even when
    the ranks' batches differ in size. Without it the ranks count equally.

    The contract for components with data-dependent initialisation (or any other change of their
    weights or buffers computed from data rather than from gradients): it must be IDENTICAL ON
    EVERY RANK. DistributedDataParallel makes the replicas equal once, when it wraps the model,
    and afterwards only averages gradients, so weights set from each rank's own shard of the batch
    stay different for the rest of training (and only rank 0's are saved). Compute the statistics
    of the global batch instead: ``global_mean`` of the per-rank mean and of E[x^2] (weighted by
    the per-rank count), a variance as E[x^2] - E[x]^2 of those. Every replica then holds what one
    process would compute on the whole global batch, up to float rounding (Glow's
    ``DataInitActNorm`` in vaeflow_plugins.glow does this)."""
    if not _distributed():
        return t
    w = 1.0 if weight is None else float(weight)
    flat = torch.cat([t.detach().reshape(-1).double() * w, torch.tensor([w], dtype=torch.float64, device=t.device)])
    total = global_sum(flat)
    return (total[:-1] / total[-1]).reshape(t.shape).to(dtype=t.dtype)


class FlowSequence(nn.Module):
    """Composition of bijections, each with ``forward(x) -> (y, log_det)`` and
    ``inverse(y) -> (x, log_det)``; log-determinants (B,) add."""

    def __init__(self, layers) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, y):
        log_det = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y)
            log_det = log_det + ld
        return y, log_det


class WithCondition(nn.Module):
    """A conditional flow with its condition held fixed, as an unconditional flow: ``forward(x)`` is
    ``flow(x, condition=condition)`` and ``inverse(y)`` is ``flow.inverse(y, condition=condition)``.
    ``condition`` is the decoder's (mean, std), each (B, C, H, W) or broadcastable to the inputs'
    batch; they are buffers (not in the state dict), so ``.double()`` and ``.to()`` move them
    with the flow. How the checks of a flow (invertibility, log-determinants against autograd,
    identity at initialisation) apply to a conditional flow: for each fixed condition it must be
    an ordinary one."""

    def __init__(self, flow: nn.Module, condition: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.flow = flow
        self.identity_at_init = getattr(flow, "identity_at_init", True)  # the wrapped flow's declaration (the Flow protocol)
        mean, std = condition
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def _condition(self, x: torch.Tensor):
        b = x.shape[0]
        if self.mean.shape[0] == b:
            return self.mean, self.std
        return self.mean.expand(b, *self.mean.shape[1:]), self.std.expand(b, *self.std.shape[1:])

    def forward(self, x):
        return self.flow(x, condition=self._condition(x))

    def inverse(self, y):
        return self.flow.inverse(y, condition=self._condition(y))


def is_conditional(flow) -> bool:
    """Whether a flow declares the ``ConditionalFlow`` protocol (``conditional = True``)."""
    return bool(getattr(flow, "conditional", False))
