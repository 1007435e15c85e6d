"""The built-in datasets' file readers: raw and gzip-compressed files read with one-line errors,
MNIST's IDX format, and CIFAR-10's python pickles (through a restricted unpickler: never plain
``pickle.load`` on downloaded data) and binary batches. Each returns uint8 arrays; each failure is
one VaeflowError naming the file and how to fix it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from vaeflow_cli.plugin_api import VaeflowError, file_problem

# ------------------------------------------------------------------ reading data files

# What goes wrong reading a compressed or raw data file: OSError (permission, I/O, a bad gzip
# header or CRC: gzip.BadGzipFile), EOFError (a truncated gzip stream), zlib.error (a corrupt
# deflate stream).
READ_ERRORS = (OSError, EOFError, zlib.error)


def error_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip()
    text = text.splitlines()[0][:160] if text else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_data_file(path: Path, fix: str) -> None:
    """One VaeflowError unless ``path`` is a regular file (not a directory, device or FIFO, which
    would block); ``fix`` says how to get the file (e.g. "download it again (vaeflow data
    download mnist --root R)")."""
    problem = file_problem(path)
    if problem is not None:
        raise VaeflowError(f"{path} {problem}; {fix}")


def read_data_file(path: Path, fix: str) -> bytes:
    """The bytes of a regular file, or one VaeflowError naming it and saying how to fix it."""
    check_data_file(path, fix)
    try:
        return Path(path).read_bytes()
    except READ_ERRORS as exc:
        raise VaeflowError(f"{path}: cannot read ({error_reason(exc)}); {fix}") from None


def read_text_file(path: Path, fix: str) -> str:
    """A UTF-8 text file (a byte-order mark allowed) as str, or one VaeflowError naming it: binary
    bytes, another encoding, a directory, no permission."""
    raw = read_data_file(path, fix)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VaeflowError(f"{path}: not a UTF-8 text file (byte {exc.start} is {raw[exc.start : exc.start + 1]!r}); {fix}") from None


# ------------------------------------------------------------------ MNIST / Fashion-MNIST (IDX)

IDX_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_CHUNK = 1 << 24


def _read_at_most(fh, n: int) -> bytearray:
    """Up to ``n`` bytes of ``fh`` (fewer at the end of the stream), read in bounded chunks: memory
    follows the data that is there, not what a header claims."""
    out = bytearray()
    while len(out) < n:
        block = fh.read(min(_CHUNK, n - len(out)))
        if not block:
            break
        out += block
    return out


def read_idx_images(path: Path, *, shape: tuple[int, int] | None = None, fix: str = "download the file again") -> np.ndarray:
    """An IDX3 image file (optionally gzipped: a name ending in .gz) as uint8 (N, 1, H, W).

    The 16-byte header is checked first (magic number, the image size ``shape`` when given), and
    the claimed size against the file: a raw file must be exactly that long before anything is
    allocated, a gzipped one is read in bounded chunks and must end exactly there, so a header
    claiming billions of images costs nothing. Any unreadable, corrupt or truncated file (a bad
    gzip CRC or deflate stream, a directory in its place, no permission) is one VaeflowError
    naming the file and ending with ``fix``."""
    path = Path(path)
    gz = path.suffix == ".gz"
    check_data_file(path, fix)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            with gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw as fh:
                header = bytes(_read_at_most(fh, 16))
                if len(header) < 16:
                    raise VaeflowError(f"{path}: truncated IDX header ({len(header)} of 16 bytes); {fix}")
                magic, n, h, w = struct.unpack(">IIII", header)
                if magic != IDX_MAGIC:
                    hint = "; it looks gzip-compressed: name it *.gz" if not gz and header[:2] == b"\x1f\x8b" else ""
                    raise VaeflowError(
                        f"{path}: wrong IDX magic number {magic:#010x} (want {IDX_MAGIC:#010x}, uint8 images){hint}; "
                        f"this is not an IDX image file: {fix}"
                    )
                if shape is not None and (h, w) != tuple(shape):
                    raise VaeflowError(
                        f"{path}: the IDX header says images of {h}x{w}, expected {shape[0]}x{shape[1]}; "
                        f"the file is corrupt or another dataset's: {fix}"
                    )
                if h == 0 or w == 0:
                    raise VaeflowError(f"{path}: the IDX header says images of {h}x{w}; the file is corrupt: {fix}")
                want = n * h * w
                expected = f"expected {n} images of {h}x{w} ({16 + want} bytes)"
                if not gz and size != 16 + want:
                    raise VaeflowError(f"{path}: {expected}, found {size} bytes; the file is truncated or corrupt: {fix}")
                data = _read_at_most(fh, want)
                if len(data) < want:
                    raise VaeflowError(f"{path}: {expected}, found {16 + len(data)} bytes; the file is truncated or corrupt: {fix}")
                if fh.read(1):
                    raise VaeflowError(f"{path}: {expected}, found more data after them; the file is truncated or corrupt: {fix}")
    except READ_ERRORS as exc:
        raise VaeflowError(f"{path}: cannot read ({error_reason(exc)}); the file is corrupt or truncated: {fix}") from None
    return np.frombuffer(data, np.uint8).reshape(n, 1, h, w)


