"""The crop of image files, in one place: what a crop is, checked and made canonical (``check_crop``),
the region it keeps of an image (``crop_region``, computed as the Rust decoder computes it) and
what it is in words (``describe_crop``).

A crop is None (the whole image), an int c >= 0 (the centred c x c square, (w - c) // 2 columns
from the left and (h - c) // 2 rows from the top; 0: the centred square of the shorter side) or a
box (top, left, height, width), numpy's ``img[top:top + height, left:left + width]``. Users write
it as the config keys ``data.crop`` and ``data.crop_box`` of the image-file datasets.
"""

from __future__ import annotations

import numpy as np

from vaeflow_cli.errors import VaeflowError

Crop = int | tuple[int, int, int, int] | None


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_crop(crop, what: str = "crop", *, box: bool = False) -> Crop:
    """``crop`` as the decoders take it: None, an int >= 0, or a box (a list or tuple of four
    integers, top and left >= 0, height and width >= 1) as a tuple of ints; with ``box`` (a key
    that holds a box, such as ``data.crop_box``) a box only. Anything else is one VaeflowError line
    that starts with ``what`` (the argument or config key that gave it)."""
    if box or isinstance(crop, (list, tuple)):
        is_box = isinstance(crop, (list, tuple)) and len(crop) == 4 and all(_is_int(v) for v in crop)
        if not is_box or min(crop[:2]) < 0 or min(crop[2:]) < 1:
            shown = list(crop) if isinstance(crop, (list, tuple)) else crop
            raise VaeflowError(f"{what} = [top, left, height, width] (integers, top and left >= 0, height and width >= 1); got {shown!r}")
        return tuple(int(v) for v in crop)
    if crop is None:
        return None
    if _is_int(crop) and crop >= 0:
        return int(crop)
    raise VaeflowError(
        f"{what} must be None, an integer >= 0 (0: the centred square of the shorter side) or a [top, left, height, width] box; got {crop!r}"
    )


def crop_region(crop, w: int, h: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) that ``crop`` keeps of a w x h image (Pillow's box), as the Rust
    decoder computes it; ValueError when it does not fit (VaeflowError for a crop that is not one)."""
    crop = check_crop(crop)
    if crop is None:
        return 0, 0, w, h
    if isinstance(crop, tuple):
        top, left, ch, cw = crop
        if top + ch > h or left + cw > w:
            raise ValueError(f"image is {w}x{h}, the crop box (rows {top}:{top + ch}, columns {left}:{left + cw}) does not fit in it")
        return left, top, left + cw, top + ch
    c = min(w, h) if crop == 0 else crop
    if c > w or c > h:
        raise ValueError(f"image is {w}x{h}, smaller than the crop {c}")
    return (w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c


def describe_crop(crop) -> str:
    """A crop, in words."""
    if crop is None:
        return "the whole image"
    if isinstance(crop, (tuple, list)):
        top, left, h, w = crop
        return f"the box of rows {top}:{top + h}, columns {left}:{left + w}"
    return "the centred square of the shorter side" if crop == 0 else f"the centred {crop}x{crop} square"
