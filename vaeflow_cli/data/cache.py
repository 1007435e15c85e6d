"""The cache of decoded splits: a uint8 array kept as a memory-mapped ``.npy`` in the cache folder,
keyed by the source files (``file_signature``) and the preprocessing, written atomically."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from vaeflow_cli.config.limits import file_problem
from vaeflow_cli.errors import VaeflowError, first_line

CACHE_ENV = "VAEFLOW_CACHE_DIR"


def default_cache_dir() -> Path:
    """The folder where datasets cache their decoded splits unless ``data.cache_dir`` names one:
    ``$VAEFLOW_CACHE_DIR/datasets`` when that variable is set, else ``datasets`` in the user's
    cache directory (platformdirs: ``$XDG_CACHE_HOME/vaeflow``, by default ``~/.cache/vaeflow``,
    on Linux; ``~/Library/Caches/vaeflow`` on macOS; ``%LOCALAPPDATA%\\vaeflow\\Cache`` on Windows).
    Never inside the images' folder, which may be read-only or shared."""
    configured = os.environ.get(CACHE_ENV, "")
    if configured:
        return Path(configured).expanduser() / "datasets"
    import platformdirs

    return platformdirs.user_cache_path("vaeflow", appauthor=False) / "datasets"


CACHE_FIX = f"set data.cache_dir (or {CACHE_ENV}) to a folder you may write to"


def cache_path(cache_dir: Path, name: str, key_parts) -> Path:
    """Where ``cached_array`` keeps the array for these key parts."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return Path(cache_dir) / f"{name}-{digest}.npy"


def cached_array(cache_dir: Path, name: str, key_parts, build) -> np.ndarray:
    """A uint8 array cached as ``cache_dir/name-<hash>.npy`` and memory-mapped on later calls.

    The hash covers ``key_parts`` (the source files' names, sizes and mtimes and the preprocessing
    parameters), so changing any of them builds a new cache; ``build()`` makes the array. The file
    is written to a temporary name, fsynced and renamed, so an interrupted build leaves no cache."""
    from vaeflow_cli.files import atomic_write

    path = cache_path(cache_dir, name, key_parts)
    if os.path.lexists(cache_dir) and not Path(cache_dir).is_dir():
        raise VaeflowError(f"the cache folder {cache_dir} is not a folder (a file, or a broken link); {CACHE_FIX}")
    try:
        present = path.exists()
    except OSError as exc:
        raise VaeflowError(f"cannot look into the cache folder {cache_dir} ({exc.strerror}); {CACHE_FIX}") from None
    if present:
        problem = file_problem(path)
        if problem is not None:
            raise VaeflowError(f"cache {path} {problem}; delete it to rebuild the cache")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 -- truncated, empty (EOFError), a bad header, object arrays
            raise VaeflowError(f"cache {path} is unreadable ({type(exc).__name__}: {first_line(exc)}); delete it to rebuild") from None
    _check_cache_writable(Path(cache_dir), path)  # before the build: decoding every image first would be wasted
    array = np.ascontiguousarray(build())
    try:
        atomic_write(path, lambda fh: np.save(fh, array))
    except OSError as exc:
        raise VaeflowError(f"cannot write the cache {path} ({exc.strerror or exc}); {CACHE_FIX}") from None
    except VaeflowError as exc:  # atomic_write's one line; a folder that may not be written is the setting's fault (exit 2)
        if getattr(exc, "errno", None) in _SETTING_ERRNOS:
            raise VaeflowError(f"cannot write the cache {path} ({os.strerror(exc.errno)}); {CACHE_FIX}") from None
        raise
    return np.load(path, mmap_mode="r")


_SETTING_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}
"""The write errors that the cache folder's setting causes (not the machine: a full disk)."""


def _check_cache_writable(cache_dir: Path, path: Path) -> None:
    """One VaeflowError naming the setting (``CACHE_FIX``) when the cache folder cannot be made or
    written: a part of it is a file, or the nearest folder that exists may not be written."""
    parent = cache_dir
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VaeflowError(f"cannot write the cache {path} ({parent} is not a folder); {CACHE_FIX}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VaeflowError(f"cannot write the cache {path} (the folder {parent} may not be written); {CACHE_FIX}")


def file_signature(paths, *, skip_bad: bool = False) -> list:
    """(name, size, mtime_ns) of each file, for cache keys. A file that cannot be looked at (missing,
    a symbolic link to nothing, a loop of links, a folder that may not be searched) is one clear
    error, or with ``skip_bad`` (name, None, why) in the key: the decoder then skips it as
    unreadable, and the key changes when the file appears."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, ValueError) as exc:  # permission denied on a folder, a NUL byte in a name
            why = _unstattable(p, exc)
            if skip_bad:
                out.append([os.path.basename(p), None, why])
                continue
            fix = "check data.root" if isinstance(exc, FileNotFoundError) and not os.path.islink(p) else "fix or remove it"
            raise VaeflowError(f"{p}: {why}; {fix}, or set data.skip_bad = true to skip unreadable images") from None
        out.append([os.path.basename(p), st.st_size, st.st_mtime_ns])
    return out


def _unstattable(path, exc: BaseException) -> str:
    """Why ``os.stat(path)`` failed, in words: a broken or looping symbolic link is named as one."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a loop of symbolic links (the link leads back to itself)"
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"a symbolic link to {target}, which does not exist"
        return "not found"
    return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