# ------------------------------------------------------------------ CIFAR-10

CIFAR_FIX = "delete it and download CIFAR-10 again (vaeflow data download cifar10 --root ROOT)"


def _reconstruct_empty(subtype, shape, dtype):
    """numpy's pickle reconstructor, made to start from an empty array whatever shape the pickle
    claims: ndarray.__setstate__ then sets the real shape from the data that is in the file, so a
    hostile shape cannot make it allocate."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct a {subtype!r}")
    return _reconstruct(subtype, (0,), dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR-10 python batches are plain dicts of bytes, lists and numpy arrays; refuse anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if name == "_reconstruct":
                return _reconstruct_empty
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_python_batch(path: Path, fix: str = CIFAR_FIX) -> np.ndarray:
    """A CIFAR-10 python batch (a pickled dict whose b"data" is a uint8 array of rows of 3072
    bytes) as uint8 (N, 3, 32, 32). Unpickled with a restricted unpickler: numpy arrays, nothing
    else; anything else is one VaeflowError."""
    raw = read_data_file(path, fix)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 -- whatever a corrupt or hostile pickle raises
        raise VaeflowError(f"{path}: not a valid CIFAR-10 python batch ({exc}); {fix}") from None
    data = obj.get(b"data", obj.get("data")) if isinstance(obj, dict) else None
    if data is None:
        raise VaeflowError(f"{path}: not a valid CIFAR-10 python batch (a {type(obj).__name__} without a 'data' entry); {fix}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise VaeflowError(f"{path}: not a valid CIFAR-10 python batch (its data is a {what}, not uint8 pixels); {fix}")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise VaeflowError(f"{path}: expected rows of 3072 bytes, found shape {data.shape}; {fix}")
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32)


def read_cifar_binary_batch(path: Path, fix: str = CIFAR_FIX) -> np.ndarray:
    """A CIFAR-10 binary batch (rows of a label byte 0-9 and 3072 pixel bytes) as uint8 (N, 3, 32, 32)."""
    raw = read_data_file(path, fix)
    if not raw:
        raise VaeflowError(f"{path}: the file is empty; {fix}")
    if len(raw) % 3073:
        raise VaeflowError(f"{path}: size {len(raw)} is not a multiple of 3073 bytes; the file is truncated: {fix}")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    if rows[:, 0].max() > 9:
        raise VaeflowError(
            f"{path}: label bytes above 9 (found {int(rows[:, 0].max())}): not a CIFAR-10 binary batch (CIFAR-100 rows have two label bytes); {fix}"
        )
    return rows[:, 1:].reshape(-1, 3, 32, 32)
