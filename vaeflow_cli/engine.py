"""The training step and what surrounds it on real hardware: mixed precision, TF32,
channels_last, torch.compile, PyTorch DDP under torchrun, and the guard against non-finite losses.
``train`` (the phases) and ``timing`` (Table 4) both run their steps through here.

Precision (``train.precision``): "fp32", "bf16" or "fp16" autocast for the forward pass (fp16 with
a gradient scaler). Whatever the precision, the model sums log-densities and flow log-determinants
in float32 (model.py casts decoder outputs and encoder parameters; the flows cast the coupling
outputs their log-dets are made of).

Threads (``train.threads``): torch's intra-op CPU thread count is set deliberately at the start
of training and timing (configure_backends), never left at torch's default of every core, which
oversubscribes a machine shared with other jobs or with the other ranks of a torchrun job. 0 (auto)
gives each process max(1, usable cores // LOCAL_WORLD_SIZE).

Distributed: under ``torchrun`` (WORLD_SIZE > 1) each process takes one device (NCCL on CUDA,
gloo on the CPU), the loader gives each rank a disjoint shard of the epoch's order, and
DistributedDataParallel averages gradients, so a step of world_size ranks with batch
B / world_size each is a step of global batch B (``train.<phase>.batch_size`` is the global batch).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from vaeflow_cli.errors import VaeflowError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_finite(self, value: float) -> bool:
        """True when the loss is finite on every rank (all ranks must skip a bad step together)."""
        ok = math.isfinite(value)
        if not self.enabled:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([1.0 if ok else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device_name: str) -> tuple[Dist, torch.device | None]:
    """Join the torchrun job described by the environment, if any: (Dist, the device this rank
    must use, or None to resolve ``device_name`` as usual)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), None
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return Dist(rank, world, local), torch.device("cuda", local)
    return Dist(rank, world, local), torch.device("cpu")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS reports one (taskset,
    cgroups cpusets, Slurm), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def resolve_threads(threads: int) -> int:
    """The intra-op thread count for ``train.threads``: itself when positive; 0 (auto) gives each
    process of this node an equal share of the usable cores, max(1, cores // LOCAL_WORLD_SIZE)
    (LOCAL_WORLD_SIZE: processes torchrun started on this node; 1 when run alone)."""
    if threads < 0:
        raise VaeflowError(f"train.threads must be >= 0 (0 = one share of the usable cores per process), got {threads}")
    if threads > 0:
        return threads
    try:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_world = 1
    return max(1, usable_cores() // local_world)


_applied_threads: int | None = None  # the count last set and logged by set_threads (log once per value)


def set_threads(threads: int) -> int:
    """Apply ``train.threads`` (see resolve_threads) to torch: intra-op threads always, and the
    inter-op pool as well while it has not started (torch refuses to resize it afterwards). Logs
    the count on stderr the first time it is chosen. Returns the count."""
    global _applied_threads
    n = resolve_threads(int(threads))
    torch.set_num_threads(n)
    if _applied_threads is None:  # only the first call in a process may size the inter-op pool
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # parallel work already ran (or the pool was sized): keep it
            pass
    if n != _applied_threads:
        from vaeflow_cli.console import log

        source = "train.threads" if threads else f"auto: {usable_cores()} usable cores / {os.environ.get('LOCAL_WORLD_SIZE', '1')} local processes"
        log(f"torch: {n} intra-op thread{'s' if n != 1 else ''} ({source})")
        _applied_threads = n
    return n


def configure_backends(device: torch.device, train_cfg: dict) -> None:
    """The process-wide settings a training or timing run starts with: torch's CPU thread count
    (``train.threads``, see set_threads) and, on CUDA, TF32 matmuls and convolutions where allowed
    (``train.tf32``)."""
    set_threads(train_cfg.get("threads", 0))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(train_cfg["tf32"])
        torch.backends.cudnn.allow_tf32 = bool(train_cfg["tf32"])
        torch.backends.cudnn.benchmark = True


class Objective(nn.Module):
    """The per-image loss, bits/dim of the bound, as a module whose forward DDP and torch.compile
    can wrap: y (B, C, H, W) -> bpd (B,)."""

    def __init__(self, model: nn.Module, *, use_flow: bool) -> None:
        super().__init__()
        self.model = model
        self.use_flow = use_flow

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.model.bound(y, use_flow=self.use_flow).bpd


class Stepper:
    """Runs training steps of one phase: autocast, gradient scaling, clipping, the Adam step, and
    the non-finite-loss guard. ``step`` returns the batch's loss, or NaN when the step was skipped
    because the loss was not finite (on any rank); ``bad_steps`` counts consecutive skips."""

    def __init__(self, model: nn.Module, params: list, opt: torch.optim.Optimizer, *, use_flow: bool,
                 device: torch.device, precision: str = "fp32", grad_clip: float = 0.0, compile: bool = False,
                 channels_last: bool = False, dist: Dist | None = None) -> None:
        if precision not in PRECISIONS:
            raise VaeflowError(f"train.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise VaeflowError("train.precision = \"fp16\" needs a CUDA device; use bf16 or fp32 on the CPU")
        self.params, self.opt, self.device = params, opt, device
        self.dtype = PRECISIONS[precision]
        self.grad_clip = grad_clip
        self.dist = dist or Dist()
        self.channels_last = channels_last
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        objective: nn.Module = Objective(model, use_flow=use_flow)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        self.objective = torch.compile(objective) if compile else objective
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.bad_steps = 0

    def step(self, y: torch.Tensor) -> float:
        if self.channels_last and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.objective(y).float().mean()
        value = loss.item()
        self.opt.zero_grad(set_to_none=True)
        if not self.dist.all_finite(value):
            self.bad_steps += 1
            if self.dist.enabled:  # DDP expects a backward on every rank: a zero one keeps them in step
                (sum(p.sum() for p in self.params) * 0.0).backward()
                self.opt.zero_grad(set_to_none=True)
            return math.nan
        self.bad_steps = 0
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return value
