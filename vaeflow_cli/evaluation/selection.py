"""The images ``evaluate``, ``score`` and ``ood`` take from another dataset than the run's own
(``--data``, ``--data-root``): its config, and one of its splits checked against the run's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaeflow_cli.errors import VaeflowError


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


def option_text(data: str | None, data_root) -> str:
    """How the user asked for other data, to start error lines: "evaluate --data NAME" or
    "evaluate --data-root DIR"."""
    return f"evaluate --data {data}" if data is not None else f"evaluate --data-root {data_root}"


def eval_data_config(cfg, *, data: str | None, data_root: str | Path | None, source: str | None = None) -> dict:
    """The run's resolved config with its [data] replaced for ``evaluate --data/--data-root``.

    A dataset name other than the run's gets [data] = {name, root} (root "" when no ``data_root``:
    the dataset's default, e.g. the current folder); the run's own name (``--data-root`` alone, or
    ``--data`` equal to it) keeps the run's other data options (crop, size, holdout, ...) with the
    root replaced when given. Validated through ``config.resolve`` like a config's [data] section,
    so an unknown name or option raises the usual one-line VaeflowError listing the choices, which
    starts with ``source`` (default: the evaluate options that asked for the data)."""
    from vaeflow_cli.config import core as config_mod

    cfg = config_mod.as_config(cfg, source="the run's config")
    name = data if data is not None else cfg.data.name
    if name == cfg.data.name:
        section = dict(cfg["data"])
        if data_root is not None:
            section["root"] = str(data_root)
    else:
        section = {"name": name, "root": "" if data_root is None else str(data_root)}
    return config_mod.resolve(base={**cfg, "data": section}, source=source or option_text(data, data_root))


def load_eval_images(eval_cfg: dict, split: str, run_shape: tuple, run_path: Path, where: str, split_hint: str = "with --split") -> np.ndarray:
    """uint8 (N, C, H, W) images of ``split`` of another dataset, checked before use: the split
    exists, the images (declared and actual) have the run's model image shape ``run_shape``, the
    array is non-empty uint8. Each failure is one VaeflowError line starting with ``where``
    (``split_hint``: how the user names another split)."""
    from vaeflow_cli.data.splits import build_dataset

    ds = build_dataset(eval_cfg)
    name = eval_cfg.data.name
    splits = getattr(ds, "splits", None)
    if splits is not None and split not in splits:
        raise VaeflowError(f"{where}: dataset {name!r} has splits {', '.join(splits)}, not {split!r}; pick one of them {split_hint}")

    def mismatch(shape) -> VaeflowError:
        return VaeflowError(
            f"{where}: images are {shape_text(shape)} but {run_path} was trained on {shape_text(run_shape)}; "
            f"evaluate it on a dataset of {shape_text(run_shape)} images"
        )

    if tuple(ds.image_shape) != tuple(run_shape):
        raise mismatch(ds.image_shape)
    try:
        arr = ds.split(split)
    except VaeflowError as exc:
        raise VaeflowError(f"{where}: {exc}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise VaeflowError(
            f"{where}: dataset {name!r} split {split!r} gave {arr.dtype} {arr.shape}, expected uint8 (N, {', '.join(map(str, run_shape))})"
        )
    if tuple(arr.shape[1:]) != tuple(run_shape):
        raise mismatch(arr.shape[1:])
    if len(arr) == 0:
        raise VaeflowError(f"{where}: dataset {name!r} split {split!r} is empty; check --data-root")
    return arr
