"""Folders of image files as users have them: read-only, with 16-bit greyscale PNGs, broken links,
too few images, and raw photos handed to a trained run; where the decoded cache goes."""

import os
import stat
import sys

import numpy as np
import pytest
from conftest import TINY, call_main
from PIL import Image

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.errors import VaeflowError
from vaeflow_plugins.datasets import ImageFolder


def photos(root, n=6, w=20, h=24, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(root / f"p{i}.png")
    return root


def listing(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mode) for p in root.rglob("*"))


def both_splits(ds):
    return [ds.split(s) for s in ("train", "test")]


# ---------------------------------------------------------------- where the cache goes


def test_the_cache_is_written_to_the_user_cache_dir_never_into_the_images_folder(tmp_path, cache_dir):
    root = photos(tmp_path / "photos")
    before = listing(root)
    root.chmod(0o555)  # read-only (root may write anyway: the listing below is what counts)
    try:
        train, test = both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3))
    finally:
        root.chmod(0o755)
    assert len(train) + len(test) == 6
    assert listing(root) == before  # nothing written into the user's folder
    assert len(list((cache_dir / "datasets").glob("imagefolder-*.npy"))) == 2
    # read from the cache the second time, the same pixels
    again = both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3))
    assert all(isinstance(a, np.memmap) and np.array_equal(a, b) for a, b in zip(again, (train, test), strict=True))
    # data.cache_dir still moves it
    ImageFolder(root=str(root), size=8, test_fraction=0.3, cache_dir=str(tmp_path / "mine")).split("train")
    assert len(list((tmp_path / "mine").glob("imagefolder-train-*.npy"))) == 1


@pytest.mark.parametrize("how", ["variable", "setting", "read-only"])
def test_a_cache_folder_that_cannot_be_written_names_the_setting_before_decoding(tmp_path, monkeypatch, how):
    from vaeflow_cli.data.cache import CACHE_FIX

    root = photos(tmp_path / "photos")
    (tmp_path / "afile").write_text("")
    options = {}
    if how == "variable":  # $VAEFLOW_CACHE_DIR/datasets under a file
        monkeypatch.setenv("VAEFLOW_CACHE_DIR", str(tmp_path / "afile"))
    elif how == "setting":
        options["cache_dir"] = str(tmp_path / "afile" / "cache")
    else:  # a folder this user may not write (root may: its answer is what counts)
        (tmp_path / "ro").mkdir()
        monkeypatch.setenv("VAEFLOW_CACHE_DIR", str(tmp_path / "ro"))
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(tmp_path / "ro") else real_access(p, mode, **kw))
    import vaeflow_cli.plugin_api as plugin_api

    monkeypatch.setattr(plugin_api, "decode_with_fallback", lambda *a, **k: pytest.fail("decoded before the cache folder was checked"))
    with pytest.raises(VaeflowError) as info:
        ImageFolder(root=str(root), size=8, test_fraction=0.3, **options).split("train")
    assert type(info.value) is VaeflowError and info.value.exit_code == 2  # a bad setting, not a failure of the machine
    message = str(info.value)
    assert message.startswith("cannot write the cache ") and message.endswith(CACHE_FIX) and len(message.splitlines()) == 1, message


