"""Building blocks shared by flow components (built-in and third-party)."""

from __future__ import annotations

from torch import nn


class FlowSequence(nn.Module):
    """Composition of bijections, each with ``forward(x) -> (y, log_det)`` and
    ``inverse(y) -> (x, log_det)``; log-determinants (B,) add."""

    def __init__(self, layers) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, y):
        log_det = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y)
            log_det = log_det + ld
        return y, log_det
