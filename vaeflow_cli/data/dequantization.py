"""Reproducible dequantization (model.md): y = (x + u) / 256 with u ~ U[0,1). u is a
counter-based hash of (seed, epoch, image index, pixel index) -- splitmix64 -- so the same image
in the same epoch gets the same noise whatever the batch, order, thread or process it lands in.
u has 16 bits, so that x + u is exact in float32 and y always lies in [x/256, (x+1)/256). On the
CPU in Rust (``vaeflow_cli._native``, source in native/), or bit for bit by torch on a device.
"""

from __future__ import annotations

import numpy as np

EVAL_EPOCH = 2**32 - 1  # the noise stream used for held-out evaluation


def dequantize(x: np.ndarray, *, seed: int, epoch: int, indices: np.ndarray, out: np.ndarray | None = None, threads: int = 0) -> np.ndarray:
    """uint8 images (B, ...) -> float32 y = (x + u) / 256 in [0, 1), computed in Rust on ``threads``
    threads (0: all cores) with the GIL released, into ``out`` when given (e.g. a pinned buffer)."""
    from vaeflow_cli import _native

    x = np.ascontiguousarray(x, dtype=np.uint8)
    if out is None:
        out = np.empty(x.shape, np.float32)
    _native.dequantize(x, np.ascontiguousarray(indices, dtype=np.uint64), seed, epoch, out, threads)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def dequantize_on_device(x, indices, *, seed: int, epoch: int):
    """The same y = (x + u) / 256, bit for bit, computed by torch on x's device (a CUDA GPU, say):
    send uint8 batches (4x fewer bytes than float32) and dequantize there. x: uint8 tensor
    (B, ...); indices: int64 tensor (B,). splitmix64 runs in int64, whose + and * wrap like uint64;
    right shifts are made logical by masking."""
    import torch

    golden, m1, m2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))

    def shr(v, k):
        return (v >> k) & ((1 << (64 - k)) - 1)

    def mix(v):
        v = v + golden
        v = (v ^ shr(v, 30)) * m1
        v = (v ^ shr(v, 27)) * m2
        return v ^ shr(v, 31)

    b = x.shape[0]
    dims = x[0].numel() if b else 0
    words = -(-dims // 4)
    with torch.no_grad():
        seed_t = torch.tensor(_signed((seed * 0x9E3779B97F4A7C15) % (1 << 64)), dtype=torch.int64, device=x.device)
        key = mix(seed_t ^ _signed(epoch % (1 << 64)))
        counter = indices.to(device=x.device, dtype=torch.int64)[:, None] * words + torch.arange(words, device=x.device)
        bits = mix(counter ^ key)  # (B, W)
        lanes = torch.stack([shr(bits, 16 * lane) & 0xFFFF for lane in range(4)], dim=2).reshape(b, -1)[:, :dims]
        u = lanes.to(torch.float32) * (2.0**-16)
        return (x.reshape(b, -1).to(torch.float32) + u).mul_(1.0 / 256).reshape(x.shape)
