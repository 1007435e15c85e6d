"""Bad data files, images, downloads and weights: each is exactly one clear error (VaeflowError, or
RuntimeFailure for the network), never a traceback, and nothing is decoded or allocated on the word
of a header. Through the library for every case; through the CLI for a few representative ones."""

import gzip
import io
import os
import pickle
import socket
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli, write_idx
from PIL import Image

from vaeflow_cli.errors import RuntimeFailure, VaeflowError

DEFAULT_MAX_PIXELS = 40_000_000


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.strip() == message and message, repr(message)
    return message


def assert_cli_error(proc, *words, code=2, logs_before=False):
    """Exit ``code``, exactly one stderr line ``vaeflow: error: ...`` with ``words``, no traceback.
    ``logs_before``: progress lines of the command (e.g. train-vae's thread count) may precede
    the error line, which must then be the last line and the only error."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr
    if logs_before:
        assert lines and sum(line.startswith("vaeflow: error") for line in lines) == 1, proc.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("vaeflow: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---------------------------------------------------------------- images whose header lies


def png_claiming(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h RGB pixels, with a tiny IDAT (a few dozen bytes in all)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(w: int, h: int, *, progressive: bool = False) -> bytes:
    """A small valid JPEG whose start-of-frame marker is patched to claim w x h pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(buf, format="JPEG", progressive=progressive)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


HUGE = {
    "huge.png": png_claiming(60000, 60000),
    "wide.png": png_claiming(20000, 20000),
    "huge.jpg": jpeg_claiming(20000, 20000),
    "huger.jpg": jpeg_claiming(60000, 60000),
    "prog.jpeg": jpeg_claiming(60000, 60000, progressive=True),
}


@pytest.fixture()
def image_folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.RandomState(0)
    for i in range(6):
        Image.fromarray(rng.randint(0, 256, (24, 20, 3)).astype(np.uint8)).save(root / f"ok{i}.png")
    Image.fromarray(rng.randint(0, 256, (24, 20, 3)).astype(np.uint8)).save(root / "ok.jpg", quality=90)
    return root


@pytest.mark.parametrize("name", sorted(HUGE))
def test_an_image_claiming_huge_dimensions_is_refused_from_its_header(image_folder, name):
    from vaeflow_plugins.datasets import ImageFolder

    (image_folder / name).write_bytes(HUGE[name])
    claimed = "20000x20000" if name in ("wide.png", "huge.jpg") else "60000x60000"
    with pytest.raises(VaeflowError) as exc:
        for split in ("train", "test"):
            ImageFolder(root=str(image_folder), size=8, test_fraction=0.5).split(split)
    message = one_line(exc)
    for word in (name, claimed, str(DEFAULT_MAX_PIXELS), "data.max_pixels", "data.skip_bad"):
        assert word in message, (word, message)
    # with skip_bad the file is skipped like any other bad file, the others are decoded
    kept = [ImageFolder(root=str(image_folder), size=8, test_fraction=0.5, skip_bad=True).split(s) for s in ("train", "test")]
    assert sum(len(k) for k in kept) == 7


def test_the_pixel_bound_is_a_config_key_and_is_enforced_for_every_decoder(image_folder):
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.data.splits import build_dataset
    from vaeflow_plugins.datasets import CelebA, ImageFolder

    cfg = config_mod.resolve(None, ["data.name='imagefolder'", f"data.root='{image_folder}'", "data.max_pixels=100"])
    assert cfg["data"]["max_pixels"] == 100
    ds = build_dataset(cfg)
    assert ds.max_pixels == 100
    with pytest.raises(VaeflowError) as exc:  # the 20x24 images (480 pixels): the JPEG in Rust, the PNGs in Pillow
        ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4, max_pixels=479).split("train")
    assert "20x24 = 480 pixels" in one_line(exc) and "(now 479)" in one_line(exc)
    assert len(ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4, max_pixels=480).split("train")) == 7
    for bad in (0, -5, 1.5, True):
        with pytest.raises(VaeflowError, match="max_pixels must be a positive integer"):
            ImageFolder(root=str(image_folder), max_pixels=bad)
        with pytest.raises(VaeflowError, match="max_pixels must be a positive integer"):
            CelebA(root=str(image_folder), max_pixels=bad)
    assert config_mod.resolve(None, ["data.name='celeba'"])["data"]["max_pixels"] == DEFAULT_MAX_PIXELS


