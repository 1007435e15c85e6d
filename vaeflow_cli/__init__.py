"""vaeflow: VAEs with normalizing-flow decoders (Morrow & Chiu), as a library.

The public API (``__all__``) is imported lazily: ``import vaeflow_cli`` loads neither torch nor
numpy, so the ``vaeflow`` command starts fast; the first use of a name loads its module.

- ``load_run(path, *, device="auto", checkpoint=None) -> Run``: a trained run for sampling,
  encoding, reconstruction, interpolation and likelihood bounds (``vaeflow_cli.api``).
- ``resolve_config(path=None, overrides=())``: a config as training sees it, a ``Config``
  (typed, frozen: ``cfg.train.phase("vae").lr``; ``vaeflow_cli.config.core``, ``vaeflow_cli.config.typed``).
- ``train_phase(cfg, run_dir, phase)``: train one phase (``vaeflow_cli.training.loop``; phases in
  ``vaeflow_cli.runtime.phases.PHASES``).
- ``evaluate_run(run, ...)``: what ``vaeflow evaluate`` computes, as a dict (``vaeflow_cli.evaluation.evaluate``).
- ``VaeflowError`` (exit code 2), ``RuntimeFailure`` (1), ``Interrupted`` (130): the errors every
  function raises with a one-line message (``vaeflow_cli.errors``).

Plugin authors import from ``vaeflow_cli.plugin_api`` and ``vaeflow_cli.hookspecs``, and test with
``vaeflow_cli.testing``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaeflow_cli._version import __version__
from vaeflow_cli.lazy import lazy_exports

_EXPORTS = {
    "load_run": "vaeflow_cli.api",
    "Run": "vaeflow_cli.api",
    "resolve_config": ("vaeflow_cli.config.core", "resolve"),
    "Config": "vaeflow_cli.config.typed",
    "train_phase": "vaeflow_cli.training.loop",
    "evaluate_run": "vaeflow_cli.evaluation.evaluate",
    "PHASES": "vaeflow_cli.runtime.phases",
    "VaeflowError": "vaeflow_cli.errors",
    "RuntimeFailure": "vaeflow_cli.errors",
    "Interrupted": "vaeflow_cli.errors",
}

# fmt: off
__all__ = ["__version__", "load_run", "Run", "resolve_config", "Config", "train_phase", "evaluate_run", "PHASES",
           "VaeflowError", "RuntimeFailure", "Interrupted"]  # = _EXPORTS (tests/test_api.py checks)
# fmt: on

if TYPE_CHECKING:  # pragma: no cover
    from vaeflow_cli.api import Run, load_run
    from vaeflow_cli.config.core import resolve as resolve_config
    from vaeflow_cli.config.typed import Config
    from vaeflow_cli.errors import Interrupted, RuntimeFailure, VaeflowError
    from vaeflow_cli.evaluation.evaluate import evaluate_run
    from vaeflow_cli.runtime.phases import PHASES
    from vaeflow_cli.training.loop import train_phase


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, "the public API is vaeflow_cli.__all__")