def test_the_default_cache_dir_follows_xdg_and_the_variable(tmp_path, monkeypatch):
    from vaeflow_cli.data.cache import default_cache_dir

    monkeypatch.setenv("VAEFLOW_CACHE_DIR", str(tmp_path / "v"))
    assert default_cache_dir() == tmp_path / "v" / "datasets"
    monkeypatch.delenv("VAEFLOW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):  # platformdirs follows XDG there
        assert default_cache_dir() == tmp_path / "xdg" / "vaeflow" / "datasets"
    # a dataset built now caches there, and data info says so
    root = photos(tmp_path / "photos")
    ds = ImageFolder(root=str(root), size=8, test_fraction=0.3)
    ds.split("train")
    assert ds.info()["cache"]["train"].startswith(str(default_cache_dir()))


def test_folders_with_the_same_file_names_sizes_and_times_do_not_share_a_cache(tmp_path):
    """Every dataset's cache lives in one folder, so the key holds the images' folder too."""
    roots = []
    for k, value in enumerate((10, 200)):
        root = tmp_path / f"set{k}"
        root.mkdir()
        for i in range(4):
            path = root / f"img{i}.png"
            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, compress_level=0)  # the size depends on the shape only
            os.utime(path, ns=(10**18, 10**18))
        roots.append(root)
    assert [p.stat().st_size for p in sorted(roots[0].iterdir())] == [p.stat().st_size for p in sorted(roots[1].iterdir())]
    datasets = [ImageFolder(root=str(r), size=8, test_fraction=0.3) for r in roots]
    a, b = (np.concatenate([ds.split(s) for s in ds.splits if ds.files(s)]) for ds in datasets)
    assert a.max() == 10 and b.min() == 200


# ---------------------------------------------------------------- 16-bit greyscale


def test_a_16_bit_greyscale_png_decodes_by_its_real_range(tmp_path):
    from vaeflow_cli.data.decode import pillow_decode
    from vaeflow_cli.data.images import read_image

    root = tmp_path / "g16"
    root.mkdir()
    grey = np.arange(64, dtype=np.uint16).reshape(8, 8) * 4  # 0 .. 252
    for i in range(3):
        Image.fromarray((grey + i) * 257).save(root / f"g{i}.png")  # stored as v * 257: 16-bit, all levels used
        with Image.open(root / f"g{i}.png") as im:
            assert im.mode.startswith("I")  # Pillow opens it as 16-bit integer greyscale
    ds = ImageFolder(root=str(root), size=8, test_fraction=0.3)
    decoded = {p.name: img for s in ("train", "test") for p, img in zip(ds.files(s), ds.split(s), strict=True)}
    for i in range(3):
        want = np.broadcast_to(grey + i, (3, 8, 8))
        assert np.array_equal(decoded[f"g{i}.png"], want)  # not 0 and 255
    assert np.array_equal(pillow_decode(root / "g1.png", crop=None, size=8)[..., 0], grey + 1)
    assert np.array_equal(read_image(root / "g2.png", (1, 8, 8))[0], grey + 2)
    # a 16-bit greyscale value that is not a multiple of 257 rounds to the nearest 8-bit level
    Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16)).save(root / "half.png")
    assert read_image(root / "half.png", (1, 8, 8)).max() == 127


# ---------------------------------------------------------------- broken links with skip_bad


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_skip_bad_skips_a_dangling_link_and_a_loop_of_links(tmp_path, kind, capfd):
    root = photos(tmp_path / "photos")
    if kind == "dangling":
        os.symlink(root / "gone.png", root / "link.png")
        words = ["link.png", "symbolic link", "gone.png", "does not exist"]
    else:
        os.symlink("link.png", root / "link.png")
        words = ["link.png", "loop of symbolic links"]
    with pytest.raises(VaeflowError) as exc:
        both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3))
    message = str(exc.value)
    assert "\n" not in message and all(w in message for w in words) and "data.skip_bad" in message, message
    kept = both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3, skip_bad=True))
    assert sum(len(k) for k in kept) == 6
    assert "skipped 1 unreadable image(s)" in capfd.readouterr().err


def test_skip_bad_with_every_image_bad_says_so_not_that_the_split_is_empty(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(4):
        (root / f"b{i}.png").write_bytes(b"not a png")
    with pytest.raises(VaeflowError) as exc:
        both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3, skip_bad=True))
    message = str(exc.value)
    assert "no image could be decoded" in message and "b" in message and "empty" not in message and "data.root" not in message


# ---------------------------------------------------------------- messages that point the right way


