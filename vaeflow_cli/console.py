"""Logs and progress messages go to stderr; stdout carries results only."""

import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
