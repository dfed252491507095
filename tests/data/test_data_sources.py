"""Tests for byol.data.sources: every reader is fed small files written here, so the exact pixel
layout of each on-disk format is checked without any dataset on the machine."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byol.data import (
    ArraySource,
    BadImageWarning,
    DataError,
    FileSource,
    FolderEvalDataset,
    FolderViewsDataset,
    open_source,
)

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def idx_images_bytes(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_idx_pair(folder: Path, prefix: str, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    for name, data in (
        (f"{prefix}-images-idx3-ubyte{suffix}", idx_images_bytes(images)),
        (f"{prefix}-labels-idx1-ubyte{suffix}", idx_labels_bytes(labels)),
    ):
        (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


def save_png(path: Path, size: tuple[int, int] = (20, 24), mode: str = "RGB", color=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        channels = 3 if mode == "RGB" else 1
        arr = RNG.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        img = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)
    else:
        img = Image.new(mode, size, color)
    img.save(path)


def write_truncated_jpeg(path: Path) -> None:
    arr = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------
# IDX / MNIST
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_exact_pixels_and_labels(tmp_path: Path, gz: bool) -> None:
    images, labels = write_idx_pair(tmp_path, "train", 5, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    src = open_source("idx", str(tmp_path / name))
    assert isinstance(src, ArraySource)
    assert src.images.shape == (5, 1, 28, 28) and src.images.dtype == torch.uint8
    assert src.images.is_contiguous()
    assert torch.equal(src.images[:, 0], torch.from_numpy(images))
    assert src.labels is not None and src.labels.dtype == torch.int64
    assert src.labels.tolist() == labels.tolist()
    assert len(src) == 5


def test_idx_gzip_is_sniffed_not_guessed_from_name(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    p = tmp_path / "weird-images-idx3-ubyte"  # gzipped content, no .gz extension
    p.write_bytes(gzip.compress(idx_images_bytes(images)))
    src = open_source("idx", str(p))
    assert src.images.shape == (3, 1, 4, 5)
    assert torch.equal(src.images[:, 0], torch.from_numpy(images))
    assert src.labels is None  # no labels file next to it


def test_idx_wrong_magic_names_file(tmp_path: Path) -> None:
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(struct.pack(">IIII", 0x00000801, 1, 2, 2) + bytes(4))
    with pytest.raises(DataError, match=r"bad-images-idx3-ubyte.*magic 0x00000803"):
        open_source("idx", str(p))


def test_idx_truncated(tmp_path: Path) -> None:
    data = idx_images_bytes(RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8))
    p = tmp_path / "t-images-idx3-ubyte"
    p.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        open_source("idx", str(p))
    gzp = tmp_path / "g-images-idx3-ubyte.gz"
    gzp.write_bytes(gzip.compress(data)[:-20])  # broken gzip stream
    with pytest.raises(DataError, match="g-images-idx3-ubyte.gz"):
        open_source("idx", str(gzp))


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    write_idx_pair(tmp_path, "train", 4, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_labels_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="3 labels"):
        open_source("idx", str(tmp_path / "train-images-idx3-ubyte"))


def test_fashion_mnist_folder(tmp_path: Path) -> None:
    train_x, train_y = write_idx_pair(tmp_path, "train", 6, gz=True)
    test_x, test_y = write_idx_pair(tmp_path, "t10k", 3, gz=False)
    src = open_source("fashion_mnist", str(tmp_path), "train")
    assert src.name == "fashion_mnist/train"
    assert src.images.shape == (6, 1, 28, 28)
    assert torch.equal(src.images[:, 0], torch.from_numpy(train_x))
    assert src.labels.tolist() == train_y.tolist()
    assert src.classes[0] == "T-shirt/top" and src.classes[9] == "Ankle boot"
    test = open_source("fashion_mnist", str(tmp_path), "test", limit=2)
    assert torch.equal(test.images[:, 0], torch.from_numpy(test_x[:2]))
    assert test.labels.tolist() == test_y[:2].tolist()
    mnist = open_source("mnist", str(tmp_path), "test")
    assert mnist.classes == [str(i) for i in range(10)]
    with pytest.raises(DataError, match="split"):
        open_source("fashion_mnist", str(tmp_path), "val")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        open_source("mnist", str(tmp_path / "other"), "test")


def test_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source("mnist", str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


def _cifar_data(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def test_cifar10_layout_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = []
    for i in range(1, 6):
        data, labels = _cifar_data(2), [i % 10, (i + 3) % 10]
        batches.append((data, labels))
        with open(root / f"data_batch_{i}", "wb") as f:
            # bytes keys, like the original python-2 pickles
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f, protocol=2)
    test_data = _cifar_data(3)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": test_data, "labels": [1, 2, 3]}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)

    src = open_source("cifar10", str(tmp_path), "train")  # parent folder is accepted too
    assert src.images.shape == (10, 3, 32, 32) and src.images.dtype == torch.uint8
    all_data = np.concatenate([d for d, _ in batches])
    # row layout: 1024 red values, then green, then blue, each row-major (y, x)
    for n, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 17), (9, 2, 31, 30), (6, 0, 12, 1)]:
        assert src.images[n, c, y, x].item() == all_data[n, c * 1024 + y * 32 + x]
    assert src.labels.tolist() == [lab for _, labels in batches for lab in labels]
    assert src.classes[1] == "automobile"

    test = open_source("cifar10", str(root), "test")
    assert test.images.shape == (3, 3, 32, 32)
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(test_data))
    assert test.labels.tolist() == [1, 2, 3]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    data = _cifar_data(4)
    for split in ("train", "test"):
        with open(root / split, "wb") as f:
            pickle.dump(
                {b"data": data, b"fine_labels": [10, 99, 0, 42], b"coarse_labels": [1, 2, 3, 4]},
                f,
            )
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    src = open_source("cifar100", str(root), "test")
    assert src.labels.tolist() == [10, 99, 0, 42]
    assert len(src.classes) == 100 and src.classes[99] == "c99"
    assert src.images[2, 1, 3, 4].item() == data[2, 1024 + 3 * 32 + 4]


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_hostile_pickle_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": _Evil(), "labels": []}, f)
    with pytest.raises(DataError, match="forbidden"):
        open_source("cifar10", str(root), "test")
    (root / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test_batch"):
        open_source("cifar10", str(root), "test")
    with pytest.raises(DataError, match="data_batch_1"):
        open_source("cifar10", str(root), "train")


def test_cifar_bad_shape(tmp_path: Path) -> None:
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"uint8 \[N, 3072\]"):
        open_source("cifar10", str(tmp_path), "test")


# ------------------------------------------------------------------------------------------
# STL-10
# ------------------------------------------------------------------------------------------


def _stl_file_bytes(images_nchw: np.ndarray) -> bytes:
    """Encode [N,3,96,96] (row-major y, x) into STL-10's column-major on-disk order."""
    return np.ascontiguousarray(images_nchw.transpose(0, 1, 3, 2)).tobytes()