def test_a_huge_celeba_image_is_refused_and_skippable(tmp_path):
    from vaeflow_plugins.datasets import CelebA

    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.RandomState(1)
    for i in range(3):
        Image.fromarray(rng.randint(0, 256, (218, 178, 3)).astype(np.uint8)).save(root / "img_align_celeba" / f"{i}.jpg")
    (root / "img_align_celeba" / "3.jpg").write_bytes(jpeg_claiming(20000, 20000))
    (root / "list_eval_partition.txt").write_text("".join(f"{i}.jpg 0\n" for i in range(4)))
    with pytest.raises(VaeflowError) as exc:
        CelebA(root=str(root), size=8).split("train")
    assert "3.jpg" in one_line(exc) and "20000x20000" in one_line(exc) and "data.max_pixels" in one_line(exc)
    assert len(CelebA(root=str(root), size=8, skip_bad=True).split("train")) == 3


def test_read_image_bounds_and_reports_every_bad_file(tmp_path):
    from vaeflow_cli.data.images import read_image

    good = tmp_path / "good.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (28, 28)).astype(np.uint8)).save(good)
    assert read_image(good, (1, 28, 28)).shape == (1, 28, 28)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    gif = tmp_path / "anim.gif"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(gif)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    cases = {"huge.png": "60000x60000", "huge.jpg": "20000x20000", "huger.jpg": "60000x60000", "wide.png": "20000x20000"}
    for name, claimed in cases.items():
        (tmp_path / name).write_bytes(HUGE[name])
        with pytest.raises(VaeflowError) as exc:
            read_image(tmp_path / name, (1, 28, 28))
        assert name in one_line(exc) and claimed in one_line(exc)
    big_but_allowed = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(big_but_allowed)
    for path, words in (
        (cut, ["cut.png", "cannot read image"]),
        (gif, ["anim.gif", "not a PNG or JPEG"]),
        (folder, ["folder.png", "directory"]),
        (tmp_path / "missing.png", ["missing.png", "not found"]),
        (big_but_allowed, ["30x40", "28x28"]),
    ):
        with pytest.raises(VaeflowError) as exc:
            read_image(path, (1, 28, 28))
        for w in words:
            assert w in one_line(exc), (w, one_line(exc))
    if hasattr(os, "mkfifo"):  # a FIFO would block an open() forever: it is refused unopened
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(VaeflowError, match="not a regular file"):
            read_image(tmp_path / "pipe.png", (1, 28, 28))


def test_an_image_folder_with_folders_fifos_and_garbage_named_like_images(image_folder):
    from vaeflow_plugins.datasets import ImageFolder

    sub = image_folder / "x.png"  # a folder named like an image is searched, not decoded
    sub.mkdir()
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(sub / "inner.png")
    ds = ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4)
    assert len(ds.split("train")) == 8 and sub not in ds.files("train")
    (image_folder / "text.png").write_text("not an image")
    if hasattr(os, "mkfifo"):
        os.mkfifo(image_folder / "pipe.jpg")
    with pytest.raises(VaeflowError) as exc:
        ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4, cache_dir=str(image_folder.parent / "c1")).split("train")
    assert "pipe.jpg" in one_line(exc) or "text.png" in one_line(exc)
    kept = ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4, skip_bad=True, cache_dir=str(image_folder.parent / "c2")).split("train")
    assert len(kept) == 8


