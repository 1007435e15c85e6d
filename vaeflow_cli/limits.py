"""Bounds on what a command may allocate, checked before the work starts.

A size that the user chooses (``--n`` images, ``--pairs`` x ``--steps``) is refused with one line
when its output alone would not fit in the memory that is available now, instead of failing
later in the allocator (or being killed by the kernel's out-of-memory killer).
"""

from __future__ import annotations

import os

from vaeflow_cli.errors import VaeflowError


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux: MemAvailable of /proc/meminfo;
    elsewhere the free physical pages), or None when the OS does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def require_memory(nbytes: int, what: str, fix: str) -> None:
    """Raise VaeflowError (one line: ``what`` needs N GiB, M GiB are available; ``fix``) when
    ``nbytes`` exceed the available memory."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise VaeflowError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB are available; {fix}")
