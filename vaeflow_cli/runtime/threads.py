"""The CPU thread policy of every vaeflow command: how many intra-op threads torch runs, chosen
once from the cores and then adapted to the load that other processes put on them. Imports
neither torch nor numpy.

Thread count (``train.threads``): set deliberately at the start of every command that computes,
never left at torch's default. A positive count is used as it is, for the whole command. 0 (auto)
gives each process of this node an equal share of its usable cores (``resolve_threads``), and
while the command runs, a ``LoadGovernor`` lowers the count when other processes keep these
cores busy and raises it again when they stop (Linux; elsewhere the count stays as chosen).

Why adapt. torch's CPU kernels run on GNU OpenMP (libgomp, bundled with the PyPI wheels), whose
threads spin for a while at the end of each parallel region before they sleep (libgomp's
``GOMP_SPINCOUNT``, 300,000 iterations by default). Alone on its cores that saves a wake-up per
region; beside another CPU-bound job, the thread it waits for is often descheduled, and the
spinning thread burns its time slice waiting. A small model runs thousands of short parallel
regions per step, so the waste compounds: its steps slow down far more than a fair share of
the cores explains. One thread has no team to wait for. ``benchmarks/contention.py`` measures the alternatives (``docs/gpu.md``, "CPU
threads", has the tables): sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) slows every step
alone (a wake-up per region), a shorter spin (``GOMP_SPINCOUNT``) is worse under
contention, and a single thread is slower alone. The governor keeps libgomp's default alone,
at its speed, and drops to what the other processes leave free when they appear, near a fair
share. A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left as it is.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable

INTERVAL_S = 2.0  # seconds between two looks at the load
FIRST_LOOK_S = 0.5  # the first look comes sooner: a command that starts beside a busy job adapts early
MARGIN = 0.5  # cores: the free cores are rounded to the nearest whole one


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
    (LOCAL_WORLD_SIZE: processes torchrun started on this node; 1 when run alone).
    Raises VaeflowError for a negative count."""
    if threads < 0:
        from vaeflow_cli.errors import VaeflowError

        raise VaeflowError(f"train.threads must be >= 0 (0 = one share of the usable cores per process), got {threads}")
    if threads > 0:
        return threads
    return max(1, usable_cores() // local_processes()[0])


def local_processes() -> tuple[int, str | None]:
    """The processes that share this node's cores, from ``LOCAL_WORLD_SIZE`` (torchrun sets it;
    unset when run alone: 1), and what is wrong with the variable (None when nothing): a value
    that is not a whole number >= 1 counts as 1 process, and the problem is named so that the
    caller can say so (``devices.set_threads`` warns and prints the count it used)."""
    raw = os.environ.get("LOCAL_WORLD_SIZE")
    if raw is None:
        return 1, None
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value >= 1:
        return value, None
    return (
        1,
        f"LOCAL_WORLD_SIZE={raw!r} is not a whole number >= 1 (torchrun sets it to the processes it starts on this node); counted as 1 local process",
    )


PROC_STAT = "/proc/stat"  # where busy_seconds reads the load (tests point it at a file of their own)


def busy_seconds(cpus: set[int] | None = None, path: str | None = None) -> float | None:
    """CPU seconds spent busy (user, nice, system, irq, softirq, steal) since boot on the CPUs
    ``cpus`` (all when None), from Linux's ``/proc/stat``; None where it cannot be read or does
    not have the kernel's layout (a malformed or foreign file): the count then stays fixed."""
    try:
        with open(PROC_STAT if path is None else path, encoding="ascii") as f:
            lines = f.read().splitlines()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    try:
        return _busy_ticks(lines, cpus) / hz if hz > 0 else None
    except (ValueError, TypeError):  # a line that is not "cpuN t1 t2 ...", or no such line
        return None


def _busy_ticks(lines: list[str], cpus: set[int] | None) -> int:
    """The busy ticks of the ``cpuN`` lines of /proc/stat (N in ``cpus``); ValueError for a line
    that does not parse as the kernel writes it, or when no line counts."""
    total = 0
    seen = False
    for line in lines:
        name, *fields = line.split() or [""]
        if not name.startswith("cpu") or name == "cpu":
            continue
        if not name[3:].isdigit() or not 4 <= len(fields) or not all(v.isdigit() for v in fields):
            raise ValueError(f"not a CPU line of /proc/stat: {line[:80]!r}")
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in (fields + ["0"] * 8)[:8])
        total += user + nice + system + irq + softirq + steal
        seen = True
    if not seen:
        raise ValueError("no CPU lines")
    return total