def test_an_unreadable_cache_is_one_line(image_folder, cache_dir):
    from vaeflow_plugins.datasets import ImageFolder

    ds = ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4)
    ds.split("train")
    (cache,) = (cache_dir / "datasets").glob("*.npy")
    for content in (b"", b"\x93NUMPY garbage", b"\x93NUMPY\x01\x00\x10\x00{'descr': |O}   \n"):
        cache.write_bytes(content)
        with pytest.raises(VaeflowError) as exc:
            ImageFolder(root=str(image_folder), size=8, test_fraction=1e-4).split("train")
        assert str(cache) in one_line(exc) and "delete it" in one_line(exc)


# ---------------------------------------------------------------- IDX files


def idx_bytes(n=3, h=28, w=28, magic=0x803, extra=b"", body=None):
    """An IDX3 header and ``body`` (default: n * h * w pixel bytes)."""
    pixels = (np.arange(n * h * w) % 251).astype(np.uint8).tobytes() if body is None else body
    return struct.pack(">IIII", magic, n, h, w) + pixels + extra


def corrupt_deflate(data: bytes) -> bytes:
    gz = bytearray(gzip.compress(data))
    for i in range(20, 60):  # garble the deflate stream right after the 10-byte gzip header
        gz[i] ^= 0x5A
    return bytes(gz)


def bad_crc(data: bytes) -> bytes:
    gz = bytearray(gzip.compress(data))
    gz[-8] ^= 0xFF  # the CRC-32 in the trailer
    return bytes(gz)


@pytest.mark.parametrize(
    "content, words",
    [
        (corrupt_deflate(idx_bytes()), ["corrupt", "download it again"]),
        (bad_crc(idx_bytes()), ["CRC", "download it again"]),
        (gzip.compress(idx_bytes())[:-30], ["download it again"]),  # the stream ends early: EOFError
        (b"not gzip at all", ["download it again"]),
        (b"", ["download it again"]),
        (gzip.compress(idx_bytes(n=2**32 - 1, body=bytes(4080))), ["4294967295 images", "truncated or corrupt"]),  # a header claiming 3 TB
        (gzip.compress(idx_bytes(h=50000, w=50000, body=b"")), ["50000x50000", "expected 28x28"]),
        (gzip.compress(idx_bytes(extra=b"more")), ["more data after them"]),
        (gzip.compress(idx_bytes(magic=0x801)), ["wrong IDX magic number"]),
    ],
)
def test_a_corrupt_gzip_idx_file_is_one_line(tmp_path, content, words):
    from vaeflow_plugins.datasets import IDXDataset

    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(VaeflowError) as exc:
        IDXDataset(root=str(tmp_path)).split("train")
    message = one_line(exc)
    for w in ["train-images-idx3-ubyte.gz", *words]:
        assert w in message, (w, message)


def test_raw_idx_files_are_checked_before_anything_is_allocated(tmp_path):
    from vaeflow_plugins.datasets import FashionMNIST, IDXDataset
    from vaeflow_plugins.readers import read_idx_images

    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(n=2**32 - 1, body=bytes(4984)))  # claims 3 TB: compared with the file size, not read
    with pytest.raises(VaeflowError, match=r"expected 4294967295 images of 28x28 .* found 5000 bytes; the file is truncated"):
        IDXDataset(root=str(tmp_path)).split("test")
    path.write_bytes(gzip.compress(idx_bytes()))  # gzipped data under the raw name
    with pytest.raises(VaeflowError, match="it looks gzip-compressed: name it"):
        FashionMNIST(root=str(tmp_path)).split("test")
    path.write_bytes(idx_bytes()[:10])
    with pytest.raises(VaeflowError, match="truncated IDX header"):
        read_idx_images(path)
    path.unlink()
    path.mkdir()  # a directory in place of the file
    with pytest.raises(VaeflowError) as exc:
        IDXDataset(root=str(tmp_path)).split("test")
    assert "is a directory" in one_line(exc) and "vaeflow data download mnist" in one_line(exc)
    path.rmdir()
    if hasattr(os, "mkfifo"):  # a FIFO would block the read forever
        os.mkfifo(path)
        with pytest.raises(VaeflowError, match="not a regular file"):
            IDXDataset(root=str(tmp_path)).split("test")
        path.unlink()
    os.symlink(tmp_path / "nowhere", path)  # a dangling link
    with pytest.raises(VaeflowError, match="not found"):
        IDXDataset(root=str(tmp_path)).split("test")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_idx_file_without_permission_is_one_line(tmp_path):
    from vaeflow_plugins.datasets import IDXDataset

    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    path.chmod(0)
    with pytest.raises(VaeflowError, match="Permission denied|permission denied"):
        IDXDataset(root=str(tmp_path)).split("train")


