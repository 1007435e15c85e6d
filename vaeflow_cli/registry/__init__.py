"""The plugin system: the pluggy manager that loads the built-in and third-party plugins of the
``vaeflow`` entry-point group and the registry of components they declare. Plugin authors use
``vaeflow_cli.plugin_api`` and ``vaeflow_cli.hookspecs``."""
