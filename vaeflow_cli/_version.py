"""vaeflow's version, in the base layer: ``plugins.provenance`` records it in every run, and the
package (``vaeflow_cli.__version__``) re-exports it. Standard library only."""

__version__ = "0.1.0"