# ---------------------------------------------------------------- CIFAR-10 batches


def cifar_folder(tmp_path, content_of, *, binary=False):
    folder = tmp_path / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    folder.mkdir(exist_ok=True)
    for stem in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / (stem + (".bin" if binary else ""))).write_bytes(content_of(stem))
    return folder


class HostileShape:
    """Pickles as numpy's own reconstruction of an array whose empty start claims 10^12 bytes."""

    def __init__(self, rows):
        self.rows = rows

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (10**6, 10**6), b"b"), (1, self.rows.shape, self.rows.dtype, False, self.rows.tobytes()))


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"definitely not a pickle", ["not a valid CIFAR-10 python batch"]),
        (b"", ["not a valid CIFAR-10 python batch"]),
        (pickle.dumps([1, 2, 3]), ["list without a 'data' entry"]),
        (pickle.dumps({b"labels": [1]}), ["without a 'data' entry"]),
        (pickle.dumps({b"data": np.random.RandomState(0).rand(2, 3072)}), ["float64 array, not uint8"]),
        (pickle.dumps({b"data": np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072)}), ["int64 array, not uint8"]),
        (pickle.dumps({b"data": [[0] * 3072]}), ["list, not uint8"]),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}), ["rows of 3072 bytes"]),
        (pickle.dumps({b"data": np.zeros(2, object)}), ["object array, not uint8"]),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"x": io.BytesIO}), ["refusing to load _io.BytesIO"]),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)})[:-20], ["not a valid CIFAR-10 python batch"]),
    ],
)
def test_bad_cifar_python_batches(tmp_path, payload, words):
    from vaeflow_plugins.datasets import CIFAR10

    cifar_folder(tmp_path, lambda stem: payload)
    with pytest.raises(VaeflowError) as exc:
        CIFAR10(root=str(tmp_path)).split("test")
    for w in ["test_batch", *words, "download CIFAR-10 again"]:
        assert w in one_line(exc), (w, one_line(exc))


def test_a_pickled_shape_cannot_make_the_reader_allocate(tmp_path):
    from vaeflow_plugins.datasets import CIFAR10

    rows = np.random.RandomState(2).randint(0, 256, (3, 3072)).astype(np.uint8)
    cifar_folder(tmp_path, lambda stem: pickle.dumps({b"data": HostileShape(rows)}))
    assert np.array_equal(CIFAR10(root=str(tmp_path)).split("test").reshape(3, -1), rows)


def test_bad_cifar_binary_batches(tmp_path):
    from vaeflow_plugins.datasets import CIFAR10

    folder = cifar_folder(tmp_path, lambda stem: b"", binary=True)
    with pytest.raises(VaeflowError, match="test_batch.bin: the file is empty"):
        CIFAR10(root=str(tmp_path)).split("test")
    (folder / "test_batch.bin").write_bytes(b"\x63" * 3073)  # label 99: a CIFAR-100 row or garbage
    with pytest.raises(VaeflowError, match="label bytes above 9"):
        CIFAR10(root=str(tmp_path)).split("test")
    (folder / "test_batch.bin").unlink()
    (folder / "test_batch.bin").mkdir()
    with pytest.raises(VaeflowError) as exc:
        CIFAR10(root=str(tmp_path)).split("test")
    assert "test_batch.bin is a directory" in one_line(exc) and "vaeflow data download cifar10" in one_line(exc)


