"""vaeflow: VAEs with normalizing-flow decoders (Morrow & Chiu).

This module stays import-light (no torch) so that ``vaeflow --help`` starts fast.
"""

__version__ = "0.1.0"
