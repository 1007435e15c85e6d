"""``python -m vaeflow_cli`` (and ``torchrun -m vaeflow_cli``) runs the CLI."""

from vaeflow_cli.cli.commands import main

main()