# ---------------------------------------------------------------- CelebA's partition file


@pytest.fixture()
def celeba_root(tmp_path):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    Image.fromarray(np.zeros((218, 178, 3), np.uint8)).save(root / "img_align_celeba" / "000001.jpg")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    return root


@pytest.mark.parametrize(
    "content, words",
    [
        (bytes(range(128, 256)) * 8, ["not a UTF-8 text file", "byte 0"]),
        ("000001.jpg 0\n".encode("utf-16"), ["not a UTF-8 text file"]),
        (b"000001.jpg 0\n\x00\x01\x02 7\n", [":2: expected"]),
        (b"000001.jpg\x00 0\n", ["is not a file name inside img_align_celeba"]),
        (b"/etc/passwd 0\n", ["'/etc/passwd' is not a file name"]),
        (b"../../secret.jpg 0\n", ["is not a file name inside img_align_celeba"]),
    ],
)
def test_a_bad_celeba_partition_file_is_one_line(celeba_root, content, words):
    from vaeflow_plugins.datasets import CelebA

    (celeba_root / "list_eval_partition.txt").write_bytes(content)
    with pytest.raises(VaeflowError) as exc:
        CelebA(root=str(celeba_root), size=8).split("train")
    for w in ["list_eval_partition.txt", *words, "download list_eval_partition.txt again"]:
        assert w in one_line(exc), (w, one_line(exc))


def test_a_partition_file_that_is_a_folder_or_names_a_folder(celeba_root):
    from vaeflow_plugins.datasets import CelebA

    (celeba_root / "list_eval_partition.txt").write_bytes(b"\xef\xbb\xbf000001.jpg 0\r\nsub.jpg 0\r\n")  # BOM, CRLF
    (celeba_root / "img_align_celeba" / "sub.jpg").mkdir()
    with pytest.raises(VaeflowError) as exc:
        CelebA(root=str(celeba_root), size=8).split("train")
    assert "sub.jpg" in one_line(exc) and "directory" in one_line(exc)
    assert len(CelebA(root=str(celeba_root), size=8, skip_bad=True).split("train")) == 1
    part = celeba_root / "list_eval_partition.txt"
    part.unlink()
    part.mkdir()
    with pytest.raises(VaeflowError, match="list_eval_partition.txt is a directory"):
        CelebA(root=str(celeba_root)).files("train")


# ---------------------------------------------------------------- downloads


@pytest.mark.parametrize(
    "mirror, words",
    [
        ("notaurl", ["no http:// or https:// scheme"]),
        ("ftp://mirror.example.org/mnist/", ["scheme 'ftp' is not http or https"]),
        ("file:///tmp/mnist", ["scheme 'file'"]),
        ("http://", ["not an http(s) URL"]),
        ("http://host:port/", ["not a valid URL"]),
        ("http://host:99999/", ["not a valid URL"]),
        ("http://[::1/", ["not a valid URL"]),
        ("http://exa mple.org/", ["spaces or control characters"]),
    ],
)
def test_a_malformed_mirror_is_one_line_and_creates_nothing(tmp_path, monkeypatch, mirror, words):
    from vaeflow_cli.data.download import download

    monkeypatch.setenv("VAEFLOW_MIRROR", mirror)
    with pytest.raises(VaeflowError) as exc:
        download("mnist", tmp_path / "root")
    assert not isinstance(exc.value, RuntimeFailure)
    for w in ["VAEFLOW_MIRROR", repr(mirror), *words]:
        assert w in one_line(exc), (w, one_line(exc))
    assert not (tmp_path / "root").exists()


