"""Which reader opens a path, and what the images look like: for ``byol pretrain --data PATH``
without a config.

:func:`detect_data` looks at a file or folder and returns a :class:`Detected`: the
``data.source`` to use (class folders, an unlabeled folder, ``.npz`` / ``.npy``, IDX, CIFAR,
STL-10), the training split and a separate test set when the layout has one, the number of
images, their side and channels, whether they carry labels, and a sentence saying why.
Folders are only scanned (a bounded sample of image headers is read); array formats are read.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import DataError
from .folders import IMAGE_EXTENSIONS, list_image_files, split_folders

_GRAY = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HEADER_SAMPLE = 64  # image headers read to find a folder's typical size and colour


@dataclass
class Detected:
    source: str  # a data.source value
    path: str  # data.path
    split: str = "train"  # data.split
    val_split: str = "test"  # data.val_split
    val_path: str = ""  # data.val_path: a separate test file or folder, if found
    has_test: bool = False  # a test set separate from the training images exists
    num_images: int = 0  # images of the training split
    side: int = 0  # typical short side in pixels (median over a sample for folders)
    channels: int = 3
    labeled: bool = False  # the training split has labels (the kNN monitor can run)
    why: str = ""


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _idx_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(4)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(p, "rb") as f:
                head = f.read(4)
        return len(head) == 4 and struct.unpack(">I", head)[0] == 0x00000803
    except OSError:
        return False


def _folder_shape(files: list[Path]) -> tuple[int, int]:
    """(median short side, channels) of an evenly spaced sample of ``files``' headers."""
    step = max(1, len(files) // _HEADER_SAMPLE)
    sides, gray = [], True
    for f in files[::step][:_HEADER_SAMPLE]:
        try:
            with Image.open(f) as im:  # reads the header only
                sides.append(min(im.size))
                gray = gray and im.mode in _GRAY
        except Exception:  # noqa: BLE001,S112 - unreadable files are reported when decoded
            continue
    if not sides:
        raise DataError(f"none of the sampled images under {files[0].parent} could be opened; "
                        "check that they are JPEG/PNG/BMP/WEBP/TIFF files PIL can read")
    sides.sort()
    return sides[len(sides) // 2], 1 if gray else 3


def _class_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` holding images, when ``root`` has no images of its own."""
    if any(_is_image(p) for p in root.iterdir() if p.is_file()):
        return []
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [d for d in dirs if list_image_files(d)]


def _detect_folder(p: Path) -> Detected:
    splits = split_folders(p)
    if splits:
        train = "train" if "train" in splits else splits[0]
        tests = [s for s in ("test", "val", "validation") if s in splits and s != train]
        root = p / train
        classes = _class_dirs(root)
        if len(classes) >= 2:
            files = list_image_files(root)
            side, chans = _folder_shape(files)
            d = Detected("folder", str(p), train, tests[0] if tests else train,
                         has_test=bool(tests), num_images=len(files), side=side,
                         channels=chans, labeled=True)
            d.why = (f"split folders {splits} with {len(classes)} class folders in {train}/"
                     + (f"; {tests[0]}/ is the test set" if tests else "; no test split"))
            return d
        files = list_image_files(root)
        if not files:
            raise DataError(f"{root} holds no images; see docs/DATA.md for the folder layouts")
        side, chans = _folder_shape(files)
        return Detected("unlabeled_folder", str(root), num_images=len(files), side=side,
                        channels=chans, why=f"images without class folders under {root}")
    classes = _class_dirs(p)
    if len(classes) >= 2:
        files = list_image_files(p)
        side, chans = _folder_shape(files)
        return Detected("folder", str(p), num_images=len(files), side=side, channels=chans,
                        labeled=True, why=f"{len(classes)} class folders, no split folders "
                        "(train/, test/): one set of images")
    files = list_image_files(p)
    if not files:
        raise DataError(
            f"--data {p}: found no images (searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}) and no known dataset files (.npz/.npy, "
            "IDX, CIFAR python batches, STL-10 binaries); see docs/DATA.md for the layouts")
    side, chans = _folder_shape(files)
    return Detected("unlabeled_folder", str(p), num_images=len(files), side=side,
                    channels=chans, why=f"{len(files)} images without class folders "
                    "(labels: put each class in its own sub-folder)")


def _array_facts(d: Detected) -> Detected:
    """Fill size, channels and labels of an array-format source by reading its training split."""
    from .sources import open_source

    src = open_source(d.source, d.path, d.split)
    n, c, h, w = src.images.shape
    d.num_images, d.channels, d.side = int(n), int(c), int(min(h, w))
    d.labeled = src.labels is not None
    return d


def _idx_pair(folder: Path) -> tuple[Path, Path | None] | None:
    for sub in (folder, folder / "raw"):
        if not sub.is_dir():
            continue
        train = sorted(sub.glob("train-images-idx3-ubyte*"))
        if train:
            test = sorted(sub.glob("t10k-images-idx3-ubyte*"))
            return train[0], test[0] if test else None
    return None


def detect_data(path: str) -> Detected:
    """The reader, splits and image facts of ``path`` (see the module docstring)."""
    if not path:
        raise DataError("--data: no path given; pass the folder or file of your images")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--data {p}: no such file or folder")
    if p.is_file():
        if p.suffix.lower() in (".npz", ".npy"):
            d = Detected("numpy", str(p), why=f"a NumPy {p.suffix} file (one set of images)")
            return _array_facts(d)
        if "idx3-ubyte" in p.name or _idx_magic(p):
            d = Detected("idx", str(p), why="an IDX images file (MNIST format)")
            test = p.parent / p.name.replace("train-images", "t10k-images")
            if test != p and test.is_file():
                d.val_path, d.has_test = str(test), True
                d.why += f"; {test.name} next to it is the test set"
            return _array_facts(d)
        raise DataError(
            f"--data {p}: a file of an unknown kind; pass a .npz/.npy file, an IDX images file "
            "or a folder (class folders, images, CIFAR or STL-10); see docs/DATA.md")
    for stl in (p, p / "stl10_binary"):
        if (stl / "train_X.bin").is_file() or (stl / "unlabeled_X.bin").is_file():
            unl = (stl / "unlabeled_X.bin").is_file()
            split = "train+unlabeled" if unl and (stl / "train_X.bin").is_file() else (
                "unlabeled" if unl else "train")
            n = sum((stl / f"{s}_X.bin").stat().st_size // (3 * 96 * 96)
                    for s in split.split("+"))
            has_test = (stl / "test_X.bin").is_file()
            return Detected("stl10", str(stl), split, "test", has_test=has_test, num_images=n,
                            side=96, channels=3, labeled=split == "train",
                            why=f"STL-10 binaries; training on {split}"
                            + ("; test_X.bin is the test set" if has_test else ""))
    for cifar, marker, sub in (("cifar10", "batches.meta", "cifar-10-batches-py"),
                               ("cifar100", "meta", "cifar-100-python")):
        root = p / sub if (p / sub).is_dir() else p
        train_file = "data_batch_1" if cifar == "cifar10" else "train"
        if (root / marker).is_file() and (root / train_file).is_file():
            d = Detected(cifar, str(p), has_test=(root / ("test_batch" if cifar == "cifar10"
                                                          else "test")).is_file(),
                         why=f"{cifar} python batches")
            return _array_facts(d)
    pair = _idx_pair(p)
    if pair is not None:
        train, test = pair
        d = Detected("idx", str(train), val_path=str(test or ""), has_test=test is not None,
                     why="IDX files (MNIST format)" + (f"; {test.name} is the test set" if test
                                                      else ""))
        return _array_facts(d)
    if (p / "train.npz").is_file():
        test = p / "test.npz"
        d = Detected("numpy", str(p / "train.npz"), val_path=str(test) if test.is_file() else "",
                     has_test=test.is_file(),
                     why="train.npz" + (" and test.npz" if test.is_file() else ""))
        return _array_facts(d)
    return _detect_folder(p)


def detect_test_data(path: str, train: Detected) -> tuple[str, str]:
    """``(source, path)`` of a separate test set given by the user for ``train``'s reader."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--test-data {p}: no such file or folder")
    if train.source in ("numpy", "idx") and p.is_dir():
        raise DataError(f"--test-data {p}: a folder, but the training data is a {train.source} "
                        "file; pass the test file")
    return train.source, str(p)
