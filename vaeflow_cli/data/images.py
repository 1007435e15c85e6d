"""Turning model outputs into uint8 images, grids, PNG and NPY bytes."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np


def to_uint8(x) -> np.ndarray:
    """Images in [0, 1) (a tensor or array (N, C, H, W)) -> uint8 clamp(floor(256 x), 0, 255) (model.md).
    Non-finite values (a diverged flow's inverse) become 0 (NaN, -inf) or 255 (+inf), never
    whatever a cast of NaN happens to give."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.floor(x * 256.0), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 image (rows*H', cols*W', C); ``nrow`` images per row."""
    n, c, h, w = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        out[top : top + h, left : left + w] = images[i].transpose(1, 2, 0)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) with C in {1, 3} -> PNG bytes."""
    from PIL import Image

    arr = image[:, :, 0] if image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def read_image(path, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A PNG/JPEG file as uint8 (C, H, W) matching ``image_shape`` (converted to L or RGB; must have
    that size). The size is checked on the header, before anything is decoded, so a file that
    claims 60000 x 60000 pixels costs nothing; any unreadable file is one VaeflowError."""
    from vaeflow_cli.data.pipeline import DEFAULT_MAX_PIXELS, open_image
    from vaeflow_cli.errors import ImageProblem, VaeflowError

    c, h, w = image_shape
    try:
        im = open_image(path, max_pixels=DEFAULT_MAX_PIXELS)
    except ImageProblem as exc:
        raise VaeflowError(f"{path}: cannot read image: {exc}; give a {w}x{h} PNG or JPEG file") from None
    try:
        with im, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings on odd files would be stray stderr lines
            if im.size != (w, h):
                raise VaeflowError(f"{path}: image is {im.size[0]}x{im.size[1]}, the model needs {w}x{h}; resize it first")
            im = im.convert("L" if c == 1 else "RGB")
            arr = np.asarray(im)
    except VaeflowError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a truncated or malformed file, whatever Pillow raises on it
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VaeflowError(f"{path}: cannot read image ({text}); give a {w}x{h} PNG or JPEG file") from None
    if arr.shape[:2] != (h, w):
        raise VaeflowError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, the model needs {w}x{h}; resize it first")
    return arr.reshape(h, w, c).transpose(2, 0, 1).copy()