def test_network_failures_are_one_line_runtime_failures(tmp_path, monkeypatch):
    from test_download import Server

    from vaeflow_cli.data import download as dl

    remote = lambda url: {"toy": [dl.Remote(url + "file.bin", "0" * 32)]}  # noqa: E731
    # a refused connection (nothing listens on port 1)
    with pytest.raises(RuntimeFailure) as exc:
        dl.download("toy", tmp_path, sources=remote("http://127.0.0.1:1/"))
    assert "download of http://127.0.0.1:1/file.bin failed" in one_line(exc) and "run the same command again" in one_line(exc)
    # an HTTP error
    server = Server({})
    try:
        with pytest.raises(RuntimeFailure) as exc:
            dl.download("toy", tmp_path, sources=remote(server.url))
        assert "HTTP 404" in one_line(exc)
    finally:
        server.close()
    # a server that accepts the connection and never answers: the timeout
    monkeypatch.setattr(dl, "TIMEOUT_S", 0.3)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        with pytest.raises(RuntimeFailure) as exc:
            dl.download("toy", tmp_path, sources=remote(f"http://127.0.0.1:{silent.getsockname()[1]}/"))
        assert "timed out" in one_line(exc).lower()
    finally:
        silent.close()
    assert not list(tmp_path.glob("file.bin*"))  # nothing half-written under the real name


def test_local_files_in_the_way_of_a_download(tmp_path, monkeypatch):
    from vaeflow_cli.data import download as dl

    monkeypatch.delenv("VAEFLOW_MIRROR", raising=False)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(VaeflowError, match="is not a folder"):
        dl.download("mnist", a_file)
    root = tmp_path / "root"
    (root / "train-images-idx3-ubyte.gz").mkdir(parents=True)  # a folder where the download goes
    with pytest.raises(VaeflowError) as exc:
        dl.download("mnist", root)
    assert "train-images-idx3-ubyte.gz is a directory" in one_line(exc)


