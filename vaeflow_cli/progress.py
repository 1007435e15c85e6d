"""Progress bars on stderr (rich), one kind for every long command: training's epochs,
``vaeflow evaluate``'s bounds, samples and features.

A bar is drawn only when stderr is a terminal and the "vaeflow" logger passes info lines (not
``vaeflow -q``; ``console.progress_enabled``); otherwise nothing is drawn and ``message`` lines go to
the log, so a redirected stderr gets the lines alone. The bar is transient: it is gone when the
work ends, the lines printed above it stay.

    with Progress() as bar:
        advance = bar.start("iwae: IWAE_64 bound of the VAE model", total=len(images))
        for batch in batches:
            ...
            advance(len(batch))      # the library functions take such a callback: progress=advance
        bar.message("iwae: done")
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from vaeflow_cli.console import log, progress_enabled

__all__ = ["Progress"]


class Progress:
    """A rich progress bar on stderr (or nothing): one task at a time, ``start`` replaces it.

    ``fields``: extra columns after the count, ``{name: initial text}``, shown as ``name text`` and
    updated by ``advance(..., name=text)`` (training shows ``{"loss": "-"}``)."""

    def __init__(self, enabled: bool = True, *, fields: Mapping[str, str] | None = None) -> None:
        self.enabled = enabled and sys.stderr.isatty() and progress_enabled()  # no bars under vaeflow -q
        self.fields = dict(fields or {})
        self.progress = None
        self.task = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in self.fields]
            self.progress = RichProgress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
            self.progress, self.task = None, None

    def start(self, description: str, total: int, done: int = 0) -> Callable[..., None]:
        """Show a task of ``total`` units (images, steps), ``done`` of them already; returns ``advance``."""
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(description, total=total, completed=done, **self.fields)
        return self.advance

    def advance(self, n: int = 1, **fields: str) -> None:
        """``n`` more units of the current task done; ``fields`` update the extra columns."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=n, **fields)

    def message(self, text: str) -> None:
        """A line above the bar, or a log line (info) when no bar is drawn."""
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False)
        else:
            log(text)
