"""The error types that the CLI turns into a single line on stderr, and their exit codes.

Exit codes follow the Click convention: 2 for bad usage, bad configs and bad input files
(``VaeflowError``), 1 for failures at run time that the input did not cause (``RuntimeFailure``:
a download that fails, a disk that is full, memory that runs out, a run stopped by bad steps, a
run directory another process trains in), 130 for Ctrl-C and SIGTERM (the run saved a
checkpoint), 3 when a command that takes many inputs (``vaeflow score``) could not use some of
them (``SomeInputsFailed``: each was named on stderr, the others' results were written), 141 when
the reader of a command's streamed rows closed the pipe (``CLOSED_PIPE``). An unexpected
exception is a bug: one line naming it and the file holding its traceback, exit code 1
(``VAEFLOW_DEBUG=1`` prints the traceback instead).
"""


class VaeflowError(Exception):
    """A user-facing error: bad input, a missing file, a wrong config key.

    The message is one line that says what is wrong, where, and how to fix it. The CLI prints it
    to stderr as ``vaeflow: error: <message>`` and exits with ``exit_code`` (2), without a
    traceback.
    """

    exit_code = 2


class RuntimeFailure(VaeflowError):
    """A failure at run time that the input did not cause (exit code 1): a download that fails,
    a full disk, exhausted memory, too many non-finite steps, a locked run directory."""

    exit_code = 1


class Interrupted(VaeflowError):
    """Training stopped on Ctrl-C or SIGTERM at a step boundary, after saving a checkpoint
    (exit code 130)."""

    exit_code = 130


class SomeInputsFailed(VaeflowError):
    """Some inputs of a command that takes many (``vaeflow score``'s files) could not be used: each
    was named in its own line on stderr and the others' results were written; the message says how
    many (exit code 3, so that a script tells this from a full success and from bad usage)."""

    exit_code = 3


CLOSED_PIPE = 141
"""The exit code of a command whose streamed result rows lost their reader (``vaeflow score ... |
head``): it stops quietly, as a Unix tool stopped by SIGPIPE does (the shell shows 128 + 13)."""


class ImageProblem(ValueError):
    """Internal: an image file Pillow may not or cannot read; ``kind`` as the Rust decoder's failures:
    "read", "size" (over the pixel bound) or "decode"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


LONGEST_SHOWN = 1000  # characters of one word (a path, a value) that an error line shows in full


def shorten_words(text: str, limit: int = LONGEST_SHOWN) -> str:
    """``text`` with every run of non-space characters longer than ``limit`` (a path or value of
    100 KB, say) cut to its first ``limit // 5`` and last ``limit // 10`` characters and how many
    were left out, so that an error line stays a line."""
    import re

    keep_head, keep_tail = limit // 5, limit // 10

    def cut(match: re.Match) -> str:
        word = match.group(0)
        return f"{word[:keep_head]}...[{len(word) - keep_head - keep_tail} characters left out]...{word[-keep_tail:]}"

    return re.sub(rf"\S{{{limit + 1},}}", cut, text)


def is_input_os_error(exc: BaseException) -> bool:
    """An OSError that the input caused rather than the machine: a path longer than the file
    system allows (exit code 2, like any bad input)."""
    import errno

    return isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def describe_os_error(exc: OSError, path=None) -> str:
    """One line for an OSError: the file, the system's reason, and what to do about it."""
    import errno

    where = str(path if path is not None else (exc.filename if exc.filename is not None else "a file"))
    length, where = len(where), shorten_words(where)
    hints = {
        errno.ENOSPC: "the disk is full: free space (files written before are intact), then rerun",
        errno.EDQUOT: "the disk quota is exceeded: free space, then rerun",
        errno.EFBIG: "the file is larger than this system allows: free space or raise the limit, then rerun",
        errno.EACCES: "permission denied: choose a path you may write to",
        errno.EPERM: "permission denied: choose a path you may write to",
        errno.EROFS: "the file system is read-only: choose another path",
        errno.EISDIR: "it is a directory: give a file path",
        errno.ENOTDIR: "a part of the path is not a directory: fix the path",
        errno.ENOENT: "no such file or directory: check the path",
        errno.ENAMETOOLONG: f"the path ({length} characters) is longer than the file system allows: give a shorter one",
    }
    return f"{where}: {exc.strerror or type(exc).__name__}; {hints.get(exc.errno, 'check the path and the file system')}"
