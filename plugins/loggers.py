"""Built-in experiment trackers (``[run] loggers``).

``tensorboard``: every numeric, finite value of each metrics record as a TensorBoard scalar
``<phase>/<key>`` (``vae/train_bpd``, ``vae/test_bpd``, ``vae/lr``, ...) at the record's global
optimizer step, the step records' recent training loss as ``<phase>/train_bpd_step`` (every
``[run] log_every`` steps), and each epoch's sample grid as the image ``<phase>/samples``, in
``RUN/tensorboard/<phase>/``; view with ``tensorboard --logdir RUN/tensorboard``.
Needs the ``tensorboard`` package (``pip install 'vaeflow[tensorboard]'``).

This module imports neither torch nor tensorboard: the factory does, when a phase starts.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

from vaeflow_cli.hookspecs import hookimpl

SKIPPED_KEYS = ("step", "steps")  # the x axis itself ("steps" is the same global step in metrics.jsonl)


class TensorBoardLogger:
    """Writes scalars with ``torch.utils.tensorboard.SummaryWriter``. The writer (and its folder)
    is created at the first record, with ``purge_step`` at that record's step, so a resumed phase
    hides the events that a killed run wrote beyond its last checkpoint."""

    def __init__(self, log_dir: str, phase: str, writer_class: Any) -> None:
        self.log_dir, self.phase, self._writer_class = log_dir, phase, writer_class
        self._writer = None

    def _writer_at(self, step: int):
        if self._writer is None:
            self._writer = self._writer_class(self.log_dir, purge_step=step)
        return self._writer

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        self._writer_at(step)
        for key, value in record.items():
            if key in SKIPPED_KEYS or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            value = float(value)
            if math.isfinite(value):
                self._writer.add_scalar(f"{self.phase}/{key}", value, global_step=step)
        self._writer.flush()  # a record per epoch, or per [run] log_every steps: cheap, and a killed run loses nothing

    def log_image(self, name: str, image: Any, *, step: int) -> None:
        """``image``: uint8 (H, W, C), the epoch's sample grid."""
        self._writer_at(int(step)).add_image(name, image, global_step=int(step), dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tensorboard_logger(*, run_dir: str, phase: str, config: Mapping[str, Any]) -> TensorBoardLogger:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from vaeflow_cli.plugin_api import VaeflowError

        raise VaeflowError(
            "run.loggers: the 'tensorboard' logger needs the tensorboard package, which is not installed; "
            "pip install 'vaeflow[tensorboard]' (or remove \"tensorboard\" from run.loggers)"
        ) from None
    return TensorBoardLogger(os.path.join(run_dir, "tensorboard", phase), phase, SummaryWriter)


@hookimpl
def register_loggers(register):
    register("tensorboard", tensorboard_logger)
