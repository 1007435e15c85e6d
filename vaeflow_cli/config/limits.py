"""Bounds on what a command may allocate or open, checked before the work starts.

A size that the user chooses (``--n`` images, ``--pairs`` x ``--steps``) is refused with one line
when its output alone would not fit in the memory that is available now, instead of failing
later in the allocator (or being killed by the kernel's out-of-memory killer).
"""

from __future__ import annotations

import os
import re

from vaeflow_cli.errors import VaeflowError

# The argument checks shared by the Python API (load_run, Run, evaluate_run, train_phase): one line
# naming the argument; the CLI's options declare the same bounds (its messages name the options).

TEMPERATURE_MAX = 100.0
"""The largest sampling temperature accepted (the paper samples at 0.5): T multiplies the decoder's
standard deviation, and far above this the float32 images overflow to nothing but noise."""


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
"""The devices vaeflow runs on (``train.device``, ``--device``, the Python API's ``device``);
whether the machine has the one named is asked when a command starts (runtime.devices.resolve_device)."""

_DEVICE_NAME = re.compile(r"auto|cpu(:0)?|cuda(:[0-9]+)?")  # cpu:0 is str(torch.device("cpu", 0))


def is_device_name(value) -> bool:
    """Whether ``value`` is a str naming one of DEVICE_NAMES (N a CUDA device index)."""
    return isinstance(value, str) and _DEVICE_NAME.fullmatch(value) is not None


SEED_MAX = 2**32 - 1
"""Seeds are 0 .. 2**32 - 1 (``--seed``, ``train.seed``, the Python API): torch's CPU generator keeps
the low 32 bits of a seed, so larger seeds would repeat smaller ones."""

N_SAMPLES_MAX = 10**9
"""The most generated images ``evaluate`` scores (``--n-samples``, ``evaluate_run(n_samples=)``); the
memory check refuses far fewer on most machines."""

IWAE_K_MAX = 100_000
"""The largest IWAE sample count (``evaluate --iwae-k``, ``Run.log_prob_bound``; the IWAE paper uses 5,000)."""


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


def require_image_memory(count: int, image_shape, what: str, fix: str) -> None:
    """Refuse (one line) to make ``count`` images of ``image_shape`` (C, H, W) that would not fit:
    float32 values, about five copies alive at once (the model's activations and the output)."""
    per_image = 1
    for side in image_shape:
        per_image *= int(side)
    require_memory(5 * 4 * int(count) * per_image, f"{what} ({count} images of {'x'.join(map(str, image_shape))})", fix)


def file_problem(path) -> str | None:
    """Why ``path`` cannot be read as a data file (missing, a directory, a device, a FIFO that
    would block, no permission), or None for a regular file. Nothing is opened."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except PermissionError:
        return "permission denied"
    except ValueError:
        return "not a valid path (it contains a NUL byte)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None


def check_regular_file(path, what: str, fix: str) -> None:
    """One VaeflowError ("WHAT PATH is a directory...; FIX") unless ``path`` is a regular file: a
    FIFO would block the reader forever, a device never ends."""
    found = file_problem(path)
    if found is not None:
        raise VaeflowError(f"{what} {path} {found}; {fix}")


def _is_integer(value) -> bool:
    import numpy as np

    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def check_count(value, name: str, *, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in [low, high], or one VaeflowError naming ``name``."""
    if not _is_integer(value) or value < low or (high and value > high):
        raise VaeflowError(f"{name} must be an integer >= {low}" + (f" and <= {high}" if high else "") + f", not {value!r}")
    return int(value)


def check_bool(value, name: str) -> bool:
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise VaeflowError(f"{name} must be True or False, not {value!r}")
    return bool(value)


def check_seed(seed, name: str = "seed") -> int:
    """A seed in [0, SEED_MAX], or one VaeflowError."""
    if not _is_integer(seed) or not 0 <= seed <= SEED_MAX:
        raise VaeflowError(f"{name} must be an integer in [0, {SEED_MAX}], not {seed!r}")
    return int(seed)


def check_temperature(t, name: str = "temperature") -> float:
    """A finite temperature in [0, TEMPERATURE_MAX] (NaN fails the comparison), or one VaeflowError."""
    import numpy as np

    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)) or not 0 <= t <= TEMPERATURE_MAX:
        raise VaeflowError(f"{name} must be a number in [0, {TEMPERATURE_MAX:g}], not {t!r}")
    return float(t)


def temperature_list(temperatures, name: str = "temperatures") -> list[float]:
    """A sequence, 1-D array or tensor of temperatures as a checked, non-empty list of floats."""
    import numpy as np

    if isinstance(temperatures, (str, bytes, set, dict)) or not hasattr(temperatures, "__len__") or np.ndim(temperatures) != 1:
        raise VaeflowError(f"{name} must be a list (or 1-D array) of numbers, not {type(temperatures).__name__}")
    try:
        values = [t.item() if hasattr(t, "item") else t for t in temperatures]
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:  # a meta or sparse tensor, say
        raise VaeflowError(f"{name} cannot be read as numbers ({type(exc).__name__}); pass a list of floats or a dense CPU array") from None
    if not values:
        raise VaeflowError(f"{name} is empty; give one or more")
    return [check_temperature(t) for t in values]
