"""vaeflow's built-in components. Each module is a plugin registered through the same hooks that
third-party plugins implement (see ``vaeflow_cli.hookspecs``)."""
