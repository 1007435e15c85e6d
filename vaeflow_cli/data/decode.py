"""Image files to uint8 arrays: JPEGs decoded, cropped (``vaeflow_cli.data.crop``) and resized in
Rust (``vaeflow_cli._native``, source in native/) with the GIL released, PNGs and what Rust cannot
read through Pillow the same way; an image over the pixel bound is refused on its header, before
it is decoded; a file that fails is one line naming it and the fix."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from vaeflow_cli.config.limits import file_problem
from vaeflow_cli.console import log as console_log
from vaeflow_cli.data.crop import Crop, check_crop, crop_region
from vaeflow_cli.errors import ImageProblem, VaeflowError, first_line

# The default bound on an image's width x height, checked on the header before anything is
# decoded (data.max_pixels of the image-file datasets): 40 megapixels, ~1000 CelebA images
# (178 x 218), at most ~120 MB of decoded RGB per image.
DEFAULT_MAX_PIXELS = 40_000_000


def decode_images(paths, *, crop: Crop, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG files -> uint8 (N, size, size, 3): decode, crop and resize with Lanczos3 antialiasing,
    in parallel in Rust with the GIL released. ``crop``: None (the whole image), an int (a centred
    square) or a (top, left, height, width) box (``vaeflow_cli.data.crop``). An image whose header
    claims more than ``max_pixels`` pixels is refused before it is decoded. An unreadable file, one
    the crop does not fit or one over the bound raises VaeflowError naming it (and how many others
    failed)."""
    pixels, failures = _decode_native(paths, crop=crop, size=size, threads=threads, max_pixels=max_pixels)
    if failures:
        raise _decode_failure(failures, len(paths), max_pixels=max_pixels)
    return pixels


def _decode_failure(
    failures: list[tuple[int, str, str]], total: int, *, max_pixels: int, dataset: bool = False, skip_bad: bool = False
) -> VaeflowError:
    """One line naming the first file that failed and how many others did, with the fix that fits
    what went wrong: a crop that does not fit (or fits none of the ``total`` images) says to
    change the crop, a file over the pixel bound says which key raises it, an unreadable file says
    to replace it. ``dataset``: the files are a dataset's, whose config keys (data.crop,
    data.skip_bad, ...) the fix names; ``skip_bad``: they were skipped, and none was left."""
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    _, message, kind = failures[0]
    crops = "data.crop / data.crop_box" if dataset else "the crop"
    fits_none = sum(f[2] == "crop" for f in failures) == total
    if fits_none:
        hint = f"the crop fits none of the {total} image(s): choose a smaller crop that fits them ({crops})"
    elif kind == "crop":
        hint = f"choose a crop that fits every image ({crops}), or remove the file"
    elif kind == "size":
        key = "data.max_pixels" if dataset else "max_pixels"
        hint = f"remove the file, or raise {key} (now {max_pixels}) to accept images this large"
    else:
        hint = "replace or remove the file"
    if skip_bad:
        return VaeflowError(f"no image could be decoded, all {total} failed (data.skip_bad = true skipped them), first: {message}; {hint}")
    if dataset and not fits_none:
        hint += ", or set data.skip_bad = true"
    return VaeflowError(f"cannot decode image {message}{more}; {hint}")


