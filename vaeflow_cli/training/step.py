"""The training step and what surrounds it on real hardware: mixed precision, TF32,
channels_last, torch.compile, PyTorch DDP under torchrun, and the guard against non-finite losses.
``training.loop`` (the phases) and ``timing`` (Table 4) both run their steps through here.

Precision (``train.precision``): "fp32", "bf16" or "fp16" autocast for the forward pass (fp16 with
a gradient scaler). Whatever the precision, the model sums log-densities and flow log-determinants
in float32 (model/vaeflow.py casts decoder outputs and encoder parameters; the flows cast the coupling
outputs their log-dets are made of).

Threads (``train.threads``): torch's intra-op CPU thread count is set deliberately at the start
of training and timing (configure_backends), never left at torch's default of every core, which
oversubscribes a machine shared with other jobs or with the other ranks of a torchrun job. 0 (auto)
gives each process max(1, usable cores // LOCAL_WORLD_SIZE) and follows the load of other
processes from there (``vaeflow_cli.training.threads``).

Distributed: under ``torchrun`` (WORLD_SIZE > 1) each process takes one device (NCCL on CUDA,
gloo on the CPU), the loader gives each rank a disjoint shard of the epoch's order, and
DistributedDataParallel averages gradients, so a step of world_size ranks with batch
B / world_size each is a step of global batch B (``train.<phase>.batch_size`` is the global batch).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.vaeflow import training_loss
from vaeflow_cli.training.threads import LoadGovernor, busy_seconds, callers_threads, install, local_processes, resolve_threads, tick, usable_cores

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision (checked by the config)


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

    def main_only(self, fn):
        """``fn()`` on rank 0 alone, its result on every rank. An error there is raised on every
        rank (as a VaeflowError of the same class and message), so no rank is left waiting in a
        collective for a rank that has failed."""
        if not self.enabled:
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except VaeflowError as exc:
                outcome = ("error", type(exc).__name__, str(exc))
                self.broadcast(outcome)
                raise
            except BaseException as exc:
                self.broadcast(("error", "RuntimeFailure", f"rank 0 failed: {type(exc).__name__}: {exc}"))
                raise
        outcome = self.broadcast(outcome)
        if outcome[0] == "ok":
            return outcome[1]
        from vaeflow_cli import errors

        raise getattr(errors, outcome[1], errors.VaeflowError)(outcome[2])

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does at the
        start of each forward pass: after an epoch's last step each rank holds its own."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def check_replicas(self, model: nn.Module, where: str) -> None:
        """Every rank must hold bit-identical weights and buffers (one digest per tensor, gathered).
        A difference means a component keeps per-rank state (a data-dependent initialisation from
        each rank's own batch, say): raised as one line naming the first tensor, on every rank."""
        if not self.enabled:
            return
        import hashlib

        digests = {
            k: hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in model.state_dict().items()
            if v.numel() and v.dtype != torch.bfloat16
        }
        every = self.gather(digests)
        differ = [k for k in digests if any(d.get(k) != digests[k] for d in every)]
        if differ:
            from vaeflow_cli.errors import RuntimeFailure

            section = differ[0].split(".")[0]
            raise RuntimeFailure(
                f"the DDP replicas differ {where} ({len(differ)} tensors, first: {differ[0]!r}): the component of "
                f"[model.{section}] keeps per-rank state (e.g. a data-dependent initialisation from each rank's own "
                "batch) and is not DDP-safe; train it in one process, or fix the component (vaeflow_cli.model.flows.global_mean)"
            )

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The torch device for ``name`` (auto, cpu, cuda or cuda:N); ``option`` names where it came from
    in the one-line error (``--device`` for the commands that take it, ``train.device`` in configs)."""
    fix = {"--": "--device cpu", "de": 'device="cpu" (or "auto")'}.get(option[:2], "--set train.device=cpu (or auto)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise VaeflowError(f"{option} = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise VaeflowError(f"{option} = {name!r}: vaeflow runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VaeflowError(f"{option} = {name!r} but no CUDA device is available; use {fix}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VaeflowError(
                f"{option} = {name!r} but this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


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


_applied_threads: int | None = None  # the count last logged by set_threads (log once per value)
_interop_sized = False  # only the first call in a process may size the inter-op pool
_warned: set[str] = set()  # the LOCAL_WORLD_SIZE problems already warned about (once per process)


def set_threads(threads: int, *, log: bool = True) -> int:
    """Apply ``train.threads`` to torch (``vaeflow_cli.training.threads`` has the policy and its numbers):
    a positive count as it is, for the whole process; 0 (auto) starts at ``resolve_threads(0)``
    and installs a ``LoadGovernor`` that lowers the count while other processes keep this
    process's cores busy (Linux; where ``/proc/stat`` cannot be read, or the share is one thread,
    the count stays fixed). Sizes the inter-op pool too while it has not started (torch refuses to
    resize it afterwards). Logs the count on stderr the first time it is chosen, unless ``log``
    is False. Returns the starting count.
    :raises VaeflowError: a negative count."""
    global _applied_threads, _interop_sized
    n = resolve_threads(int(threads))
    local, problem = local_processes()
    if int(threads) == 0 and problem is not None and problem not in _warned:
        from vaeflow_cli.console import warning

        _warned.add(problem)
        warning(problem)
    torch.set_num_threads(n)
    if not _interop_sized:
        _interop_sized = True
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # parallel work already ran (or the pool was sized): keep it
            pass
    adaptive = int(threads) == 0 and n > 1 and busy_seconds() is not None
    install(LoadGovernor(n, torch.set_num_threads) if adaptive else None)
    if log and n != _applied_threads:
        from vaeflow_cli.console import log as log_line

        source = "train.threads" if threads else f"auto: {usable_cores()} usable cores / {local} local process{'es' if local != 1 else ''}"
        more = "; fewer while other processes keep these cores busy" if adaptive else ""
        log_line(f"torch: {n} intra-op thread{'s' if n != 1 else ''} ({source}{more})")
        _applied_threads = n
    return n


@contextlib.contextmanager
def configure_backends(device: torch.device, train_cfg: dict):
    """The process-wide settings a training or timing run holds while it runs, the caller's again
    on exit (``callers_threads``, and the CUDA flags): torch's CPU thread count (``train.threads``,
    see set_threads) and, on CUDA, TF32 matmuls and convolutions where allowed (``train.tf32``)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    with callers_threads():
        try:
            set_threads(train_cfg.get("threads", 0))
            if device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = bool(train_cfg["tf32"])
                torch.backends.cudnn.allow_tf32 = bool(train_cfg["tf32"])
                torch.backends.cudnn.benchmark = True
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags


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
        tick()  # the thread count follows the machine's load (vaeflow_cli.training.threads)
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