def test_test_fraction_zero_is_refused_by_the_documented_range_with_the_reason(tmp_path):
    root = photos(tmp_path / "photos")
    with pytest.raises(VaeflowError) as exc:
        config_mod.resolve(None, ["data.name='imagefolder'", f"data.root='{root}'", "data.test_fraction=0.0"])
    assert "data.test_fraction" in str(exc.value) and "must be > 0" in str(exc.value) and "held out" in str(exc.value)
    with pytest.raises(VaeflowError, match="must be > 0 and < 1.*held out"):
        ImageFolder(root=str(root), test_fraction=0.0)
    cfg = config_mod.resolve(None, ["data.name='imagefolder'", f"data.root='{root}'", "data.test_fraction=0.001"])
    assert cfg["data"]["test_fraction"] == 0.001


def test_a_one_image_folder_says_which_split_is_empty_and_why(tmp_path):
    from vaeflow_cli.data.splits import load_splits

    root = photos(tmp_path / "one", n=1)
    ds = ImageFolder(root=str(root), size=8, test_fraction=0.1)
    empty = "test" if ds.files("train") else "train"
    with pytest.raises(VaeflowError) as exc:
        ds.split(empty)
    message = str(exc.value)
    assert f"none of the 1 image(s) under {root} falls in the {empty} split" in message and "test_fraction = 0.1" in message, message
    assert "check data.root" not in message
    cfg = config_mod.resolve(None, ["data.name='imagefolder'", f"data.root='{root}'", "data.size=8"])
    with pytest.raises(VaeflowError, match="falls in the"):
        load_splits(cfg)


def test_a_crop_that_fits_no_image_says_to_change_the_crop(tmp_path):
    root = photos(tmp_path / "photos", n=4, w=20, h=24)
    for kwargs in ({"crop": 30}, {"crop_box": [10, 0, 20, 20]}):
        with pytest.raises(VaeflowError) as exc:
            both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3, **kwargs))
        message = str(exc.value)
        assert "fits none of the" in message and "data.crop / data.crop_box" in message, message
        assert "replace or remove" not in message and "skip_bad" not in message, message
    # a crop that fits all but one image names that image and the crop
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "small.png")
    with pytest.raises(VaeflowError) as exc:
        both_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3, crop=16))
    assert "small.png" in str(exc.value) and "choose a crop that fits every image" in str(exc.value)


# ---------------------------------------------------------------- a user's photos through a run's preprocessing


def imagefolder_config(tmp_path, root, extra=""):
    path = tmp_path / "images.toml"
    path.write_text(
        TINY.format(root=root, run=tmp_path / "run")
        .replace('name = "mnist"', f'name = "imagefolder"\nsize = 8\ntest_fraction = 0.3\n{extra}')
        .replace("epochs = 2", "epochs = 1")
    )
    return path


def test_read_images_as_run_applies_the_run_s_crop_and_resize(tmp_path):
    from vaeflow_cli.data.decode import decode_with_fallback
    from vaeflow_cli.data.images import read_images_as_run

    root = photos(tmp_path / "photos")
    cfg = config_mod.resolve(imagefolder_config(tmp_path, root, "crop_box = [2, 1, 16, 18]"))
    raw = photos(tmp_path / "raw", n=2, w=40, h=50, seed=3)  # another size than the training images
    files = sorted(raw.glob("*.png"))
    images, note = read_images_as_run(files, cfg, (3, 8, 8))
    want = decode_with_fallback(files, crop=(2, 1, 16, 18), size=8).transpose(0, 3, 1, 2)
    assert images.dtype == np.uint8 and np.array_equal(images, want)
    assert "rows 2:18, columns 1:19" in note and "8x8" in note
    # an image the crop does not fit: one line naming it and the crop; one already 8x8 is taken as it is
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(VaeflowError, match=r"small.png.*crop box.*does not fit.*one already 8x8"):
        read_images_as_run([tmp_path / "small.png"], cfg, (3, 8, 8))
    exact = np.random.RandomState(5).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    Image.fromarray(exact).save(tmp_path / "exact.png")
    images, note = read_images_as_run([tmp_path / "exact.png"], cfg, (3, 8, 8))
    assert np.array_equal(images[0], exact.transpose(2, 0, 1)) and "taken as it is" in note
    with pytest.raises(VaeflowError, match="missing.png not found"):
        read_images_as_run([tmp_path / "missing.png"], cfg, (3, 8, 8))


