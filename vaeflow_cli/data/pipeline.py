"""The data path: datasets from the registry, reproducible dequantization, JPEG decoding,
shuffled batches. The heavy parts run in Rust (``vaeflow_cli._native``, source in native/).

Dequantization (model.md): y = (x + u) / 256 with u ~ U[0,1). u is a counter-based hash of
(seed, epoch, image index, pixel index) -- splitmix64 -- so the same image in the same epoch gets
the same noise whatever the batch, order, thread or process it lands in. u has 16 bits, so that
x + u is exact in float32 and y always lies in [x/256, (x+1)/256).
"""

from __future__ import annotations

import errno
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaeflow_cli.config.limits import file_problem
from vaeflow_cli.console import log as console_log
from vaeflow_cli.console import warning
from vaeflow_cli.errors import ImageProblem, VaeflowError

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


CropSpec = int | tuple[int, int, int, int] | None  # see decode_images

# The default bound on an image's width x height, checked on the header before anything is
# decoded (data.max_pixels of the image-file datasets): 40 megapixels, ~1000 CelebA images
# (178 x 218), at most ~120 MB of decoded RGB per image.
DEFAULT_MAX_PIXELS = 40_000_000


def decode_images(paths, *, crop: CropSpec, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG files -> uint8 (N, size, size, 3): decode, crop and resize with Lanczos3 antialiasing,
    in parallel in Rust with the GIL released. ``crop``: None keeps the whole image; 0 the centred
    square of the shorter side; an int c a centred c x c square ((w - c) // 2 columns from the
    left, (h - c) // 2 rows from the top); a (top, left, height, width) box keeps numpy's
    ``img[top:top + height, left:left + width]``. An image whose header claims more than
    ``max_pixels`` pixels is refused before it is decoded. An unreadable file, one the crop does
    not fit or one over the bound raises VaeflowError naming it (and how many others failed)."""
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
    paths, *, crop: CropSpec, size: int, skip_bad: bool = False, threads: int = 0, log=None, max_pixels: int = DEFAULT_MAX_PIXELS
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


def decode_files(paths, *, crop: CropSpec, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
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
            bad.append((i, f"{paths[i]}: {exc}" if exc.kind in ("size", "crop") else f"{message}; Pillow: {exc}", exc.kind))
        except Exception as exc:  # noqa: BLE001 -- any failure of Pillow on a hostile file is that file's
            bad.append((i, f"{message}; Pillow: {type(exc).__name__}: {_first_line(exc)}", "decode"))
    return pixels, bad


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_crop(crop) -> CropSpec:
    """``crop`` as ``decode_images`` takes it (a box as a tuple of 4 ints), or ValueError."""
    if crop is None:
        return None
    if isinstance(crop, (list, tuple)):
        if len(crop) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in crop):
            raise ValueError(f"a crop box is (top, left, height, width), four integers >= 0; got {crop!r}")
        return tuple(int(v) for v in crop)
    if isinstance(crop, (int, np.integer)) and not isinstance(crop, bool) and crop >= 0:
        return int(crop)
    raise ValueError(f"crop must be None, an integer >= 0 or a (top, left, height, width) box; got {crop!r}")


def _crop_region(crop: CropSpec, w: int, h: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) that ``crop`` keeps of a w x h image (Pillow's box), as the Rust
    decoder computes it, or ValueError when it does not fit."""
    crop = _check_crop(crop)
    if crop is None:
        return 0, 0, w, h
    if isinstance(crop, tuple):
        top, left, ch, cw = crop
        if ch == 0 or cw == 0:
            raise ValueError("empty crop box (zero height or width)")
        if top + ch > h or left + cw > w:
            raise ValueError(f"image is {w}x{h}, the crop box (rows {top}:{top + ch}, columns {left}:{left + cw}) does not fit in it")
        return left, top, left + cw, top + ch
    c = min(w, h) if crop == 0 else crop
    if c > w or c > h:
        raise ValueError(f"image is {w}x{h}, smaller than the crop {c}")
    return (w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c


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


def pillow_decode(path, *, crop: CropSpec, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One image through Pillow: RGB (16-bit greyscale by its real range, see ``eight_bit``), the
    crop of ``decode_images``, Lanczos resize. Raises ImageProblem for a file over ``max_pixels``
    ("size"), one the crop does not fit ("crop") or one that is not a readable PNG/JPEG file."""
    from PIL import Image

    with open_image(path, max_pixels=max_pixels) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings on odd files would be stray stderr lines
        im = eight_bit(im).convert("RGB")
        try:
            box = _crop_region(crop, *im.size)
        except ValueError as exc:
            raise ImageProblem(str(exc), "crop") from None
        return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=box))


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


def _decode_native(paths, *, crop: CropSpec, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(uint8 (N, size, size, 3), [(index, message, kind), ...]) from the Rust decoder; kind is
    "read", "size", "crop" or "decode" (see native/src/python.rs); failed images are zeros."""
    from vaeflow_cli import _native

    paths = [str(p) for p in paths]
    if not isinstance(max_pixels, (int, np.integer)) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise VaeflowError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    odd = {i for i, p in enumerate(paths) if not _is_utf8(p)}  # the Rust side takes UTF-8 paths only
    native_paths = ["" if i in odd else p for i, p in enumerate(paths)]
    flat, failures = _native.decode_images(native_paths, _check_crop(crop), size, threads, min(int(max_pixels), 2**63))
    failures = [f for f in failures if f[0] not in odd]
    failures += [(i, f"{os.fsencode(paths[i])!r}: a file name that is not UTF-8", "decode") for i in sorted(odd)]  # Pillow reads it
    return flat.reshape(len(paths), size, size, 3), sorted(failures)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def decode_images_with_failures(paths, *, crop: CropSpec, size: int, threads: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(uint8 (N, size, size, 3), [(index, message), ...]); failed images are zeros."""
    pixels, failures = _decode_native(paths, crop=crop, size=size, threads=threads, max_pixels=max_pixels)
    return pixels, [(i, message) for i, message, _ in failures]


CACHE_ENV = "VAEFLOW_CACHE_DIR"


def default_cache_dir() -> Path:
    """The folder where datasets cache their decoded splits unless ``data.cache_dir`` names one:
    ``$VAEFLOW_CACHE_DIR/datasets`` when that variable is set, else ``datasets`` in the user's
    cache directory (platformdirs: ``$XDG_CACHE_HOME/vaeflow``, by default ``~/.cache/vaeflow``,
    on Linux; ``~/Library/Caches/vaeflow`` on macOS; ``%LOCALAPPDATA%\\vaeflow\\Cache`` on Windows).
    Never inside the images' folder, which may be read-only or shared."""
    configured = os.environ.get(CACHE_ENV, "")
    if configured:
        return Path(configured).expanduser() / "datasets"
    import platformdirs

    return platformdirs.user_cache_path("vaeflow", appauthor=False) / "datasets"


CACHE_FIX = f"set data.cache_dir (or {CACHE_ENV}) to a folder you may write to"


def cache_path(cache_dir: Path, name: str, key_parts) -> Path:
    """Where ``cached_array`` keeps the array for these key parts."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return Path(cache_dir) / f"{name}-{digest}.npy"


def cached_array(cache_dir: Path, name: str, key_parts, build) -> np.ndarray:
    """A uint8 array cached as ``cache_dir/name-<hash>.npy`` and memory-mapped on later calls.

    The hash covers ``key_parts`` (the source files' names, sizes and mtimes and the preprocessing
    parameters), so changing any of them builds a new cache; ``build()`` makes the array. The file
    is written to a temporary name, fsynced and renamed, so an interrupted build leaves no cache."""
    from vaeflow_cli.files import atomic_write

    path = cache_path(cache_dir, name, key_parts)
    if os.path.lexists(cache_dir) and not Path(cache_dir).is_dir():
        raise VaeflowError(f"the cache folder {cache_dir} is not a folder (a file, or a broken link); {CACHE_FIX}")
    try:
        present = path.exists()
    except OSError as exc:
        raise VaeflowError(f"cannot look into the cache folder {cache_dir} ({exc.strerror}); {CACHE_FIX}") from None
    if present:
        problem = file_problem(path)
        if problem is not None:
            raise VaeflowError(f"cache {path} {problem}; delete it to rebuild the cache")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 -- truncated, empty (EOFError), a bad header, object arrays
            raise VaeflowError(f"cache {path} is unreadable ({type(exc).__name__}: {_first_line(exc)}); delete it to rebuild") from None
    _check_cache_writable(Path(cache_dir), path)  # before the build: decoding every image first would be wasted
    array = np.ascontiguousarray(build())
    try:
        atomic_write(path, lambda fh: np.save(fh, array))
    except OSError as exc:
        raise VaeflowError(f"cannot write the cache {path} ({exc.strerror or exc}); {CACHE_FIX}") from None
    except VaeflowError as exc:  # atomic_write's one line; a folder that may not be written is the setting's fault (exit 2)
        if getattr(exc, "errno", None) in _SETTING_ERRNOS:
            raise VaeflowError(f"cannot write the cache {path} ({os.strerror(exc.errno)}); {CACHE_FIX}") from None
        raise
    return np.load(path, mmap_mode="r")


_SETTING_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}
"""The write errors that the cache folder's setting causes (not the machine: a full disk)."""


def _check_cache_writable(cache_dir: Path, path: Path) -> None:
    """One VaeflowError naming the setting (``CACHE_FIX``) when the cache folder cannot be made or
    written: a part of it is a file, or the nearest folder that exists may not be written."""
    parent = cache_dir
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VaeflowError(f"cannot write the cache {path} ({parent} is not a folder); {CACHE_FIX}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VaeflowError(f"cannot write the cache {path} (the folder {parent} may not be written); {CACHE_FIX}")


def file_signature(paths, *, skip_bad: bool = False) -> list:
    """(name, size, mtime_ns) of each file, for cache keys. A file that cannot be looked at (missing,
    a symbolic link to nothing, a loop of links, a folder that may not be searched) is one clear
    error, or with ``skip_bad`` (name, None, why) in the key: the decoder then skips it as
    unreadable, and the key changes when the file appears."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, ValueError) as exc:  # permission denied on a folder, a NUL byte in a name
            why = _unstattable(p, exc)
            if skip_bad:
                out.append([os.path.basename(p), None, why])
                continue
            fix = "check data.root" if isinstance(exc, FileNotFoundError) and not os.path.islink(p) else "fix or remove it"
            raise VaeflowError(f"{p}: {why}; {fix}, or set data.skip_bad = true to skip unreadable images") from None
        out.append([os.path.basename(p), st.st_size, st.st_mtime_ns])
    return out


def _unstattable(path, exc: BaseException) -> str:
    """Why ``os.stat(path)`` failed, in words: a broken or looping symbolic link is named as one."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a loop of symbolic links (the link leads back to itself)"
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"a symbolic link to {target}, which does not exist"
        return "not found"
    return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"


@dataclass
class Splits:
    train: np.ndarray  # uint8 (N, C, H, W)
    test: np.ndarray
    image_shape: tuple[int, int, int]


def build_dataset(cfg: dict, registry=None):
    """The dataset object named by a resolved config's [data] section."""
    if registry is None:
        from vaeflow_cli.plugins.registry import get_registry

        registry = get_registry()
    data = cfg["data"]
    kwargs = {k: v for k, v in data.items() if k != "name"}
    return registry.get("dataset", data["name"]).build("[data]", **kwargs)


def dataset_info(name: str, root: str, registry=None) -> dict:
    """Split sizes, image shape and (where the dataset caches) cache state of a dataset, with its
    default options. A dataset with an ``info()`` method reports without loading its images.

    Without ``info()``, a split that cannot be read (its files missing, or damaged) is left out of
    ``splits`` and named in ``missing`` with the reason, and a warning line says so; when no split
    can be read, the first split's error is raised."""
    if registry is None:
        from vaeflow_cli.plugins.registry import get_registry

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
    ds = dataset if dataset is not None else build_dataset(cfg, registry)
    splits = getattr(ds, "splits", None)
    if splits is not None and name not in splits:
        raise VaeflowError(f"dataset {cfg['data']['name']!r} has splits {', '.join(splits)}, not {name!r}")
    arr = ds.split(name)
    shape = tuple(ds.image_shape)
    if arr.dtype != np.uint8 or arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
        raise VaeflowError(
            f"dataset {cfg['data']['name']!r} split {name!r} gave {arr.dtype} {arr.shape}, expected uint8 (N, {', '.join(map(str, shape))})"
        )
    if len(arr) == 0:
        raise VaeflowError(f"dataset {cfg['data']['name']!r} split {name!r} is empty; check data.root")
    return arr


def load_splits(cfg: dict, registry=None, *, test_split: str = "test") -> Splits:
    ds = build_dataset(cfg, registry)
    train = load_split(cfg, "train", dataset=ds)
    test = load_split(cfg, test_split, dataset=ds)
    return Splits(train, test, tuple(ds.image_shape))


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The shuffled image order of one epoch, a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


class HostBuffers:
    """A ring of ``count`` reusable host buffers (page-locked when ``pin``) for the loader's
    batches. The producer takes the next buffer with next(); the consumer calls copied(buffer)
    after starting an asynchronous device copy from it, and next() waits for that copy before it
    hands the buffer out again. With a queue of P batches, P + 3 buffers leave the one being
    written, the P queued, the one in use and the one whose copy may still be running."""

    def __init__(self, count: int, *, pin: bool) -> None:
        self.count, self.pin = count, pin
        self.position = 0
        self.tensors: dict[int, object] = {}  # slot -> torch tensor (owns the memory)
        self.events: dict[int, object] = {}  # slot -> CUDA event of the last copy out of it
        self.slot_of: dict[int, int] = {}  # data address -> slot

    def next(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        import torch

        slot = self.position % self.count
        self.position += 1
        event = self.events.pop(slot, None)
        if event is not None:
            event.synchronize()
        tensor = self.tensors.get(slot)
        torch_dtype = torch.uint8 if np.dtype(dtype) == np.uint8 else torch.float32
        if tensor is None or tuple(tensor.shape) != tuple(shape) or tensor.dtype != torch_dtype:
            if tensor is not None:
                self.slot_of.pop(tensor.data_ptr(), None)
            tensor = torch.empty(shape, dtype=torch_dtype, pin_memory=self.pin)
            self.tensors[slot] = tensor
            self.slot_of[tensor.data_ptr()] = slot
        return tensor.numpy()

    def copied(self, array: np.ndarray, stream=None) -> None:
        """Record that a device copy out of ``array`` was issued (on ``stream``, default current)."""
        import torch

        slot = self.slot_of.get(array.ctypes.data)
        if slot is not None and torch.cuda.is_available():
            event = torch.cuda.Event()
            event.record(stream)
            self.events[slot] = event


class BatchLoader:
    """Shuffled, dequantized batches of a uint8 image array (in memory or memory-mapped), prepared
    ``prefetch`` batches ahead on a background thread while the model trains.

    The order of an epoch is a function of (seed, epoch); with ``world_size`` > 1 each rank takes
    every world_size-th image of that order (trimmed so every rank gets as many), so the ranks'
    shards are disjoint and change every epoch. The dequantization noise depends on the image's
    index only, so a batch is the same whichever rank or step it is drawn at. ``wait_seconds``
    adds up how long the consumer waited for data."""

    def __init__(
        self,
        images: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        threads: int = 0,
        dequantize: bool = True,
        pin_memory: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.prefetch, self.threads = max(1, prefetch), threads
        self.dequantize = dequantize  # False: yield the uint8 images (to dequantize on the device)
        self.wait_seconds = 0.0
        # With pin_memory, batches are written into a ring of page-locked host buffers, so that
        # device_epoch() copies them asynchronously; the ring outlives the steps that use a buffer.
        self.buffers = HostBuffers(self.prefetch + 3, pin=True) if pin_memory else None

    def indices(self, epoch: int) -> list[np.ndarray]:
        """The batches of image indices this rank draws in ``epoch``."""
        n = len(self.images)
        order = epoch_order(n, seed=self.seed, epoch=epoch) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        return [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        per_rank = len(self.images) // self.world_size if self.world_size > 1 else len(self.images)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _make(self, idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.images, np.memmap):  # read the memory map in file order, then reorder
            x = self.images[np.sort(idx)][np.argsort(np.argsort(idx))]
        else:
            x = self.images[idx]
        if not self.dequantize:
            if self.buffers is None:
                return idx, np.ascontiguousarray(x)
            out = self.buffers.next(x.shape, np.uint8)
            out[...] = x
            return idx, out
        out = None if self.buffers is None else self.buffers.next(x.shape, np.float32)
        return idx, dequantize(x, seed=self.seed, epoch=epoch, indices=idx, threads=self.threads, out=out)

    def device_batches(self, device):
        """Batches (indices, images) on ``device`` without end, epoch after epoch (0, 1, ...):
        what benchmarks step through."""
        epoch = 0
        while True:
            yield from self.device_epoch(epoch, device)
            epoch += 1

    def device_epoch(self, epoch: int, device, *, start: int = 0):
        """``epoch`` with the batches already on ``device``: on CUDA the copy of batch k+1 is issued
        on a side stream before batch k is handed out, so host-to-device transfer overlaps the
        compute of step k; the compute stream waits for each batch's own copy only."""
        import torch

        device = torch.device(device)
        host = self.epoch(epoch, start=start)
        if device.type != "cuda":
            try:
                for idx, batch in host:
                    yield idx, torch.from_numpy(batch).to(device)
            finally:
                host.close()  # ends the producer now, not when the generator is collected
            return
        stream = torch.cuda.Stream(device)

        def issue(batch):
            with torch.cuda.stream(stream):
                moved = torch.from_numpy(batch).to(device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            if self.buffers is not None:
                self.buffers.copied(batch, stream)
            return moved, done

        pending = None
        try:
            for idx, batch in host:
                ready = (idx, *issue(batch))
                if pending is not None:
                    yield self._hand_over(pending)
                pending = ready
            if pending is not None:
                yield self._hand_over(pending)
        finally:
            host.close()

    @staticmethod
    def _hand_over(item):
        import torch

        idx, moved, done = item
        current = torch.cuda.current_stream(moved.device)
        current.wait_event(done)
        moved.record_stream(current)  # the allocator must not reuse it before compute is done
        return idx, moved

    def epoch(self, epoch: int, *, start: int = 0):
        """Yield (indices (B,), batch (B, C, H, W)) for steps start, start+1, ... of ``epoch``; the
        batch is float32 in [0, 1), or the uint8 images when ``dequantize`` is False."""
        import queue
        import threading
        import time

        batches = self.indices(epoch)[start:]
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def offer(item) -> bool:
            """Put ``item`` unless the consumer has left; every put is bounded, so the producer ends
            within 0.1 s of ``stop`` whatever the queue holds (a consumer that leaves while the
            queue is full must not block the end-of-epoch marker or an error forever)."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for idx in batches:
                    if stop.is_set() or not offer(self._make(idx, epoch)):
                        return
                offer(None)
            except BaseException as exc:  # hand the error to the consumer
                offer(exc)

        worker = threading.Thread(target=produce, name="vaeflow-loader", daemon=True)
        worker.start()
        try:
            while True:
                t = time.perf_counter()
                item = q.get()
                self.wait_seconds += time.perf_counter() - t
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()