def decode_with_fallback(
    paths, *, crop: Crop, size: int, skip_bad: bool = False, threads: int = 0, log=None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Like ``decode_images`` for any image files: JPEGs in Rust, anything Rust cannot decode (PNG,
    CMYK or other unusual JPEGs) through Pillow with the same crop and Lanczos resize. A file that
    neither can read, or whose header claims more than ``max_pixels`` pixels, is an error naming
    it or, with ``skip_bad``, dropped and counted on stderr (when every file fails, that is an
    error too: an empty result would only be reported later, as an empty split). Files that Rust
    could not read at all (missing, a directory), whose crop does not fit or that are over the
    bound are not retried."""
    paths = [str(p) for p in paths]
    pixels, bad = decode_files(paths, crop=crop, size=size, threads=threads, max_pixels=max_pixels)
    if bad and (not skip_bad or len(bad) == len(paths)):
        raise _decode_failure(bad, len(paths), max_pixels=max_pixels, dataset=True, skip_bad=skip_bad)
    if bad:
        (log or console_log)(f"skipped {len(bad)} unreadable image(s) of {len(paths)}, first: {bad[0][1]}")
        pixels = np.delete(pixels, [i for i, _, _ in bad], axis=0)
    return pixels


def decode_files(paths, *, crop: Crop, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(uint8 (N, size, size, 3), [(index, message, kind), ...]): what ``decode_with_fallback``
    decodes, JPEGs in Rust and the rest through Pillow, with the files that neither could decode
    (zeros in the array); kind is "read", "size", "crop" or "decode"."""
    paths = [str(p) for p in paths]
    pixels, failures = _decode_native(paths, crop=crop, size=size, threads=threads, max_pixels=max_pixels)
    bad = []
    for i, message, kind in failures:
        if kind != "decode":
            bad.append((i, message, kind))
            continue
        try:
            pixels[i] = pillow_decode(paths[i], crop=crop, size=size, max_pixels=max_pixels)
        except ImageProblem as exc:
            bad.append((i, f"{paths[i]}: {exc}" if exc.kind in ("size", "crop") else _both_failed(paths[i], message, str(exc)), exc.kind))
        except Exception as exc:  # noqa: BLE001 -- any failure of Pillow on a hostile file is that file's
            bad.append((i, _both_failed(paths[i], message, f"{type(exc).__name__}: {first_line(exc)}"), "decode"))
    return pixels, bad


def _both_failed(path: str, native: str, pillow: str) -> str:
    """The message for a file that neither the Rust JPEG decoder nor Pillow could decode: an empty
    file says so; a file that starts as a PNG gets Pillow's reason alone (the JPEG decoder's "not a
    JPEG" would only mislead); others get both reasons."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        head = None
    if head == b"":
        return f"{path}: an empty file (0 bytes); replace it with the image, or remove it"
    if head is not None and head.startswith(b"\x89PNG"):
        return f"{path}: a damaged PNG file (truncated, or not all PNG); Pillow: {pillow}"
    return f"{native}; Pillow: {pillow}"


# What vaeflow decodes through Pillow: PNG and JPEG (MPO is how Pillow names many camera JPEGs).
PILLOW_FORMATS = ("PNG", "JPEG", "MPO")

_PIL_OPEN_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is process-wide


def open_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A lazily decoded Pillow image of the PNG/JPEG file ``path`` (use it in a ``with``), whose
    header was checked against ``max_pixels`` before any pixel was decoded; ImageProblem
    otherwise. Pillow's own decompression-bomb check (a warning above 89 megapixels, an error
    above twice that) is replaced by this bound for the call, so that the bound the user set is
    the one that holds, and no warning reaches stderr."""
    from PIL import Image

    problem = file_problem(path)
    if problem is not None:
        raise ImageProblem(problem, "read")
    with _PIL_OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # only for this open, which reads the header alone
        try:
            with warnings.catch_warnings():  # e.g. "malformed MPO file": the caller reports what matters
                warnings.simplefilter("ignore")
                im = Image.open(path, formats=PILLOW_FORMATS)
        except Exception:  # noqa: BLE001 -- an unidentifiable or malformed header
            raise ImageProblem("not a PNG or JPEG image (its header is neither, or is damaged)", "decode") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageProblem(f"the header claims {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} (nothing was decoded)", "size")
    return im


def pillow_decode(path, *, crop: Crop, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One image through Pillow: RGB (16-bit greyscale by its real range, see ``eight_bit``), the
    crop of ``decode_images``, Lanczos resize. Raises ImageProblem for a file over ``max_pixels``
    ("size"), one the crop does not fit ("crop") or one that is not a readable PNG/JPEG file."""
    from PIL import Image

    with open_image(path, max_pixels=max_pixels) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings on odd files would be stray stderr lines
        im = eight_bit(im).convert("RGB")
        try:
            region = crop_region(crop, *im.size)
        except ValueError as exc:
            raise ImageProblem(str(exc), "crop") from None
        return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=region))


# Pillow's modes of integer greyscale wider than 8 bits: a 16-bit greyscale PNG opens as I;16 in
# recent Pillow, as I (32-bit) in older ones, holding 0..65535 either way.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit(im):
    """``im`` with 16-bit greyscale values (Pillow's I;16 and I modes) mapped to 8-bit L by their
    real range, round(v * 255 / 65535), so that v * 257 becomes v; other images unchanged.
    (Pillow's convert("L") or convert("RGB") clips instead: every value above 255 becomes 255.)
    16-bit RGB and RGBA PNGs open as 8-bit RGB/RGBA already."""
    from PIL import Image

    if im.mode not in WIDE_GREY_MODES:
        return im
    wide = np.asarray(im).astype(np.int64)
    return Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))


def _decode_native(paths, *, crop: Crop, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(uint8 (N, size, size, 3), [(index, message, kind), ...]) from the Rust decoder; kind is
    "read", "size", "crop" or "decode" (see native/src/python.rs); failed images are zeros."""
    from vaeflow_cli import _native

    paths = [str(p) for p in paths]
    if not isinstance(max_pixels, (int, np.integer)) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise VaeflowError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    odd = {i for i, p in enumerate(paths) if not _is_utf8(p)}  # the Rust side takes UTF-8 paths only
    native_paths = ["" if i in odd else p for i, p in enumerate(paths)]
    flat, failures = _native.decode_images(native_paths, check_crop(crop), size, threads, min(int(max_pixels), 2**63))
    failures = [f for f in failures if f[0] not in odd]
    failures += [(i, f"{os.fsencode(paths[i])!r}: a file name that is not UTF-8", "decode") for i in sorted(odd)]  # Pillow reads it
    return flat.reshape(len(paths), size, size, 3), sorted(failures)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def decode_images_with_failures(paths, *, crop: Crop, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(uint8 (N, size, size, 3), [(index, message), ...]); failed images are zeros."""
    pixels, failures = _decode_native(paths, crop=crop, size=size, threads=threads, max_pixels=max_pixels)
    return pixels, [(i, message) for i, message, _ in failures]
