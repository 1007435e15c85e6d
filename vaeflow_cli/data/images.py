"""Turning model outputs into uint8 images, grids, PNG and NPY bytes; reading the image files a
user names (files, folders) as a run reads its own."""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from vaeflow_cli.console import counted
from vaeflow_cli.data.crop import describe_crop
from vaeflow_cli.errors import VaeflowError


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


def read_image(path, image_shape: tuple[int, int, int], *, why: str = "") -> np.ndarray:
    """A PNG/JPEG file as uint8 (C, H, W) matching ``image_shape`` (converted to L or RGB, 16-bit
    greyscale by its real range; must have that size: ``why`` says why, in the error). The size is
    checked on the header, before anything is decoded, so a file that claims 60000 x 60000 pixels
    costs nothing; any unreadable file is one VaeflowError."""
    from vaeflow_cli.data.decode import DEFAULT_MAX_PIXELS, eight_bit, open_image
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
                raise VaeflowError(f"{path}: image is {im.size[0]}x{im.size[1]}, the model needs {w}x{h}{why}; resize it first")
            im = eight_bit(im).convert("L" if c == 1 else "RGB")
            arr = np.asarray(im)
    except VaeflowError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a truncated or malformed file, whatever Pillow raises on it
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VaeflowError(f"{path}: cannot read image ({text}); give a {w}x{h} PNG or JPEG file") from None
    if arr.shape[:2] != (h, w):
        raise VaeflowError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, the model needs {w}x{h}; resize it first")
    return arr.reshape(h, w, c).transpose(2, 0, 1).copy()


def luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB -> uint8 (...) greyscale, as Pillow's convert("L") computes it (ITU-R
    601-2: 0.299 R + 0.587 G + 0.114 B in 16-bit fixed point, rounded)."""
    r, g, b = (rgb[..., k].astype(np.uint32) for k in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def read_images_as_run(paths, config: dict, image_shape, *, registry=None, threads: int = 0) -> tuple[np.ndarray, str | None]:
    """PNG/JPEG files decoded exactly as a run's dataset decodes its own images, for commands that
    take a user's images (``interpolate --from/--to``): (uint8 (N, C, H, W) of ``image_shape``, a
    line saying what was applied, or None when nothing was).

    ``config`` is the run's resolved config. A dataset of image files says how it turns a file
    into one of its images (``file_decoding()``: imagefolder and celeba give their ``data.crop`` /
    ``data.crop_box``, ``data.size`` and ``data.max_pixels``): each file goes through that crop
    and the Lanczos3 resize on the Rust data path that built the run's training images (Pillow for
    what Rust cannot read, 16-bit greyscale by its real range), then to the model's channels
    (greyscale as Pillow's convert("L")). A file that the crop does not fit but that is already
    the model's size (an image cut out before, say) is taken as it is. A dataset without
    ``file_decoding`` (mnist, cifar10: arrays, not image files) has no preprocessing to apply:
    each file must already be the model's size. Any file that cannot be used is one VaeflowError
    naming it and saying what to give instead (``decode_as_run``'s first failure)."""
    pixels, failures, note = decode_as_run(paths, config, image_shape, crop_resize=True, registry=registry, threads=threads)
    if failures:
        raise VaeflowError(failures[0][1])
    return pixels, note


PERMISSION_FIX = "check its permissions and its folders': this user must be able to read it"


def decode_as_run(
    paths, config: dict, image_shape, *, crop_resize: bool, size_fix: str = "resize it first", dataset=None, registry=None, threads: int = 0
) -> tuple[np.ndarray, list[tuple[int, str]], str | None]:
    """Image files as a run's model takes them, with the files that cannot be used named one by
    one instead of stopping at the first (``vaeflow score``; ``read_images_as_run``).

    Returns (uint8 (N, C, H, W) of ``image_shape``, zeros where a file failed; [(index, one line
    naming the file, what is wrong and how to fix it)], in the files' order; the line on what was
    applied, or None). With ``crop_resize`` each file goes through the run's dataset's own crop
    and Lanczos3 resize (``read_images_as_run``; a dataset without ``file_decoding`` has none, and
    each file must then be the model's size). Without it, each file must already be the model's
    size (checked on its header, before anything is decoded; ``size_fix`` ends the line of one
    that is not) and is taken as it is. Either way the pixels come from the data path that decodes
    the run's training files (``decode.decode_files``: JPEGs in Rust, the rest through Pillow),
    then to the model's channels (greyscale as Pillow's convert("L")). ``dataset``: the run's
    dataset object, when the caller has built it already. Raises VaeflowError only for a run whose
    config does not match its model."""
    from vaeflow_cli.config.limits import file_problem
    from vaeflow_cli.data.decode import DEFAULT_MAX_PIXELS, decode_files
    from vaeflow_cli.data.splits import build_dataset

    c, h, w = (int(v) for v in image_shape)
    paths = [str(p) for p in paths]
    failures: dict[int, str] = {}
    for i, p in enumerate(paths):
        problem = file_problem(p)
        if problem is None and not os.access(p, os.R_OK):
            problem = "permission denied"  # a file stat sees but this user may not read: the fix is its permissions, not its format
        if problem == "permission denied":
            failures[i] = f"{p}: permission denied; {PERMISSION_FIX}"
        elif problem is not None:
            failures[i] = f"{p} {problem}; give a PNG or JPEG file"
    name = config.data.name
    dataset = dataset if dataset is not None else build_dataset(config, registry)
    decoding = getattr(dataset, "file_decoding", None)
    resizing = crop_resize and callable(decoding)
    if resizing:
        spec = decoding()
        crop, size, max_pixels = spec["crop"], int(spec["size"]), int(spec["max_pixels"])
        if (size, size) != (h, w):
            raise VaeflowError(
                f"the run's dataset {name} makes {size}x{size} images but its model takes {w}x{h}; the run's config.toml does not match its model"
            )
    else:
        crop, size = None, h
        max_pixels = int(decoding()["max_pixels"]) if callable(decoding) else DEFAULT_MAX_PIXELS
        why, fix = (
            ("", size_fix) if callable(decoding) else (f" (the run's dataset, {name}, has no crop or resize for image files)", "resize it first")
        )
        for i, p in enumerate(paths):
            found = None if i in failures else _header_size(p, max_pixels)
            if found is not None and found != (w, h):
                failures[i] = f"{p}: image is {found[0]}x{found[1]}, the model needs {w}x{h}{why}; {fix}"
    todo = [i for i in range(len(paths)) if i not in failures]
    pixels = np.zeros((len(paths), 3, h, w), np.uint8)
    if h == w:
        decoded, bad = decode_files([paths[i] for i in todo], crop=crop, size=size, threads=threads, max_pixels=max_pixels)
        pixels[todo] = decoded.transpose(0, 3, 1, 2)
        bad = [(todo[j], message, kind) for j, message, kind in bad]
    else:  # a model whose images are not square: Pillow, one file at a time, each of the model's size
        bad = []
        for i in todo:
            try:
                pixels[i] = read_image(paths[i], (3, h, w))
            except VaeflowError as exc:
                bad.append((i, str(exc), "as-is"))
    as_is = []
    for i, message, kind in bad:
        if kind == "as-is":
            failures[i] = message
        elif kind == "crop" and _header_size(paths[i], max_pixels) == (w, h):
            pixels[i] = read_image(paths[i], (3, h, w))
            as_is.append(paths[i])
        elif kind == "crop":
            failures[i] = (
                f"{message}; the run's {name} dataset cuts {describe_crop(crop)} of every image: give an image that holds it, or one already {w}x{h}"
            )
        elif kind == "size":
            bound = f"the run's data.max_pixels is {max_pixels}" if callable(decoding) else f"vaeflow reads images of at most {max_pixels} pixels"
            failures[i] = f"{message}; give a smaller image ({bound})"
        elif kind == "read" and "permission denied" in message.lower():
            failures[i] = f"cannot read image {message}; {PERMISSION_FIX}"
        else:
            failures[i] = f"cannot read image {message}; give a PNG or JPEG file"
    if c == 1:
        pixels = luma(pixels.transpose(0, 2, 3, 1))[:, None]
    note = None
    if resizing:
        note = f"applied the run's preprocessing ({name}): {describe_crop(crop)}, resized to {size}x{size}"
        if c == 1:
            note += ", greyscale"
        if as_is:
            note += f"; {', '.join(as_is)} already {w}x{h}, taken as it is (the crop does not fit it)"
    return np.ascontiguousarray(pixels), sorted(failures.items()), note


def _header_size(path: str, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from an image file's header, or None when it cannot be read."""
    from vaeflow_cli.data.decode import open_image
    from vaeflow_cli.errors import ImageProblem

    try:
        with open_image(path, max_pixels=max_pixels) as im:
            return im.size
    except ImageProblem:
        return None


# ------------------------------------------------------------------------------ the files a user names

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""The files a folder contributes (case-insensitive), as the imagefolder dataset reads them."""


def image_files(folder: str, *, unreadable: Callable[[str, str], object] | None = None) -> tuple[list[str], int]:
    """The image files under ``folder``, recursively, sorted by path: (paths, how many other
    files were left out). Links to folders are not followed (as the imagefolder dataset).
    Raises VaeflowError for a folder that cannot be listed, naming it: ``folder`` itself, or a
    folder inside it unless ``unreadable(subfolder, one line)`` is given, which hears of each
    such subfolder instead (the rest is listed)."""
    found, others = [], 0

    def failed(exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else folder
        line = f"{where}: cannot list its files ({exc.strerror or type(exc).__name__}); check its permissions"
        if unreadable is None or os.path.normpath(where) == os.path.normpath(folder):
            raise VaeflowError(line)
        unreadable(os.fsdecode(where), line)

    for top, dirs, files in os.walk(folder, onerror=failed):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.join(top, name))
            else:
                others += 1
    return sorted(found), others


def expand(
    path: str, *, note: Callable[[str], object] | None = None, unreadable: Callable[[str, str], object] | None = None
) -> tuple[list[str], str | None]:
    """What one input names: a file is itself, a folder its image files (recursively, sorted).
    Returns (paths, None) or ([], why it names nothing to score): missing, an empty folder, a
    folder without PNG or JPEG files, a folder that cannot be listed. ``note(line)`` hears of
    files a folder left out. A folder inside it that cannot be listed is ``unreadable(subfolder,
    one line naming it)`` and the rest is returned (as files that cannot be read are reported
    one by one); without ``unreadable`` it is the ``why`` of the whole input, naming the
    subfolder. When nothing else could be listed, the first such line is the ``why``."""
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            return [], f"{path} not found; give an image file or a folder of them"
        return [path], None  # a file (or a broken link, a device): decoding says what is wrong with it
    skipped: list[tuple[str, str]] = []
    try:
        found, others = image_files(path, unreadable=lambda where, line: skipped.append((where, line)))
    except VaeflowError as exc:
        return [], str(exc)
    if skipped and (not found or unreadable is None):
        first = skipped[0][1]
        return [], first if len(skipped) == 1 else f"{counted(len(skipped), 'folder')} in {path} cannot be listed; the first: {first}"
    for where, line in skipped:
        unreadable(where, line)
    if not found:
        what = "is an empty folder" if not others else f"holds no {'/'.join(IMAGE_SUFFIXES)} files (only {counted(others, 'other file')})"
        return [], f"{path} {what}; give a folder of PNG or JPEG images"
    if others and note is not None:
        note(f"{path}: left out {counted(others, 'file')} that {'is' if others == 1 else 'are'} not {'/'.join(IMAGE_SUFFIXES)}")
    return found, None


def stdin_paths(stream) -> Iterator[str]:
    """Paths from a binary stream, one per line (the bytes of each as the file system's names:
    odd characters and non-UTF-8 names come through); empty lines are skipped."""
    for raw in stream:
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if line:
            yield os.fsdecode(line)
