"""The ground floor: what every other part of vaeflow may import, and which imports none of them
(only the standard library, torch, numpy and the base modules: ``errors``, ``files``, ``console``,
``config.limits``). The CPU thread policy (``threads``: no torch), torch's device, thread and
backend settings (``devices``), the torchrun helpers (``distributed``), run directories and
checkpoint files (``runs``) and the phase table (``phases``: no torch). tests/test_layers.py keeps
every import pointing down."""
