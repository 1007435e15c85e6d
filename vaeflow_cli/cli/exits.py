"""How the command line ends: every exception a command raises becomes one line on stderr and an
exit code (``report_exception``; the codes are in ``vaeflow_cli.errors``), Ctrl-C and SIGTERM
outside the training loop exit at once with 130, and a torchrun process leaves its process group
before it exits. The commands themselves live in ``app``; this is the only place that turns
exceptions into exit codes."""

from __future__ import annotations

import contextlib
import functools
import sys

import typer

from vaeflow_cli.errors import CLOSED_PIPE, VaeflowError, describe_os_error, is_input_os_error, shorten_words


def cli_errors(fn):
    """Turn any exception a command raises into one line on stderr and its exit code (see
    ``report_exception``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 -- every exception ends as one line
            raise typer.Exit(report_exception(exc)) from None

    return wrapper


def report_exception(exc: BaseException) -> int:
    """Print the one stderr line for ``exc`` and return the exit code (see vaeflow_cli.errors).

    VaeflowError: its message (2, or its ``exit_code``). Click usage errors: one line, 2. Ctrl-C:
    130. Memory exhaustion and OS errors (disk full, permission denied): one line, 1. Anything
    else is a bug: one line naming the exception and the file with its traceback, 1; with
    VAEFLOW_DEBUG=1 the traceback is printed instead."""
    import os

    click = _click_exceptions()

    def line(message: str) -> str:
        return one_line(message) or type(exc).__name__

    if isinstance(exc, VaeflowError):
        typer.echo(f"vaeflow: error: {line(exc)}", err=True)
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, typer.Abort, getattr(click, "Abort", typer.Abort))):
        typer.echo("vaeflow: error: interrupted; nothing was saved after the last checkpoint", err=True)
        return 130
    if isinstance(exc, click.UsageError):
        cmd = exc.ctx.command_path if exc.ctx is not None else "vaeflow"
        sub = cmd.partition(" ")[2]  # the command after the program's name, which the line starts with already
        typer.echo(f"vaeflow: error: {sub + ': ' if sub else ''}{line(exc.format_message()).rstrip('.')}; see '{cmd} --help'", err=True)
        return 2
    if isinstance(exc, click.ClickException):
        typer.echo(f"vaeflow: error: {line(exc.format_message())}", err=True)
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # the reader of stdout went away (| head)
        _silence_stdout()
        typer.echo(
            "vaeflow: error: the reader of stdout closed the pipe before the result was written; "
            "redirect it to a file (> FILE, or --out FILE where the command has it) to keep all of it",
            err=True,
        )
        return 1
    if _is_lost_peer(exc):
        typer.echo(f"vaeflow: error: another process of this torchrun job failed or died ({line(exc)[:160]}); its own output says why", err=True)
        return 1
    if _is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        typer.echo(
            f"vaeflow: error: out of memory ({type(exc).__name__}: {first}); lower the batch size, "
            "the number of images (--n, --n-samples, --iwae-k) or the model's size",
            err=True,
        )
        return 1
    if isinstance(exc, OSError) and not os.environ.get("VAEFLOW_DEBUG"):
        typer.echo(f"vaeflow: error: {line(describe_os_error(exc))}", err=True)
        return 2 if is_input_os_error(exc) else 1  # a path too long is bad input, like any other
    if os.environ.get("VAEFLOW_DEBUG") in (None, "", "0"):
        from vaeflow_cli.registry.core import blame

        culprit = blame(exc)
        if culprit is not None:
            typer.echo(
                f"vaeflow: error: {culprit} failed: {type(exc).__name__}: {line(exc)[:300]}; {_save_traceback(exc)}; "
                "check that component's options, or report it to the plugin's authors (VAEFLOW_DEBUG=1 prints the traceback)",
                err=True,
            )
            return 1
        typer.echo(
            f"vaeflow: error: internal error, a bug in vaeflow or one of its plugins: {type(exc).__name__}: "
            f"{line(exc)[:300]}; {_save_traceback(exc)}; please report it (VAEFLOW_DEBUG=1 prints the traceback)",
            err=True,
        )
        return 1
    import traceback

    traceback.print_exception(exc)
    return 1


def one_line(message) -> str:
    """``message`` as one printable line: whitespace runs (newlines included) become one space,
    a 100 KB path is cut (``shorten_words``), bytes of a file name that are not UTF-8 show as \\xNN."""
    text = shorten_words(" ".join(str(message).split()))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def print_error(message) -> None:
    """One ``vaeflow: error:`` line on stderr for a failure the command goes on after (an input
    of ``vaeflow score`` that cannot be scored), whatever the verbosity."""
    typer.echo(f"vaeflow: error: {one_line(message)}", err=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: nothing more may reach a closed pipe, at exit either."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


@contextlib.contextmanager
def streamed_rows():
    """Around a command that streams result rows to stdout (``vaeflow score``): when their reader
    goes away (``| head``), stop quietly as a Unix filter does, with no line on stderr and no
    traceback, and exit with ``CLOSED_PIPE``. (Other commands write one result, and a reader that
    left before it was whole is an error line: see ``report_exception``.)"""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(CLOSED_PIPE) from None


def _click_exceptions():
    """The exceptions module of the Click that typer uses (typer vendors its own copy)."""
    return sys.modules[typer.BadParameter.__module__]


def _is_lost_peer(exc: BaseException) -> bool:
    """A collective that failed because another rank of a torchrun job is gone."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "ProcessGroup"))


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _save_traceback(exc: BaseException) -> str:
    """Write ``exc``'s traceback to a file in the temporary folder; say where (or why not)."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="vaeflow-traceback-", suffix=".txt")
        with open(fd, "w") as fh:
            fh.write("".join(traceback.format_exception(exc)))
        return f"the traceback is in {path}"
    except OSError as err:
        return f"the traceback could not be written ({err.strerror})"


def _sigterm_interrupts() -> dict:
    """Ctrl-C (SIGINT) and SIGTERM (what schedulers send before a kill) outside the training loop:
    remove the temporary files of writes in progress, print one line and exit with 130 at once.
    (Not a KeyboardInterrupt raised wherever the main thread happens to be: one raised inside an
    extension's import makes Python exit by SIGINT later, whatever exit code was asked for.)
    Training installs its own handler, which stops at a step boundary and saves a checkpoint."""
    import os
    import signal
    import threading

    def handler(signum, frame):
        files = sys.modules.get("vaeflow_cli.files")
        if files is not None:
            files.remove_pending_temporaries()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        os.write(2, f"vaeflow: error: interrupted by {name}; nothing was written after the last complete file or checkpoint\n".encode())
        os._exit(130)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {name: signal.signal(getattr(signal, name), handler) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)}


def _restore_signals(previous: dict) -> None:
    import signal

    for name, old in previous.items():
        signal.signal(getattr(signal, name), old)


def _leave_process_group(finished: bool) -> None:
    """Under torchrun, leave the process group before exiting (a process that exits inside one
    can abort in the communication library's destructors). After a clean finish the ranks first
    meet at a barrier: a rank that tears its group down while a peer is still in its last
    collective aborts in gloo's worker threads ("terminate called without an active exception",
    exit -6; seen about once in five two-process CPU runs before the barrier). A clean finish is
    exit 0, or 130 after a Ctrl-C or SIGTERM that every rank agreed to stop at. After a failure
    there is no barrier (the peers may never reach it; torchrun stops them)."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 -- exiting anyway
        pass


def _refuse_empty_arguments(args: list[str]) -> None:
    """No vaeflow option or argument takes an empty value: ``--run ""`` (an unset shell variable,
    typically) would otherwise read as the current directory. Raises VaeflowError naming it."""
    for i, arg in enumerate(args):
        if arg == "--":
            return
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3:
            what = f"{arg[:-1]} is given an empty value"
        elif arg == "":
            what = f"the argument after {args[i - 1]} is empty" if i else "the first argument is empty"
        else:
            continue
        raise VaeflowError(f"{what} (an unset shell variable?); give a value, or leave the option out for its default")


def run(app: typer.Typer, argv: list[str] | None, *, exiting: bool = False) -> int:
    """Run the Typer ``app`` on ``argv``: every failure, parse errors included, ends as one stderr
    line and an exit code (see report_exception). Returns the exit code.

    ``exiting=True`` (the console script, which exits right after) keeps vaeflow's Ctrl-C and
    SIGTERM handlers until the process ends: a signal that arrives after the last line was printed
    still exits with 130 and one line, never by Python's default KeyboardInterrupt (exit -2).
    Otherwise (main() called in a process that goes on: tests, notebooks) the previous handlers
    come back."""
    click = _click_exceptions()
    previous = _sigterm_interrupts()
    code = 1
    try:
        _refuse_empty_arguments(sys.argv[1:] if argv is None else [str(a) for a in argv])
        code = app(args=argv, prog_name="vaeflow", standalone_mode=False)
    except tuple({typer.Exit, getattr(click, "Exit", typer.Exit)}) as exc:
        code = exc.exit_code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 -- every failure ends as one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `vaeflow` or `vaeflow config`: the help
            exc.show()
            code = 2
        else:
            code = report_exception(exc)
    finally:
        _leave_process_group(finished=code in (0, None, 130))
        if not exiting:
            _restore_signals(previous)
    return code if isinstance(code, int) else 0


def exit_process(code: int) -> None:
    """End the ``vaeflow`` process with ``code``. After an interruption (130: everything is saved
    and the line is printed) the process ends at once, without the interpreter's finalization:
    finalization first resets the signal handlers to the system's defaults and then tears down
    torch for a while, and a second Ctrl-C landing in that window killed the process by SIGINT
    (exit -2, not 130). Other codes exit normally (atexit handlers and buffers run)."""
    import os

    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
                pass
        os._exit(130)
    sys.exit(code)
