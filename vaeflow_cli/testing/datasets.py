"""The dataset checks: shapes and dtypes of the splits, and one clear error for missing files."""

from __future__ import annotations

from vaeflow_cli.testing._helpers import _first_line


def check_dataset(factory, **kwargs) -> None:
    """Check a registered dataset factory (``DatasetFactory``) built with ``kwargs`` (e.g. ``root``):
    ``image_shape`` a tuple of three positive ints (C, H, W) with C in {1, 3}; ``splits`` a
    non-empty sequence of distinct names including "train" (what training reads); every split an
    ``np.ndarray`` of dtype uint8 and shape (N, C, H, W), N >= 1. Raises AssertionError."""
    import numpy as np

    from vaeflow_cli.hookspecs import Dataset

    ds = factory(**kwargs)
    assert isinstance(ds, Dataset), (
        f"a dataset must have image_shape, splits and split() (vaeflow_cli.hookspecs.Dataset); {type(ds).__name__} does not"
    )
    shape = ds.image_shape
    assert isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape), (
        f"image_shape must be a tuple of three positive ints (C, H, W), got {shape!r}"
    )
    assert shape[0] in (1, 3), f"image_shape's C must be 1 or 3, got {shape[0]}"
    splits = ds.splits
    assert not isinstance(splits, str) and len(splits) > 0 and all(isinstance(s, str) and s for s in splits), (
        f"splits must be a non-empty sequence of split names, got {splits!r}"
    )
    assert len(set(splits)) == len(splits), f"splits has duplicates: {list(splits)}"
    assert "train" in splits, f"splits must include 'train' (training reads it), got {list(splits)}"
    for name in splits:
        arr = ds.split(name)
        assert isinstance(arr, np.ndarray), f"split({name!r}) must return an np.ndarray, got {type(arr).__name__}"
        assert arr.dtype == np.uint8, f"split({name!r}) must be uint8 (values 0..255), got {arr.dtype}"
        assert arr.ndim == 4 and tuple(arr.shape[1:]) == shape, f"split({name!r}) must have shape (N, {', '.join(map(str, shape))}), got {arr.shape}"
        assert arr.shape[0] >= 1, f"split({name!r}) is empty"


def check_dataset_missing_files(factory, **kwargs) -> str:
    """Assert that a dataset built with ``kwargs`` pointing at missing files (e.g. an empty
    ``root``) fails as the ``Dataset`` protocol says: a ``VaeflowError`` from the factory or from
    ``split`` whose message is one non-empty line (no traceback, no newline). Returns the message
    for further checks (what, where, how to fix). Raises AssertionError."""
    from vaeflow_cli.errors import VaeflowError

    try:
        ds = factory(**kwargs)
        for name in ds.splits:
            ds.split(name)
    except VaeflowError as exc:
        msg = str(exc)
        assert msg.strip() and "\n" not in msg.strip(), f"the error must be one line, got {msg!r}"
        return msg
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(
            f"missing files must raise vaeflow_cli.errors.VaeflowError (one line: what, where, how to fix), not {_first_line(exc)}"
        ) from None
    raise AssertionError(f"no error with {kwargs!r}: a dataset whose files are missing must raise VaeflowError")
