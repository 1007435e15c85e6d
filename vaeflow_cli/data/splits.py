"""The datasets of the registry, by a config's ``[data]`` section: the dataset object, its
splits as checked uint8 arrays (N, C, H, W), and what ``vaeflow data info`` reports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaeflow_cli.config.core import as_config
from vaeflow_cli.console import warning
from vaeflow_cli.errors import VaeflowError


@dataclass
class Splits:
    train: np.ndarray  # uint8 (N, C, H, W)
    test: np.ndarray
    image_shape: tuple[int, int, int]


def build_dataset(cfg: dict, registry=None):
    """The dataset object named by a resolved config's [data] section."""
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()
    cfg = as_config(cfg, source="the config given to build_dataset")
    return registry.get("dataset", cfg.data.name).build("[data]", cfg.origin("data"), **cfg.data.kwargs())


def dataset_info(name: str, root: str, registry=None) -> dict:
    """Split sizes, image shape and (where the dataset caches) cache state of a dataset, with its
    default options. A dataset with an ``info()`` method reports without loading its images.

    Without ``info()``, a split that cannot be read (its files missing, or damaged) is left out of
    ``splits`` and named in ``missing`` with the reason, and a warning line says so; when no split
    can be read, the first split's error is raised."""
    if registry is None:
        from vaeflow_cli.registry.core import get_registry

        registry = get_registry()
    ds = registry.get("dataset", name).factory(root=root)
    if hasattr(ds, "info"):
        details = ds.info()
    else:
        sizes, missing, first = {}, {}, None
        for s in ds.splits:
            try:
                sizes[s] = len(ds.split(s))
            except VaeflowError as exc:
                missing[s], first = str(exc), first or exc
        if not sizes and first is not None:
            raise first
        details = {"splits": sizes, **({"missing": missing} if missing else {})}
        for s, reason in missing.items():
            warning(f"{name}: split {s!r} cannot be read, reporting the others: {reason}")
    return {"name": name, "root": root, "image_shape": list(ds.image_shape), **details}


def load_split(cfg: dict, name: str, registry=None, *, dataset=None) -> np.ndarray:
    """One split of the config's dataset as uint8 (N, C, H, W), checked against its image shape."""
    cfg = as_config(cfg, source="the config given to load_split")
    ds = dataset if dataset is not None else build_dataset(cfg, registry)
    splits = getattr(ds, "splits", None)
    if splits is not None and name not in splits:
        raise VaeflowError(f"dataset {cfg.data.name!r} has splits {', '.join(splits)}, not {name!r}")
    arr = ds.split(name)
    shape = tuple(ds.image_shape)
    if arr.dtype != np.uint8 or arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
        raise VaeflowError(f"dataset {cfg.data.name!r} split {name!r} gave {arr.dtype} {arr.shape}, expected uint8 (N, {', '.join(map(str, shape))})")
    if len(arr) == 0:
        raise VaeflowError(f"dataset {cfg.data.name!r} split {name!r} is empty; check data.root")
    return arr


def load_splits(cfg: dict, registry=None, *, test_split: str = "test") -> Splits:
    ds = build_dataset(cfg, registry)
    train = load_split(cfg, "train", dataset=ds)
    test = load_split(cfg, test_split, dataset=ds)
    return Splits(train, test, tuple(ds.image_shape))
