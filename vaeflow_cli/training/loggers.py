"""Experiment trackers (``[run] loggers``): opened at the start of a training phase, fed every
metrics record that goes to ``metrics.jsonl``, closed when the phase ends, however it ends.

A logger is a registered ``logger`` component (``hookspecs.register_loggers``): its factory gets
``run_dir``, ``phase`` and the resolved config and returns a ``MetricsLogger``. Each epoch record a
logger sees is the ``metrics.jsonl`` record plus ``step``, the phase's global optimizer step; every
``[run] log_every`` steps it also sees a step record (``phase``, ``step``, ``train_bpd_step``), and
a logger with the optional ``log_image`` gets each epoch's sample grid.

The policy (what training does about a logger):

- Names are checked with the config (``config.validate``): an unknown name stops the command
  before anything is written. A run's stored config is read back without that check (sampling
  and evaluation need no tracker); training then refuses the unknown name in ``open_loggers``,
  still before anything is written.
- Factories are called after every other check of the phase and before the run directory is
  written; a factory's error is one line (``Component.build``) and the phase does not start. A
  factory should therefore not write yet: the built-in ``tensorboard`` logger opens its files at
  its first record.
- A logger whose ``log`` raises does not stop training: one warning line on stderr names it and
  the error, and that logger is off for the rest of the phase (no warning per record).
  ``metrics.jsonl`` is written first and is always complete. A ``close`` that raises is one
  warning line too (none if the logger already warned).
- Under torchrun only rank 0 opens and feeds loggers (training/loop.py calls these through
  ``ddp.main_only``).

Nothing here imports torch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.hookspecs import MetricsLogger

__all__ = ["open_loggers", "MetricsSink"]

SECTION = "run.loggers"


class _Guarded:
    """A MetricsLogger that never raises: the first failure warns once and switches it off."""

    def __init__(self, name: str, plugin: str, phase: str, logger: MetricsLogger) -> None:
        self.name, self.plugin, self.phase, self.logger = name, plugin, phase, logger
        self.failed = False
        self.closed = False

    def _warn(self, what: str, exc: BaseException) -> None:
        from vaeflow_cli.console import warning
        from vaeflow_cli.registry.core import describe_exception

        self.failed = True
        warning(
            f"logger {self.name!r} (plugin {self.plugin!r}) failed {what}: {describe_exception(exc)}; "
            f"it is off for the rest of phase {self.phase} (metrics.jsonl is complete); fix it or remove it from {SECTION}"
        )

    def log(self, record: Mapping[str, Any]) -> None:
        if self.failed or self.closed:
            return
        try:
            self.logger.log(dict(record))  # a copy: one logger cannot change what the next one sees
        except Exception as exc:  # noqa: BLE001 -- a tracker's failure must not stop training
            self._warn(f"to log the record of step {record.get('step')}", exc)

    def log_image(self, name: str, image: Any, *, step: int) -> None:
        """The optional ``MetricsLogger.log_image``: nothing for a logger without it."""
        method = getattr(self.logger, "log_image", None)
        if self.failed or self.closed or method is None:
            return
        try:
            method(name, image, step=step)
        except Exception as exc:  # noqa: BLE001 -- as log
            self._warn(f"to log the image {name!r} of step {step}", exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.logger.close()
        except Exception as exc:  # noqa: BLE001 -- closing runs on error paths too: never mask their error
            if not self.failed:
                self._warn("to close", exc)


def open_loggers(names: Iterable[str], *, run_dir: str, phase: str, config: Mapping[str, Any], registry=None) -> list[MetricsLogger]:
    """Build the loggers ``names`` (``[run] loggers``) through the registry. Each returned logger
    never raises from ``log`` or ``close`` (see the module docstring). A factory that fails, or
    returns something without ``log`` and ``close``, raises one-line VaeflowError after closing
    the loggers already opened."""
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()
    opened: list[_Guarded] = []
    try:
        for name in names:
            comp = registry.get("logger", name, where=SECTION)
            logger = comp.build(SECTION, run_dir=str(run_dir), phase=phase, config=copy.deepcopy(dict(config)))
            if not isinstance(logger, MetricsLogger):
                raise VaeflowError(
                    f"{SECTION}: logger {name!r} (plugin {comp.plugin!r}) returned a {type(logger).__name__}, "
                    f"which has no log() and close(); it is a bug in plugin {comp.plugin!r}: remove {name!r} from {SECTION}"
                )
            opened.append(_Guarded(name, comp.plugin, phase, logger))
    except BaseException:
        close_loggers(opened)
        raise
    return list(opened)


def feed(loggers: Iterable[MetricsLogger], record: Mapping[str, Any]) -> None:
    for logger in loggers:
        logger.log(record)


def close_loggers(loggers: Iterable[MetricsLogger]) -> None:
    for logger in loggers:
        logger.close()


class MetricsSink:
    """Where training sends each metrics record: ``metrics.jsonl`` of ``rd`` first, then the
    loggers opened with ``open``. A context manager: leaving it closes the loggers, on every exit
    path. Without ``open`` (ranks other than 0, ``loggers = []``) it feeds nothing."""

    def __init__(self, rd) -> None:
        self.rd = rd
        self.loggers: list[MetricsLogger] = []

    def open(self, names: Iterable[str], *, phase: str, config: Mapping[str, Any]) -> None:
        self.loggers = open_loggers(names, run_dir=str(self.rd.path), phase=phase, config=config)

    def append(self, record: Mapping[str, Any], *, step: int) -> None:
        """Append ``record`` to metrics.jsonl, then give it, with ``step`` added, to each logger."""
        self.rd.append_metrics(record)
        feed(self.loggers, {**record, "step": int(step)})

    def log_step(self, phase: str, *, step: int, train_bpd: float) -> None:
        """A step record for the loggers only (metrics.jsonl holds epochs): the mean training loss
        ``train_bpd`` of the steps since the previous one."""
        feed(self.loggers, {"phase": phase, "step": int(step), "train_bpd_step": float(train_bpd)})

    def log_image(self, name: str, image: Any, *, step: int) -> None:
        """An image (uint8 (H, W, C)) for the loggers that have ``log_image``."""
        for logger in self.loggers:
            logger.log_image(name, image, step=int(step))

    def close(self) -> None:
        loggers, self.loggers = self.loggers, []
        close_loggers(loggers)

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