def test_read_images_as_run_for_a_dataset_of_arrays_needs_the_model_s_size(tmp_path, tiny_config):
    from vaeflow_cli.data.images import luma, read_images_as_run

    cfg = config_mod.resolve(tiny_config)  # mnist: IDX arrays, no crop or resize of image files
    rgb = np.random.RandomState(0).randint(0, 256, (28, 28, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "digit.png")
    images, note = read_images_as_run([tmp_path / "digit.png"], cfg, (1, 28, 28))
    assert note is None and np.array_equal(images[0, 0], luma(rgb))
    with Image.open(tmp_path / "digit.png") as im:
        assert np.array_equal(luma(rgb), np.asarray(im.convert("L")))
    Image.fromarray(rgb).resize((40, 40)).save(tmp_path / "big.png")
    with pytest.raises(VaeflowError, match=r"image is 40x40, the model needs 28x28 \(the run's dataset, mnist, has no crop or resize"):
        read_images_as_run([tmp_path / "big.png"], cfg, (1, 28, 28))


def test_interpolate_takes_raw_photos_of_another_size_and_says_what_it_applied(tmp_path, capsys):
    from vaeflow_cli.training.loop import train_phase

    root = photos(tmp_path / "photos", n=12, w=10, h=12)
    cfg = config_mod.resolve(imagefolder_config(tmp_path, root))
    train_phase(cfg, tmp_path / "run", "vae", progress=False)
    raw = photos(tmp_path / "raw", n=2, w=64, h=48, seed=7)
    out = tmp_path / "path.png"
    argv = ["interpolate", "--run", tmp_path / "run", "--from", raw / "p0.png", "--to", raw / "p1.png", "--steps", "3", "--out", out]
    code, _, err = call_main(argv, capsys)
    assert code == 0, err
    assert "applied the run's preprocessing (imagefolder): the centred square of the shorter side, resized to 8x8" in err
    with Image.open(out) as im:
        assert im.size[0] > im.size[1] > 8  # one row of 3 images


def test_file_modes_of_the_cache_follow_the_umask(tmp_path, cache_dir):
    root = photos(tmp_path / "photos")
    old = os.umask(0o022)
    try:
        ImageFolder(root=str(root), size=8, test_fraction=0.3).split("train")
    finally:
        os.umask(old)
    (cache,) = (cache_dir / "datasets").glob("*.npy")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o644  # a shared dataset cache is readable by others, as a plain write makes it


def test_skip_bad_skips_a_celeba_file_that_the_partition_lists_but_is_missing(tmp_path, capfd):
    from vaeflow_plugins.datasets import CelebA

    root = tmp_path / "celeba"
    photos(root / "img_align_celeba", n=3, w=40, h=50)
    names = sorted(p.name for p in (root / "img_align_celeba").iterdir())
    (root / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in [*names, "gone.jpg"]))
    with pytest.raises(VaeflowError, match=r"gone.jpg: not found; check data.root, or set data.skip_bad = true"):
        CelebA(root=str(root), crop="box", crop_box=[0, 0, 40, 40], size=8).split("train")
    assert len(CelebA(root=str(root), crop="box", crop_box=[0, 0, 40, 40], size=8, skip_bad=True).split("train")) == 3
    assert "skipped 1 unreadable image(s) of 4" in capfd.readouterr().err
