"""Writing files so that nothing is ever half-written: a temporary file beside the target,
flushed and fsynced, renamed over it, the folder fsynced (``atomic_write``). Used for checkpoints,
configs, metrics, caches, samples and results alike.

The file keeps the permissions a plain ``open(path, "w")`` would give it: a new file gets 0666
less the umask (the temporary file is created with that mode, so the kernel applies the umask and
any default ACL of the folder), and a file that is replaced keeps its own mode."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from vaeflow_cli.errors import RuntimeFailure, VaeflowError, describe_os_error, is_input_os_error, shorten_words


def can_create_in(folder: Path) -> bool:
    """Whether an entry can be created in the existing ``folder``, tried (an empty folder made and
    removed at once): ``os.access`` says yes to root everywhere, also on a file system that takes
    no new entries (/proc, a read-only mount)."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vaeflow-probe-", dir=folder))
    except OSError:
        return False
    return True


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest ancestor that does (what a writer that makes
    the missing folders creates its first entry in)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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
        fd, tmp = _create_temporary(path)
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
            kind = VaeflowError if is_input_os_error(exc) else RuntimeFailure  # a path too long is bad input (exit 2)
            failure = kind(f"cannot write {describe_os_error(exc, path)} ({shorten_words(str(path))} is unchanged)")
            failure.errno = exc.errno  # for a caller that knows which setting named the path (the data cache)
            raise failure from None
        raise
    fsync_dir(path.parent)


_PENDING: set[str] = set()  # temporary files of atomic writes in progress


def _create_temporary(path: Path) -> tuple[int, str]:
    """(fd, name) of a new, empty temporary file beside ``path`` (registered in ``_PENDING``), with
    the mode ``path`` will keep: that of the file it replaces, or 0666 less the umask for a new one
    (``tempfile.mkstemp`` would make every file 0600)."""
    try:
        replaced = os.stat(path)
        mode = stat.S_IMODE(replaced.st_mode) if stat.S_ISREG(replaced.st_mode) else None
    except OSError:  # absent (or unreadable: the write itself will say why)
        mode = None
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, as for a plain write
        except FileExistsError:
            continue
        _PENDING.add(tmp)
        if mode is not None:
            try:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # Windows before Python 3.13
                    os.chmod(tmp, mode)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                _PENDING.discard(tmp)
                raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


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
