"""cifar_fd's refusals on datasets it cannot score: each one line that points at the real cause."""

import numpy as np
import pytest
from PIL import Image

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation import cifarfd
from vaeflow_plugins.datasets import ImageFolder


def class_folders(root, counts: dict[str, int], side: int = 12):
    rng = np.random.RandomState(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (side, side, 3)).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("size", [1, 4, 7])
def test_images_smaller_than_8_pixels_are_refused_in_one_line(tmp_path, size):
    root = class_folders(tmp_path / "images", {"red": 6, "blue": 6})
    dataset = ImageFolder(root=str(root), size=size, test_fraction=0.3)
    with pytest.raises(VaeflowError) as exc:
        cifarfd.load_or_train(tmp_path / "cifar-cnn.pt", dataset)  # what evaluate --metrics cifar_fd calls first
    message = str(exc.value)
    assert "\n" not in message and f"{size}x{size}" in message and "at least 8x8" in message, message
    assert not (tmp_path / "cifar-cnn.pt").exists()
    assert len(cifarfd.labelled_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3))[2]) == 2  # 8 is enough


def move_to_split(root, dataset, name: str, split: str, keep: int = 1):
    """Leave in class folder ``name`` only ``keep`` images that fall in ``split``."""
    chosen = [p for p in dataset.files(split) if p.parent.name == name][:keep]
    assert len(chosen) == keep
    for p in (root / name).iterdir():
        if p not in chosen:
            p.unlink()


def test_a_training_split_short_of_classes_is_told_from_a_root_of_one_class(tmp_path):
    root = class_folders(tmp_path / "images", {"cat": 10, "dog": 30, "eel": 30}, side=8)
    dataset = ImageFolder(root=str(root), size=8, test_fraction=0.3)
    for name in ("dog", "eel"):  # their only images are held out: the training split has cat alone
        move_to_split(root, dataset, name, "test")
    dataset = ImageFolder(root=str(root), size=8, test_fraction=0.3)
    assert {p.parent.name for p in dataset.files("train")} == {"cat"}
    with pytest.raises(VaeflowError) as exc:
        cifarfd.labelled_splits(dataset)
    message = str(exc.value)
    assert "train split's images" in message and "1 class folder(s) (cat) of the 3 there" in message, message
    assert "test_fraction" in message


def test_held_out_images_of_one_class_are_enough(tmp_path):
    root = class_folders(tmp_path / "images", {"cat": 30, "dog": 30}, side=8)
    dataset = ImageFolder(root=str(root), size=8, test_fraction=0.3)
    for p in dataset.files("test"):  # hold out cats only
        if p.parent.name == "dog":
            p.unlink()
    dataset = ImageFolder(root=str(root), size=8, test_fraction=0.3)
    (train, ytr), (test, yte), classes, _ = cifarfd.labelled_splits(dataset)
    assert classes == ["cat", "dog"] and set(ytr) == {0, 1} and set(yte) == {0} and len(test) == len(yte) > 0


def test_a_root_of_one_class_says_so(tmp_path):
    root = class_folders(tmp_path / "images", {"cat": 12}, side=8)
    with pytest.raises(VaeflowError, match=r"are in 1 class folder\(s\) \(cat\); a classifier needs at least 2"):
        cifarfd.labelled_splits(ImageFolder(root=str(root), size=8, test_fraction=0.3))
