"""PyTorch DDP under torchrun: this process's place in the job (``Dist``: rank, world size, and
the collectives vaeflow uses) and joining the job (``init_distributed``).

Under ``torchrun`` (WORLD_SIZE > 1) each process takes one device (NCCL on CUDA, gloo on the CPU),
the loader gives each rank a disjoint shard of the epoch's order, and DistributedDataParallel
averages gradients, so a step of world_size ranks with batch B / world_size each is a step of
global batch B (``train.<phase>.batch_size`` is the global batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from vaeflow_cli.errors import VaeflowError


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
