"""The data path: datasets from the registry, reproducible dequantization, shuffled batches.

Dequantization (model.md): y = (x + u) / 256 with u ~ U[0,1). u is a counter-based hash of
(seed, epoch, image index, pixel index) -- splitmix64 -- so the same image in the same epoch gets
the same noise whatever the batch, order, thread or process it lands in. u has 16 bits, so that
x + u is exact in float32 and y always lies in [x/256, (x+1)/256).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaeflow_cli.errors import VaeflowError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
EVAL_EPOCH = 2**32 - 1  # the noise stream used for held-out evaluation


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def dequantization_noise(shape: tuple[int, ...], *, seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """u in [0, 1) of ``shape`` = (B, ...) for images ``indices`` (B,), as float32 multiples of 2^-16."""
    dims = int(np.prod(shape[1:]))
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) * _GOLDEN ^ np.uint64(epoch))
        counter = np.asarray(indices, np.uint64)[:, None] * np.uint64(dims) + np.arange(dims, dtype=np.uint64)
        bits = _splitmix64(counter ^ key)
    return ((bits >> np.uint64(48)).astype(np.float32) * np.float32(2.0**-16)).reshape(shape)


def dequantize(x: np.ndarray, *, seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """uint8 images (B, C, H, W) -> float32 y = (x + u) / 256 in [0, 1)."""
    u = dequantization_noise(x.shape, seed=seed, epoch=epoch, indices=indices)
    return (x.astype(np.float32) + u) * np.float32(1.0 / 256.0)


@dataclass
class Splits:
    train: np.ndarray  # uint8 (N, C, H, W)
    test: np.ndarray
    image_shape: tuple[int, int, int]


def build_dataset(cfg: dict, registry=None):
    """The dataset object named by a resolved config's [data] section."""
    if registry is None:
        from vaeflow_cli.plugins import get_registry

        registry = get_registry()
    data = cfg["data"]
    kwargs = {k: v for k, v in data.items() if k != "name"}
    return registry.get("dataset", data["name"]).factory(**kwargs)


def load_splits(cfg: dict, registry=None, *, test_split: str = "test") -> Splits:
    ds = build_dataset(cfg, registry)
    train, test = ds.split("train"), ds.split(test_split)
    shape = tuple(ds.image_shape)
    for name, arr in (("train", train), (test_split, test)):
        if arr.dtype != np.uint8 or arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
            raise VaeflowError(f"dataset {cfg['data']['name']!r} split {name!r} gave {arr.dtype} {arr.shape}, expected uint8 (N, {', '.join(map(str, shape))})")
        if len(arr) == 0:
            raise VaeflowError(f"dataset {cfg['data']['name']!r} split {name!r} is empty; check data.root")
    return Splits(train, test, shape)


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The shuffled image order of one epoch, a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def batch_indices(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
