"""torch's process settings for a command that computes: the device (``resolve_device``), the
intra-op CPU thread count (``set_threads``) and, while training or timing runs, the backend flags
(``configure_backends``).

Threads (``train.threads``): torch's intra-op CPU thread count is set deliberately at the start
of training and timing (configure_backends), never left at torch's default of every core, which
oversubscribes a machine shared with other jobs or with the other ranks of a torchrun job. 0 (auto)
gives each process max(1, usable cores // LOCAL_WORLD_SIZE) and follows the load of other
processes from there (``vaeflow_cli.runtime.threads``).
"""

from __future__ import annotations

import contextlib

import torch

from vaeflow_cli.config.limits import DEVICE_NAMES, is_device_name
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.runtime.threads import LoadGovernor, busy_seconds, callers_threads, install, local_processes, resolve_threads, usable_cores


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The torch device for ``name`` (auto, cpu, cuda or cuda:N); ``option`` names where it came from
    in the one-line error (``--device`` for the commands that take it, ``train.device`` in configs)."""
    fix = {"--": "--device cpu", "de": 'device="cpu" (or "auto")'}.get(option[:2], "--set train.device=cpu (or auto)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_device_name(name):
        raise VaeflowError(f"{option} = {name!r} is not a device; use {DEVICE_NAMES}")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VaeflowError(f"{option} = {name!r} but no CUDA device is available; use {fix}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VaeflowError(
                f"{option} = {name!r} but this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


_applied_threads: int | None = None  # the count last logged by set_threads (log once per value)
_interop_sized = False  # only the first call in a process may size the inter-op pool
_warned: set[str] = set()  # the LOCAL_WORLD_SIZE problems already warned about (once per process)


def set_threads(threads: int, *, log: bool = True) -> int:
    """Apply ``train.threads`` to torch (``vaeflow_cli.runtime.threads`` has the policy and its numbers):
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
def configure_backends(device: torch.device, *, threads: int, tf32: bool):
    """The process-wide settings a training or timing run holds while it runs, the caller's again
    on exit (``callers_threads``, and the CUDA flags): torch's CPU thread count (``train.threads``,
    see set_threads) and, on CUDA, TF32 matmuls and convolutions where allowed (``train.tf32``)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    with callers_threads():
        try:
            set_threads(threads)
            if device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
                torch.backends.cudnn.allow_tf32 = bool(tf32)
                torch.backends.cudnn.benchmark = True
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags
