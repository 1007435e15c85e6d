"""Yardsticks for ``vaeflow evaluate``: closed-form density models that need no training loop, and
a lossless codec.

The per-pixel independent categorical ("histogram") baseline: each of the D = C*H*W pixel
positions j gets its own 256-bin categorical p_j over the uint8 values, fitted on the training
images with add-alpha smoothing,

    p_j(k) = (n_j(k) + alpha) / (N + 256 alpha),   n_j(k) = #{training images with x_j = k},

and an image costs bpd(x) = -(1/D) sum_j log2 p_j(x_j) bits per dimension. Ignoring every
dependency between pixels, it is the bar any image model should clear.

Why it is on the same scale as the model's bound: vaeflow's models are densities on dequantized
images y = (x + u) / 256, u ~ U[0,1)^D, and report bpd = (-log p(y) + D log 256) / (D log 2)
(``distributions.bits_per_dim``). A categorical P on the 256 bins is the same thing as the
piecewise-uniform density p(y) = prod_j 256 p_j(floor(256 y_j)) on [0,1)^D; its bpd by that
formula is -(1/D) sum_j log2 p_j(x_j) for every u, i.e. exactly the categorical's bpd. So the
histogram's number is an exact (not a bound) bpd of a density on the same dequantized data,
directly comparable with the ELBO / IWAE upper bounds of the VAE. The uniform density gives
8 bits per dimension, which is also the limit of the histogram as alpha grows.

The lossless-codec yardstick (``png_bpd``): each evaluated image is written as a PNG by Pillow
with ``optimize=True`` and costs 8 * (file length in bytes) / D bits per dimension. A lossless code
of L bits for the integer image x is a discrete model with P(x) >= 2^-L (Kraft), hence, by the same
argument as above, a density on the dequantized images with bpd <= L / D: a model whose bound is
below PNG's number beats a real codec on the same images. The file length includes PNG's container
(signature, IHDR, IDAT and IEND chunk headers: 57 bytes, 0.15 bits/dim on a 32x32 RGB image), as
any stored file does.
"""

from __future__ import annotations

import numpy as np

from vaeflow_cli.errors import VaeflowError

PNG_OPTIONS = {"format": "PNG", "optimize": True}  # what png_bpd asks Pillow for
HISTOGRAM_ALPHA = 0.1  # add-alpha (Lidstone) smoothing of each position's 256 counts
_CHUNK_ELEMENTS = 1 << 22  # uint8 values handled per step (about 32 MiB of int64 indices)


def _flat_check(images: np.ndarray, what: str) -> tuple[int, int]:
    if images.dtype != np.uint8 or images.ndim < 2 or len(images) == 0:
        raise VaeflowError(f"histogram baseline: the {what} images must be a non-empty uint8 array (N, C, H, W), got {images.dtype} {images.shape}")
    return len(images), int(np.prod(images.shape[1:]))


def _chunks(n: int, dims: int):
    step = max(1, _CHUNK_ELEMENTS // max(dims, 1))
    for start in range(0, n, step):
        yield start, min(start + step, n)


def histogram_counts(train: np.ndarray) -> np.ndarray:
    """Per-position value counts of uint8 images.

    train: uint8 (N, C, H, W) (any (N, ...); a memory map is read in slices). Returns int64
    (D, 256), D = C*H*W: entry [j, k] is how many images have value k at flattened position j.
    Memory: the (D, 256) table plus one slice of about 4M values; never (N, D, 256).
    Raises VaeflowError for an empty or non-uint8 array."""
    n, dims = _flat_check(train, "training")
    offsets = np.arange(dims, dtype=np.int64) * 256  # position j's bins start at 256 j
    counts = np.zeros(dims * 256, np.int64)
    for start, stop in _chunks(n, dims):
        x = np.asarray(train[start:stop]).reshape(stop - start, dims)
        counts += np.bincount((x + offsets).ravel(), minlength=dims * 256)  # uint8 + int64 -> int64
    return counts.reshape(dims, 256)


def histogram_bpd(train: np.ndarray, test: np.ndarray, alpha: float = HISTOGRAM_ALPHA) -> np.ndarray:
    """Per-image bits/dim of ``test`` under the per-pixel independent categorical fitted on ``train``.

    train: uint8 (N, C, H, W); test: uint8 (M, C, H, W) of the same image shape. alpha > 0 is the
    add-alpha smoothing (every value keeps probability >= alpha / (N + 256 alpha), so unseen
    values cost a finite number of bits). Returns float64 (M,): bpd(x) = -(1/D) sum_j
    log2 p_j(x_j), bits per dimension, exact (see the module docstring for why it is comparable
    with the model's bpd bounds on dequantized images). Computed in float64 from the (D, 256)
    count table, ``test`` read in slices. Raises VaeflowError for empty or non-uint8 arrays,
    differing image shapes, or alpha <= 0.
    """
    if not alpha > 0:
        raise VaeflowError(f"histogram baseline: alpha must be positive, got {alpha}")
    n, dims = _flat_check(train, "training")
    m, _ = _flat_check(test, "evaluated")
    if tuple(train.shape[1:]) != tuple(test.shape[1:]):
        raise VaeflowError(
            f"histogram baseline: training images are {'x'.join(map(str, train.shape[1:]))} but the evaluated ones are {'x'.join(map(str, test.shape[1:]))}; use images of one shape"
        )
    log2_p = (np.log2(histogram_counts(train) + alpha) - np.log2(n + 256 * alpha)).ravel()  # (D*256,)
    offsets = np.arange(dims, dtype=np.int64) * 256
    out = np.empty(m, np.float64)
    for start, stop in _chunks(m, dims):
        x = np.asarray(test[start:stop]).reshape(stop - start, dims)
        out[start:stop] = -log2_p[x + offsets].mean(axis=1)
    return out


def png_bpd(images: np.ndarray, progress=None) -> np.ndarray:
    """Per-image bits/dim of lossless PNG files of ``images`` (the lossless-codec yardstick).

    images: uint8 (N, C, H, W) with C = 1 (written as mode "L") or C = 3 (mode "RGB"). Each image
    is encoded in memory by Pillow with ``PNG_OPTIONS`` (optimize: zlib level 9 and Pillow's filter
    choice). Returns float64 (N,): 8 * len(png bytes) / (C*H*W), bits per dimension, exact for that
    file (module docstring: why it is comparable with the model's bounds); ``progress(1)`` after
    each image. Raises VaeflowError for an empty or non-uint8 array or a channel count PNG has no
    mode for here."""
    import io

    from PIL import Image

    n, dims = _flat_check(images, "evaluated")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise VaeflowError(f"PNG yardstick: images must be uint8 (N, C, H, W) with 1 or 3 channels, got shape {images.shape}")
    out = np.empty(n, np.float64)
    for i in range(n):
        x = np.asarray(images[i])
        picture = Image.fromarray(x[0], "L") if x.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)), "RGB")
        buffer = io.BytesIO()
        picture.save(buffer, **PNG_OPTIONS)
        out[i] = 8.0 * buffer.getbuffer().nbytes / dims
        if progress is not None:
            progress(1)
    return out