# ---------------------------------------------------------------- FID weights and the digit classifier


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def inception_reference():
    """The FID network's own state dict, as zero tensors expanded to their shapes (a file of them
    holds one number per tensor, so it is tiny)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in net.state_dict().items()}


def test_bad_fid_weights_files_are_one_line(tmp_path, inception_reference):
    from vaeflow_cli.evaluation import fid

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": Evil(marker)}, evil)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps(Evil(marker), protocol=2))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a weights file\n" * 100)
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.RandomState(0).bytes(4096))
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    wrong_keys = tmp_path / "keys.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong_keys)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_dict)
    shapes = dict(inception_reference)
    shapes["fc.weight"] = torch.zeros(10, 2048)
    wrong_shape = tmp_path / "shape.pth"
    torch.save(shapes, wrong_shape)
    nan = dict(inception_reference)
    nan["fc.bias"] = torch.full((1008,), float("nan"))
    nonfinite = tmp_path / "nan.pth"
    torch.save(nan, nonfinite)
    cases = [
        (evil, "pickled Python objects"),
        (plain_pickle, "pickled Python objects"),
        (empty, "is empty"),
        (garbage, "cannot be loaded"),
        (noise, "not a PyTorch weights file"),
        (folder, "is a directory"),
        (tmp_path / "missing.pth", "not found"),
        (wrong_keys, "key(s) missing"),
        (not_a_dict, "holds a list, not a state dict"),
        (wrong_shape, "'fc.weight' has shape (10, 2048), expected (1008, 2048)"),
        (nonfinite, "non-finite"),
    ]
    for path, words in cases:  # weights_path (before any work) loads and checks the file as build_extractor does
        with pytest.raises(VaeflowError) as exc:
            fid.weights_path(str(path))
        assert str(path) in one_line(exc) and words in one_line(exc), (words, one_line(exc))
        assert fid.WEIGHTS_FILE in one_line(exc) and "Weights only load failed" not in one_line(exc)
    with pytest.raises(VaeflowError, match="pickled Python objects"):
        fid.build_extractor(evil)
    assert not marker.exists()
    # the same schema accepts the network's own keys and shapes
    good = tmp_path / "good.pth"
    torch.save({k: v.contiguous() for k, v in inception_reference.items()}, good)
    assert fid.weights_path(str(good)) == good
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None


def test_a_bad_digit_classifier_cache_is_one_line(tmp_path):
    from vaeflow_cli.evaluation import digitfd

    cache = tmp_path / "digit-cnn.pt"
    net = digitfd.DigitCNN()
    bad_states = [
        b"",
        b"garbage" * 100,
        {"format": 1, "model": {"head.weight": torch.zeros(10, 128)}, "accuracy": 0.9},
        {"format": 1, "model": {**net.state_dict(), "head.weight": torch.zeros(3, 3)}, "accuracy": 0.9},
        {"format": 1, "model": net.state_dict()},
        {"model": net.state_dict(), "accuracy": 0.5},
        {"format": 1, "model": {"x": Evil(tmp_path / "pwned")}, "accuracy": 0.9},
    ]
    for state in bad_states:
        if isinstance(state, bytes):
            cache.write_bytes(state)
        else:
            torch.save(state, cache)
        with pytest.raises(VaeflowError) as exc:
            digitfd.load_or_train(cache)
        assert str(cache) in one_line(exc) and "delete it" in one_line(exc)
    assert not (tmp_path / "pwned").exists()
    torch.save({"format": 1, "model": net.state_dict(), "accuracy": 0.75}, cache)
    assert digitfd.load_or_train(cache)[1] == 0.75


# ---------------------------------------------------------------- through the CLI


def test_cli_malformed_mirror(tmp_path):
    proc = run_cli("data", "download", "mnist", "--root", tmp_path / "root", env={"VAEFLOW_MIRROR": "notaurl"}, check=False)
    assert_cli_error(proc, "VAEFLOW_MIRROR", "'notaurl'", "http")
    assert not (tmp_path / "root").exists()


def test_cli_corrupt_gzip_idx(mnist_root):
    train = mnist_root / "train-images-idx3-ubyte.gz"
    train.write_bytes(corrupt_deflate(gzip.decompress(train.read_bytes())))
    (mnist_root / "t10k-images-idx3-ubyte").unlink()  # with a readable split, data info reports it (test_usability)
    proc = run_cli("data", "info", "mnist", "--root", mnist_root, check=False)
    assert_cli_error(proc, str(train), "download it again")


def test_cli_binary_celeba_partition(celeba_root):
    (celeba_root / "list_eval_partition.txt").write_bytes(bytes(range(256)) * 4)
    proc = run_cli("data", "info", "celeba", "--root", celeba_root, check=False)
    assert_cli_error(proc, "list_eval_partition.txt", "not a UTF-8 text file")


def test_cli_huge_image_in_an_image_folder(tmp_path, image_folder):
    (image_folder / "huge.png").write_bytes(HUGE["huge.png"])
    config = tmp_path / "images.toml"
    config.write_text(
        TINY.format(root=image_folder, run=tmp_path / "run").replace('name = "mnist"', 'name = "imagefolder"\nsize = 16\ntest_fraction = 0.0001')
    )
    proc = run_cli("train-vae", "--config", config, check=False)
    # train-vae may log its thread count before it opens the data (the training loop's order, not the data path's)
    assert_cli_error(proc, "huge.png", "60000x60000", "data.max_pixels", logs_before=True)


def test_cli_malicious_fid_weights(tmp_path, mnist_root):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(TINY.format(root=mnist_root, run=run))
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": Evil(tmp_path / "pwned")}, evil)
    proc = run_cli("evaluate", "--run", run, "--metrics", "fid", "--fid-weights", evil, check=False)
    assert_cli_error(proc, str(evil), "pickled Python objects")
    assert not (tmp_path / "pwned").exists()
