"""Logs and progress messages go to stderr; stdout carries results only.

Every log line goes through the standard ``logging`` module, logger ``"vaeflow"``: ``log`` is INFO
(per-epoch lines, what a command is doing), ``debug`` DEBUG, ``warning`` WARNING. A line is the
bare message, as before vaeflow used ``logging``; a warning starts with ``vaeflow: warning:``.

- The command line calls ``configure(verbosity)`` for every command: -1 (``vaeflow -q``) shows
  warnings only and no progress bars, 0 the info lines too, 1 (``vaeflow -v``) debug lines too.
  Failures are not log lines: ``cli.report_exception`` prints their one line whatever the verbosity.
- A library user who never calls ``configure`` sees the info lines on stderr as before: on the
  first line, if the ``"vaeflow"`` logger has neither a handler nor a level of its own, vaeflow
  does what ``configure(0)`` does; the ``"vaeflow"`` logger then does not propagate, so an
  application's root handlers do not print each line a second time.
  To take over, configure the ``"vaeflow"`` logger before vaeflow logs anything (a level, or a
  handler and a level); e.g. ``logging.getLogger("vaeflow").setLevel(logging.INFO)`` hands the
  lines to the root logger's handlers, ``setLevel(logging.WARNING)`` silences the info lines.
  ``progress_enabled()`` (rich progress bars) follows the same level.
- vaeflow's handler writes to the ``sys.stderr`` of the moment (as ``logging.lastResort`` does), so
  a redirected stderr (pytest's capture, ``contextlib.redirect_stderr``, a rich live display)
  receives the lines.
"""

import logging
import shlex
import sys

LOGGER_NAME = "vaeflow"
logger = logging.getLogger(LOGGER_NAME)
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}  # configure(verbosity)


class StderrHandler(logging.StreamHandler):
    """A handler that writes to the current ``sys.stderr``, looked up for every line."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler.__init__, which would keep today's stderr
        self.setFormatter(LineFormatter())

    @property
    def stream(self):
        return sys.stderr


class LineFormatter(logging.Formatter):
    """The bare message; a warning or error is prefixed ``vaeflow: warning:`` / ``vaeflow: error:``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"vaeflow: {record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


_handler = StderrHandler()


def configure(verbosity: int = 0) -> None:
    """Log to stderr at ``verbosity`` -1 (warnings only, no progress bars), 0 (info) or 1 (debug).
    Idempotent: vaeflow's handler is added once; handlers added by others are left alone."""
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.setLevel(LEVELS[max(-1, min(1, verbosity))])
    logger.propagate = False


def _default() -> None:
    """``configure(0)`` unless the application configured the "vaeflow" logger (see the docstring)."""
    if not logger.handlers and logger.level == logging.NOTSET:
        configure(0)


def log(msg: str) -> None:
    _default()
    logger.info(msg)


def debug(msg: str) -> None:
    _default()
    logger.debug(msg)


def warning(msg: str) -> None:
    _default()
    logger.warning(msg)


def shell_arg(value) -> str:
    """A path or value as one shell word, for a command that a message suggests: ``shlex.quote``
    ("runs/default" unchanged, "runs/my run" -> "'runs/my run'"), so the command pastes as written."""
    return shlex.quote(str(value))


def counted(n: int, noun: str) -> str:
    """A count and its noun for a message: "1 epoch", "3 epochs" (``noun`` singular, plural by -s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def progress_enabled() -> bool:
    """Whether progress bars may be drawn: the "vaeflow" logger passes info lines (not ``-q``)."""
    _default()
    return logger.isEnabledFor(logging.INFO)
