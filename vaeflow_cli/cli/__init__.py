"""The command line: the Typer app ``app`` (``commands``: one thin function per command over the
library functions), ``exits`` (every exception to one line on stderr and an exit code) and
``output`` (results on stdout). ``main`` is the console script."""

from vaeflow_cli.cli.commands import app, main

__all__ = ["app", "main"]