def test_stl10_column_major_and_splits(tmp_path: Path) -> None:
    root = tmp_path / "stl10_binary"
    root.mkdir()
    train = RNG.integers(0, 256, size=(2, 3, 96, 96), dtype=np.uint8)
    unl = RNG.integers(0, 256, size=(3, 3, 96, 96), dtype=np.uint8)
    (root / "train_X.bin").write_bytes(_stl_file_bytes(train))
    (root / "train_y.bin").write_bytes(bytes([1, 10]))
    (root / "unlabeled_X.bin").write_bytes(_stl_file_bytes(unl))
    (root / "class_names.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")

    # A single hand-placed byte: image 0, channel 1, column x=7, row y=5 (column-major).
    raw = bytearray((root / "train_X.bin").read_bytes())
    raw[1 * 96 * 96 + 7 * 96 + 5] = 200
    raw[1 * 96 * 96 + 5 * 96 + 7] = 17
    (root / "train_X.bin").write_bytes(bytes(raw))

    src = open_source("stl10", str(tmp_path), "train")
    assert src.images.shape == (2, 3, 96, 96) and src.images.is_contiguous()
    assert src.images[0, 1, 5, 7].item() == 200  # [c, y, x]
    assert src.images[0, 1, 7, 5].item() == 17
    assert torch.equal(src.images[1], torch.from_numpy(train[1]))
    assert src.labels.tolist() == [0, 9]
    assert src.classes[3] == "name3"

    u = open_source("stl10", str(root), "unlabeled")
    assert u.labels is None and torch.equal(u.images, torch.from_numpy(unl))
    both = open_source("stl10", str(root), "train+unlabeled")
    assert len(both) == 5 and both.labels is None
    assert torch.equal(both.images[2:], torch.from_numpy(unl))
    assert len(open_source("stl10", str(root), "train+unlabeled", limit=3)) == 3

    (root / "test_X.bin").write_bytes(bytes(27648 + 5))
    with pytest.raises(DataError, match="multiple of 27648"):
        open_source("stl10", str(root), "test")
    with pytest.raises(DataError, match="split"):
        open_source("stl10", str(root), "val")


