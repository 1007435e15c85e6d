"""Ctrl-C and SIGTERM during training: stop at a step boundary and save a checkpoint.

(Outside training, the CLI's own handler in ``vaeflow_cli.cli.exits`` removes partial files and
exits at once.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable

from vaeflow_cli.console import log

STOP_SIGNALS = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}  # SIGTERM: what SLURM and Kubernetes send before a kill


def second_signal_line(saved: bool) -> str:
    """The line a second signal prints: the last checkpoint is kept, or ``saved`` False: none had
    been written yet, and the phase will start from its beginning."""
    if saved:
        return "vaeflow: error: aborted by a second signal; the last checkpoint is kept (--resume continues from it)"
    return "vaeflow: error: aborted by a second signal; no checkpoint of this phase had been written yet, so it starts from the beginning next time"


@contextlib.contextmanager
def stop_on_signals(saved: Callable[[], bool] | None = None):
    """The first Ctrl-C (SIGINT) or SIGTERM asks training to stop at the next step boundary and
    save a checkpoint, so a preempted job resumes with nothing lost; a second one aborts at once,
    keeping only the last checkpoint. ``saved()`` says whether the phase has a checkpoint yet,
    for the second signal's line (None: it is assumed to). Yields a dict whose "stop" key is the flag."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:  # the second signal: abort now, without running exit handlers that could block
            try:
                kept = True if saved is None else bool(saved())
            except Exception:  # noqa: BLE001 -- aborting anyway: the usual line
                kept = True
            os.write(2, (second_signal_line(kept) + "\n").encode())
            os._exit(130)
        flag["stop"] = True
        name = STOP_SIGNALS.get(signal.Signals(signum).name, signal.Signals(signum).name)
        log(f"{name}: stopping after this step and saving a checkpoint (a second signal aborts without saving)")

    previous = {name: signal.signal(getattr(signal, name), handler) for name in STOP_SIGNALS if hasattr(signal, name)}
    try:
        yield flag
    finally:
        if not flag["stop"]:  # after a stop request this handler stays: a second signal still aborts in one line
            for name, old in previous.items():
                signal.signal(getattr(signal, name), old)
