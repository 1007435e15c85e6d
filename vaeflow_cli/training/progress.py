"""The training progress bar (rich, on stderr, only on a terminal and not under ``vaeflow -q``)."""

from __future__ import annotations

import sys

from vaeflow_cli.console import log, progress_enabled


class Progress:
    """A rich progress bar on stderr (or nothing), plus one log line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty() and progress_enabled()  # no bars under vaeflow -q
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, description: str, total: int, done: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(description, total=total, completed=done, loss="-")

    def advance(self, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}")

    def finish_epoch(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, highlight=False, markup=False)
        else:
            log(message)
