"""Writing files so that nothing is ever half-written: a temporary file beside the target,
flushed and fsynced, renamed over it, the folder fsynced (``atomic_write``). Used for checkpoints,
configs, metrics, caches, samples and results alike."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vaeflow_cli.errors import RuntimeFailure, describe_os_error


def atomic_write(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, and rename it over
    ``path``. On any failure the temporary file is removed and ``path`` is left as it was; an OS
    error (disk full, permission denied) is raised as one line (RuntimeFailure)."""
    path = Path(path)
    if path.is_symlink():  # write the file the link points to; the link stays
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():  # a device or FIFO: write into it
        try:
            with open(path, "wb") as fh:
                write(fh)
        except OSError as exc:
            raise RuntimeFailure(f"cannot write {describe_os_error(exc, path)}") from None
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _PENDING.add(tmp)
        with os.fdopen(fd, "wb") as fh:
            recorder = _WriteErrors(fh)
            try:
                write(recorder)
            except Exception:
                if recorder.error is not None:  # torch.save reports a failed write as a RuntimeError
                    raise recorder.error from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _PENDING.discard(tmp)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
            _PENDING.discard(tmp)
        if isinstance(exc, OSError):
            raise RuntimeFailure(f"cannot write {describe_os_error(exc, path)} ({path} is unchanged)") from None
        raise
    fsync_dir(path.parent)


_PENDING: set[str] = set()  # temporary files of atomic writes in progress


def remove_pending_temporaries() -> None:
    """Delete the temporary files of atomic writes in progress (a signal handler about to exit
    calls it, so an interrupted write leaves nothing behind)."""
    for tmp in list(_PENDING):
        try:
            os.unlink(tmp)
        except OSError:
            pass


class _WriteErrors:
    """A binary file that remembers the OSError of a failed write (disk full), which writers such as
    torch.save would otherwise turn into an unrelated RuntimeError."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._fh, name)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash right after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))