def own_seconds() -> float:
    """CPU seconds this process (all its threads) has run, user and system."""
    t = os.times()
    return t.user + t.system


class LoadGovernor:
    """Adapts the intra-op thread count to the cores that other processes leave free.

    Every ``INTERVAL_S`` seconds (the first time after ``FIRST_LOOK_S``), ``tick`` measures how
    many of this process's cores other processes kept busy since the last look (busy CPU seconds
    of those cores from ``busy_seconds``, minus this process's own, per wall second) and asks for
    ``max(1, min(ceiling, floor(cores - others + MARGIN)))`` threads: fewer at once, more only
    when two looks in a row agree (a single quiet window does not bring the spinning back).
    ``apply(n)`` sets the count (torch.set_num_threads). The clock and the two CPU readers are
    parameters so that tests can drive it.
    """

    def __init__(
        self,
        ceiling: int,
        apply: Callable[[int], None],
        *,
        cores: set[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        busy: Callable[[], float | None] | None = None,
        own: Callable[[], float] = own_seconds,
    ) -> None:
        self.ceiling = ceiling
        self.apply = apply
        self.cores = cores if cores is not None else _affinity()
        self.clock = clock
        self.busy = busy if busy is not None else (lambda: busy_seconds(self.cores))
        self.own = own
        self.current = ceiling
        self.changes = 0  # how often the count changed (for logs and tests)
        self._wanted_more = False
        self._last = self._sample()
        self._next = self._last[0] + FIRST_LOOK_S

    def _sample(self) -> tuple[float, float | None, float]:
        return self.clock(), self.busy(), self.own()

    def others(self, before, after) -> float | None:
        """Cores kept busy by other processes between two samples; None where unknown."""
        (t0, b0, o0), (t1, b1, o1) = before, after
        if b0 is None or b1 is None or t1 <= t0:
            return None
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (t1 - t0))

    def target(self, others: float) -> int:
        """The count for ``others`` busy cores: what is left, at least 1, at most the ceiling."""
        n_cores = len(self.cores) if self.cores else self.ceiling
        return max(1, min(self.ceiling, math.floor(n_cores - others + MARGIN)))

    def tick(self) -> int:
        """Look at the load when it is time (cheap otherwise: one clock read); returns the count."""
        now = self.clock()
        if now < self._next:
            return self.current
        sample = self._sample()
        others = self.others(self._last, sample)
        self._last, self._next = sample, now + INTERVAL_S
        if others is None:
            return self.current
        want = self.target(others)
        if want < self.current or (want > self.current and self._wanted_more):
            self.current = want
            self.changes += 1
            self.apply(want)
        self._wanted_more = want > self.current
        return self.current


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


_governor: LoadGovernor | None = None


def install(governor: LoadGovernor | None) -> None:
    """Make ``governor`` the one ``tick`` drives (None: keep the count fixed)."""
    global _governor
    _governor = governor


def installed() -> LoadGovernor | None:
    """The governor ``tick`` drives now (None: none), to be put back with ``install``."""
    return _governor


def tick() -> None:
    """Adapt the thread count to the load if an auto count is in force. Called between units of
    work (a training step, a batch of samples or of bound evaluations) on the main thread: OpenMP's
    thread count is a setting of the calling thread."""
    if _governor is not None:
        _governor.tick()


@contextlib.contextmanager
def callers_threads():
    """Run a block (or, as a decorator, a function) that sets vaeflow's thread policy
    (``devices.set_threads``) and give the caller back what it had on exit, however the block ends:
    torch's intra-op thread count and the load governor that ``tick`` drives (none, for a caller
    that never set one). A Python caller of ``train_phase``, ``evaluate_run`` or a command run in
    its process keeps its own thread count, and nothing adapts it afterwards. (The inter-op pool
    can be sized once per process only: the first call's size stays.) torch is imported when the
    block runs, not with this module."""
    import torch

    count, governor = torch.get_num_threads(), _governor
    try:
        yield
    finally:
        install(governor)
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)


def keeps_callers_threads(fn: Callable) -> Callable:
    """Decorate a function that sets vaeflow's thread policy: when it returns or raises, its caller
    has its own thread count and governor back (``callers_threads``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with callers_threads():
            return fn(*args, **kwargs)

    return wrapper
