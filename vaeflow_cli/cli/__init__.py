"""The command line: the Typer app (``app``), a thin layer over the library functions that turns
their errors into one line on stderr and an exit code."""

from vaeflow_cli.cli.app import app, main

__all__ = ["app", "main"]
