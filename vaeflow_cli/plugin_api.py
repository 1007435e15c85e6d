"""Everything a plugin may import from vaeflow and rely on; the rest of ``vaeflow_cli`` is internal.

The built-in plugins (``plugins/``, installed as ``vaeflow_plugins``) import from vaeflow only this
module and ``vaeflow_cli.hookspecs`` (the hooks and the component protocols); a test enforces it.
Names are loaded on first use (PEP 562), so ``from vaeflow_cli.plugin_api import Range`` in a
registration module does not import torch.

Declaring config keys (no torch):

- ``Range(low, high, *, gt=, ge=, lt=, le=)``, ``OneOf(values)``, ``Check(predicate, must)``:
  constraints for ``Annotated[int, Range(1, 64)]`` factory parameters; ``typing.Literal`` works too.
- ``VaeflowError``: raise it with a one-line message (what, where, how to fix) for bad input;
  the CLI prints it without a traceback and exits 2.

Flows and densities (torch):

- ``FlowSequence(layers)``: composes bijections ``forward(x) -> (y, log_det)`` /
  ``inverse(y) -> (x, log_det)``, summing the log-determinants (shape (B,), nats).
- ``global_mean(t, weight=None)``, ``global_sum(t)``: means and sums over the global batch under
  DDP (plain ones otherwise), for data-dependent initialisation (Glow's ActNorm).
- ``gaussian_log_prob(x, mean, std)``, ``standard_normal_log_prob(x)``: log-densities of diagonal
  Gaussians summed over all but the batch dimension -> (B,) nats; ``bits_per_dim(log_p, dims)``.

Datasets (numpy):

- ``DEFAULT_MAX_PIXELS``: the decoded-image size bound (pixels) a dataset's ``max_pixels`` key
  should default to.
- ``file_problem(path)``: why a data file cannot be read as a regular file (None when it can);
  ``check_regular_file(path, what, fix)`` raises that as a VaeflowError.
- ``decode_with_fallback(paths, *, crop, size, skip_bad=False, threads=0, max_pixels=...)``: JPEG/PNG
  files -> uint8 (N, size, size, 3) through the Rust data path (``native/``), Pillow for what it
  cannot read.
- ``check_crop(crop, what="crop", *, box=False)``: a crop (None, an int c >= 0: the centred c x c
  square, 0: the shorter side's; a [top, left, height, width] box) checked and made canonical, or
  one VaeflowError line starting with ``what`` (the config key that gave it).
- ``cached_array(cache_dir, name, key_parts, build)``, ``cache_path(...)``: a decoded split cached
  as a memory-mapped ``.npy`` keyed by ``key_parts`` (use ``file_signature(paths)`` in the key so
  that changed files rebuild it), written atomically; ``default_cache_dir()``: where, unless the
  dataset's ``cache_dir`` key says otherwise (the user's cache directory, or ``$VAEFLOW_CACHE_DIR``;
  never the images' folder).

Testing: ``vaeflow_cli.testing`` is the component check kit (it imports pytest-free torch code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaeflow_cli.lazy import lazy_exports

_HOMES = {
    "Range": "vaeflow_cli.config.constraints",
    "OneOf": "vaeflow_cli.config.constraints",
    "Check": "vaeflow_cli.config.constraints",
    "VaeflowError": "vaeflow_cli.errors",
    "FlowSequence": "vaeflow_cli.model.flows",
    "global_mean": "vaeflow_cli.model.flows",
    "global_sum": "vaeflow_cli.model.flows",
    "gaussian_log_prob": "vaeflow_cli.model.distributions",
    "standard_normal_log_prob": "vaeflow_cli.model.distributions",
    "bits_per_dim": "vaeflow_cli.model.distributions",
    "DEFAULT_MAX_PIXELS": "vaeflow_cli.data.decode",
    "decode_with_fallback": "vaeflow_cli.data.decode",
    "check_crop": "vaeflow_cli.data.crop",
    "cached_array": "vaeflow_cli.data.cache",
    "cache_path": "vaeflow_cli.data.cache",
    "file_signature": "vaeflow_cli.data.cache",
    "default_cache_dir": "vaeflow_cli.data.cache",
    "file_problem": "vaeflow_cli.config.limits",
    "check_regular_file": "vaeflow_cli.config.limits",
}

# fmt: off
__all__ = ["Range", "OneOf", "Check", "VaeflowError", "FlowSequence", "global_mean", "global_sum",
           "gaussian_log_prob", "standard_normal_log_prob", "bits_per_dim", "DEFAULT_MAX_PIXELS",
           "decode_with_fallback", "check_crop", "cached_array", "cache_path", "file_signature", "file_problem",
           "check_regular_file", "default_cache_dir"]  # = _HOMES (tests/plugins/test_plugins.py checks)
# fmt: on

if TYPE_CHECKING:  # pragma: no cover
    from vaeflow_cli.config.constraints import Check, OneOf, Range
    from vaeflow_cli.config.limits import check_regular_file, file_problem
    from vaeflow_cli.data.cache import cache_path, cached_array, default_cache_dir, file_signature
    from vaeflow_cli.data.crop import check_crop
    from vaeflow_cli.data.decode import DEFAULT_MAX_PIXELS, decode_with_fallback
    from vaeflow_cli.errors import VaeflowError
    from vaeflow_cli.model.distributions import bits_per_dim, gaussian_log_prob, standard_normal_log_prob
    from vaeflow_cli.model.flows import FlowSequence, global_mean, global_sum


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, "plugins may use the names in vaeflow_cli.plugin_api.__all__")
