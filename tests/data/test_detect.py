"""Detection of the reader, splits, size and channels of generated data of every kind, the
statistics computed from the data, and the split-name errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from byol.data import DataError, open_source
from byol.data.detect import detect_data
from byol.data.stats import image_stats

RNG = np.random.default_rng(5)


def png(path: Path, w: int = 24, h: int = 20, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w) if gray else (h, w, 3)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(path)


def class_tree(root: Path, classes=("cat", "dog"), n: int = 3, **kw) -> None:
    for c in classes:
        for i in range(n):
            png(root / c / f"{i}.png", **kw)


def test_class_folders_without_splits(tmp_path):
    class_tree(tmp_path, gray=True)
    d = detect_data(str(tmp_path))
    assert (d.source, d.split, d.labeled, d.has_test) == ("folder", "train", True, False)
    assert (d.num_images, d.side, d.channels) == (6, 20, 1)


def test_class_folders_with_split_folders(tmp_path):
    class_tree(tmp_path / "train", w=40, h=32)
    class_tree(tmp_path / "val", n=1)
    d = detect_data(str(tmp_path))
    assert (d.source, d.split, d.val_split, d.has_test) == ("folder", "train", "val", True)
    assert (d.num_images, d.side, d.channels) == (6, 32, 3)


def test_unlabeled_folder(tmp_path):
    for i in range(4):
        png(tmp_path / "shots" / f"{i}.jpg".replace(".jpg", ".png"))
    png(tmp_path / "top.png")
    d = detect_data(str(tmp_path))
    assert (d.source, d.labeled, d.num_images) == ("unlabeled_folder", False, 5)


@pytest.mark.parametrize("keys", [("images", "labels"), ("x", "y"), ("images", None)])
def test_npz_key_pairs(tmp_path, keys):
    x = RNG.integers(0, 256, (10, 12, 12), dtype=np.uint8)
    arrays = {keys[0]: x}
    if keys[1]:
        arrays[keys[1]] = RNG.integers(0, 3, 10)
    np.savez(tmp_path / "d.npz", **arrays)
    d = detect_data(str(tmp_path / "d.npz"))
    assert (d.source, d.num_images, d.side, d.channels) == ("numpy", 10, 12, 1)
    assert d.labeled == bool(keys[1]) and not d.has_test


def test_npy_and_train_test_npz_folder(tmp_path):
    np.save(tmp_path / "a.npy", RNG.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8))
    d = detect_data(str(tmp_path / "a.npy"))
    assert (d.source, d.channels, d.side) == ("numpy", 3, 8)
    folder = tmp_path / "f"
    folder.mkdir()
    for name, n in (("train", 8), ("test", 4)):
        np.savez(folder / f"{name}.npz", images=RNG.integers(0, 256, (n, 8, 8), dtype=np.uint8),
                 labels=np.arange(n) % 2)
    d = detect_data(str(folder))
    assert d.source == "numpy" and d.val_path.endswith("test.npz") and d.has_test


def _idx(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x803, n, h, w) + images.tobytes()


def test_idx_file_and_folder(tmp_path):
    for prefix, n in (("train", 6), ("t10k", 2)):
        imgs = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
            struct.pack(">II", 0x801, n) + bytes(range(n))))
    d = detect_data(str(tmp_path))
    assert d.source == "idx" and d.path.endswith("train-images-idx3-ubyte.gz")
    assert d.val_path.endswith("t10k-images-idx3-ubyte.gz") and d.labeled
    assert (d.num_images, d.side, d.channels) == (6, 28, 1)
    # an IDX file under another name is recognised by its magic number
    (tmp_path / "mine.bin").write_bytes(_idx(RNG.integers(0, 256, (3, 9, 9), dtype=np.uint8)))
    d = detect_data(str(tmp_path / "mine.bin"))
    assert (d.source, d.num_images, d.labeled) == ("idx", 3, False)


def test_cifar10_and_cifar100_layouts(tmp_path):
    c10 = tmp_path / "c10" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(c10 / name, "wb") as f:
            pickle.dump({"data": RNG.integers(0, 256, (2, 3072), dtype=np.uint8),
                         "labels": [0, 1]}, f)
    with open(c10 / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    d = detect_data(str(tmp_path / "c10"))
    assert (d.source, d.num_images, d.side, d.channels, d.has_test) == ("cifar10", 10, 32, 3, True)
    c100 = tmp_path / "c100"
    c100.mkdir()
    for name in ("train", "test"):
        with open(c100 / name, "wb") as f:
            pickle.dump({"data": RNG.integers(0, 256, (3, 3072), dtype=np.uint8),
                         "fine_labels": [0, 1, 2]}, f)
    with open(c100 / "meta", "wb") as f:
        pickle.dump({"fine_label_names": ["a", "b", "c"]}, f)
    assert detect_data(str(c100)).source == "cifar100"


def test_stl10_layouts(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    one = 3 * 96 * 96
    (root / "train_X.bin").write_bytes(bytes(2 * one))
    (root / "train_y.bin").write_bytes(bytes([1, 2]))
    d = detect_data(str(tmp_path))
    assert (d.source, d.split, d.labeled, d.num_images, d.side) == ("stl10", "train", True, 2, 96)
    (root / "unlabeled_X.bin").write_bytes(bytes(3 * one))
    (root / "test_X.bin").write_bytes(bytes(one))
    d = detect_data(str(root))
    assert (d.split, d.labeled, d.num_images, d.has_test) == ("train+unlabeled", False, 5, True)


def test_nothing_to_read_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="found no images"):
        detect_data(str(tmp_path))
    with pytest.raises(DataError, match="unknown kind"):
        detect_data(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="no such file"):
        detect_data(str(tmp_path / "missing"))


def test_statistics_are_the_data_s(tmp_path):
    x = RNG.integers(0, 256, (50, 3, 6, 6), dtype=np.uint8)
    x[:, 1] //= 4  # a darker green channel
    np.savez(tmp_path / "d.npz", images=x)
    src = open_source("numpy", str(tmp_path / "d.npz"))
    mean, std, used = image_stats(src)
    ref = x.astype(np.float64) / 255
    assert used == 50
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-4)
    # a bounded sample of a folder: statistics of decoded files
    for i in range(6):
        Image.new("L", (16, 16), 64 if i % 2 else 192).save(tmp_path / f"{i}.png")
    files = open_source("unlabeled_folder", str(tmp_path), in_memory=False)
    mean, std, used = image_stats(files, max_images=4, side=8, channels=1)
    assert used == 4 and len(mean) == 1 and 64 / 255 - 1e-3 <= mean[0] <= 192 / 255 + 1e-3


def test_unknown_split_names_the_option_and_the_splits(tmp_path):
    np.savez(tmp_path / "d.npz", images=RNG.integers(0, 256, (4, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="--test-split 'nonsense_split'.*--test-data"):
        open_source("numpy", str(tmp_path / "d.npz"), "nonsense_split",
                    split_option="--test-split")
    with pytest.raises(DataError, match="splits are train, test, val: set data.val_split"):
        open_source("synthetic", split="bogus", synthetic_size=4, image_size=8,
                    split_option="data.val_split")
    class_tree(tmp_path / "tree" / "train")
    with pytest.raises(DataError, match=r"\['train'\]; set --test-split"):
        open_source("folder", str(tmp_path / "tree"), "test", split_option="--test-split")
    class_tree(tmp_path / "flat")
    with pytest.raises(DataError, match="--train-split 'cats' names no split"):
        open_source("folder", str(tmp_path / "flat"), "cats", split_option="--train-split")