# ------------------------------------------------------------------------------------------
# numpy
# ------------------------------------------------------------------------------------------


def test_numpy_layouts_and_dtypes(tmp_path: Path) -> None:
    nhwc = RNG.integers(0, 256, size=(4, 8, 6, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1])
    np.savez(tmp_path / "a.npz", images=nhwc, labels=labels)
    a = open_source("numpy", str(tmp_path / "a.npz"))
    assert a.images.shape == (4, 3, 8, 6)
    assert torch.equal(a.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert a.labels.tolist() == [0, 1, 2, 1] and a.labels.dtype == torch.int64

    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "b.npz", x=nchw, y=labels)
    b = open_source("numpy", str(tmp_path / "b.npz"))
    assert torch.equal(a.images, b.images) and b.labels.tolist() == labels.tolist()

    floats = np.array([0.0, 0.5, 1.0, 0.2], dtype=np.float32).reshape(1, 1, 2, 2)
    np.save(tmp_path / "c.npy", floats)
    c = open_source("numpy", str(tmp_path / "c.npy"))
    assert c.labels is None and c.images.dtype == torch.uint8
    assert c.images.flatten().tolist() == [0, 128, 255, 51]

    gray = RNG.integers(0, 256, size=(2, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "d.npy", gray)
    assert open_source("numpy", str(tmp_path / "d.npy")).images.shape == (2, 1, 5, 5)

    np.save(tmp_path / "e.npy", np.zeros((2, 5, 5, 3), np.int32))
    with pytest.raises(DataError, match="accepted"):
        open_source("numpy", str(tmp_path / "e.npy"))
    np.save(tmp_path / "f.npy", np.full((2, 5, 5), 2.0))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        open_source("numpy", str(tmp_path / "f.npy"))
    np.save(tmp_path / "g.npy", np.zeros((2, 5, 5, 4), np.uint8))
    with pytest.raises(DataError, match="channel"):
        open_source("numpy", str(tmp_path / "g.npy"))
    np.savez(tmp_path / "h.npz", pixels=nhwc)
    with pytest.raises(DataError, match="'images'"):
        open_source("numpy", str(tmp_path / "h.npz"))


# ------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------


def make_class_folder(root: Path) -> None:
    save_png(root / "train" / "cat" / "a.png", (20, 24))
    save_png(root / "train" / "cat" / "b.PNG", (30, 16))
    save_png(root / "train" / "dog" / "sub" / "c.png", (16, 16))
    save_png(root / "train" / "dog" / "d.png", (40, 18))
    (root / "train" / "dog" / "notes.txt").write_text("ignored: not an image extension")


def test_folder_in_memory(tmp_path: Path) -> None:
    make_class_folder(tmp_path)
    src = open_source("folder", str(tmp_path), "train", image_size=12)
    assert isinstance(src, ArraySource)
    assert src.images.shape == (4, 3, 12, 12) and src.images.dtype == torch.uint8
    assert src.classes == ["cat", "dog"]
    assert src.labels.tolist() == [0, 0, 1, 1]
    # load_size overrides image_size; limit keeps the first files in sorted order
    small = open_source("folder", str(tmp_path), "train", image_size=12, load_size=8, limit=3)
    assert small.images.shape == (3, 3, 8, 8) and small.labels.tolist() == [0, 0, 1]


def test_folder_resize_and_gray(tmp_path: Path) -> None:
    # class folders directly under path (no split level); all grayscale -> one channel
    save_png(tmp_path / "a" / "x.png", (40, 20), mode="L", color=77)
    save_png(tmp_path / "b" / "y.png", (10, 30), mode="L", color=200)
    src = open_source("folder", str(tmp_path), "train", image_size=10)
    assert src.images.shape == (2, 1, 10, 10)
    assert (src.images[0] == 77).all() and (src.images[1] == 200).all()
    # one colour image -> everything RGB, grey images replicated into 3 channels
    save_png(tmp_path / "b" / "z.png", (10, 10), mode="RGB", color=(1, 2, 3))
    src = open_source("folder", str(tmp_path), "train", image_size=10)
    assert src.images.shape == (3, 3, 10, 10)
    assert (src.images[0] == 77).all()
    assert src.images[2, :, 4, 4].tolist() == [1, 2, 3]


def test_folder_bad_files_are_skipped_with_one_warning(tmp_path: Path) -> None:
    make_class_folder(tmp_path)
    write_truncated_jpeg(tmp_path / "train" / "cat" / "broken.jpg")
    (tmp_path / "train" / "dog" / "fake.jpg").write_text("this is not an image")
    with pytest.warns(BadImageWarning, match="skipped 2 unreadable") as rec:
        src = open_source("folder", str(tmp_path), "train", image_size=8)
    assert len([w for w in rec if issubclass(w.category, BadImageWarning)]) == 1
    msg = str(rec[0].message)
    assert "broken.jpg" in msg and "fake.jpg" in msg
    assert len(src) == 4 and src.labels.tolist() == [0, 0, 1, 1]

    with pytest.raises(DataError, match="broken.jpg"):
        open_source("folder", str(tmp_path), "train", image_size=8, strict=True)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source("folder", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*<class>"):
        open_source("folder", str(tmp_path / "empty"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        open_source("folder", str(tmp_path / "noimg"))
    save_png(tmp_path / "splits" / "train" / "c" / "a.png")
    with pytest.raises(DataError, match="split"):
        open_source("folder", str(tmp_path / "splits"), "val")
    (tmp_path / "allbad" / "c").mkdir(parents=True)
    (tmp_path / "allbad" / "c" / "x.png").write_bytes(b"junk")
    with pytest.warns(BadImageWarning), pytest.raises(DataError, match="could be decoded") as e:
        open_source("folder", str(tmp_path / "allbad"))
    assert "x.png" in str(e.value) and "check that data.path" in str(e.value)  # names it, says how
    with pytest.raises(DataError, match="unknown data source"):
        open_source("imagenet", str(tmp_path))


def test_unlabeled_folder_recursive(tmp_path: Path) -> None:
    save_png(tmp_path / "x" / "1.png")
    save_png(tmp_path / "x" / "deep" / "er" / "2.png")
    save_png(tmp_path / "3.png")
    (tmp_path / "x" / "skip.txt").write_text("no")
    src = open_source("unlabeled_folder", str(tmp_path), image_size=6)
    assert isinstance(src, ArraySource)
    assert len(src) == 3 and src.labels is None and src.classes is None
    files = open_source("unlabeled_folder", str(tmp_path), in_memory=False)
    assert isinstance(files, FileSource)
    assert [f.name for f in files.files] == ["3.png", "1.png", "2.png"]  # sorted full paths
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="void"):
        open_source("unlabeled_folder", str(tmp_path / "void"))


def test_memory_budget_picks_file_source(tmp_path: Path) -> None:
    make_class_folder(tmp_path)
    src = open_source("folder", str(tmp_path), "train", image_size=64, max_memory_gb=1e-6)
    assert isinstance(src, FileSource) and len(src) == 4
    assert src.labels.tolist() == [0, 0, 1, 1] and src.classes == ["cat", "dog"]


# ------------------------------------------------------------------------------------------
# lazily decoded datasets
# ------------------------------------------------------------------------------------------


def test_folder_views_dataset(tmp_path: Path) -> None:
    make_class_folder(tmp_path)
    src = open_source("folder", str(tmp_path), "train", in_memory=False)
    assert isinstance(src, FileSource)
    torch.manual_seed(0)
    ds = FolderViewsDataset(src, out_size=16)
    assert len(ds) == 4
    v1, v2, label = ds[3]
    assert v1.shape == (3, 16, 16) and v2.shape == (3, 16, 16)
    assert v1.dtype == torch.uint8 and v2.dtype == torch.uint8
    assert label == 1
    assert not torch.equal(v1, v2)  # independent crops of a noise image

    gray = FolderViewsDataset(src, out_size=8, in_chans=1, interpolation="bilinear")
    assert gray[0][0].shape == (1, 8, 8)

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 16, 16) and batch[2].tolist() == [0, 0, 1, 1]

    ev = FolderEvalDataset(src, out_size=14)
    img, lab = ev[3]  # 40x18 image -> short side 16 -> center crop 14
    assert img.shape == (3, 14, 14) and img.dtype == torch.uint8 and lab == 1


def test_views_dataset_skips_bad_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_png(tmp_path / "a.png")
    write_truncated_jpeg(tmp_path / "b.jpg")
    save_png(tmp_path / "c.png")
    files = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"]
    src = FileSource(files=files, labels=torch.tensor([0, 1, 2]), classes=None, name="t")
    ds = FolderViewsDataset(src, out_size=8)
    with caplog.at_level("WARNING", logger="byol.data"):
        _, _, label = ds[1]
    assert label == 2  # the next decodable file stands in, with its own label
    assert "b.jpg" in caplog.text
    ev = FolderEvalDataset(src, out_size=8)
    assert ev[1][1] == 2

    unl = FileSource(files=files, labels=None, classes=None, name="u")
    assert FolderViewsDataset(unl, out_size=8)[0][2] == -1

    strict = FolderViewsDataset(src, out_size=8, strict=True)
    with pytest.raises(DataError, match="b.jpg"):
        strict[1]


# ------------------------------------------------------------------------------------------
# synthetic
# ------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic() -> None:
    a = open_source("synthetic", image_size=16, synthetic_size=40, seed=3)
    b = open_source("synthetic", image_size=16, synthetic_size=40, seed=3)
    c = open_source("synthetic", image_size=16, synthetic_size=40, seed=4)
    assert a.images.shape == (40, 3, 16, 16) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.labels.min() >= 0 and a.labels.max() <= 9 and len(a.classes) == 10
    test = open_source("synthetic", "", "test", image_size=16, synthetic_size=40, seed=3)
    assert not torch.equal(a.images, test.images)
    first = open_source("synthetic", image_size=16, synthetic_size=100, seed=3, limit=7)
    assert len(first) == 7  # the first samples of the full set, whatever its size
    assert torch.equal(first.images, a.images[:7]) and torch.equal(first.labels, a.labels[:7])
    big = open_source("synthetic", image_size=16, synthetic_size=100, seed=3)
    assert torch.equal(big.images[:40], a.images)
