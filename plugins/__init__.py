"""vaeflow's built-in components: the distribution ``vaeflow-builtins`` (``plugins/pyproject.toml``),
registered through the ``vaeflow`` entry-point group exactly like a third-party plugin. The
entry points are ``models`` (the model components' registration and config schema; no torch at
import), ``datasets`` and ``loggers``; ``resnet``, ``priors`` and ``glow`` hold the networks that
``models``' factories build, and ``readers`` the file formats ``datasets`` reads (IDX, CIFAR-10
batches, gzip). They import from vaeflow only ``vaeflow_cli.plugin_api`` and
``vaeflow_cli.hookspecs`` (tests/test_repo.py checks)."""
