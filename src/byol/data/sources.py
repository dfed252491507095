"""Dataset readers: turn a user's files into uint8 image tensors (or a lazily decoded file list).

Every reader returns one of two shapes of data, so the training loop needs only two code paths:

* :class:`ArraySource` -- the whole split decoded into one ``uint8 [N, C, H, W]`` tensor. Small and
  medium datasets (MNIST, CIFAR, STL-10, a folder that fits in ``max_memory_gb``) take this path,
  because augmenting on the device from memory is far faster than decoding files every epoch.
* :class:`FileSource` -- a sorted list of image files, decoded on the fly by
  :class:`FolderViewsDataset` / :class:`FolderEvalDataset` inside ``DataLoader`` workers. Large
  folders (ImageNet) take this path.

Readers parse the raw file formats themselves (IDX, CIFAR pickles, STL-10 binaries) rather than
depending on ``torchvision.datasets``, so that a malformed file produces a :class:`DataError` that
names the file, says what is wrong and how to fix it, instead of a reshape error deep inside a
third-party class. CIFAR pickles are read with a restricted unpickler, so a hostile file cannot run
code.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import math
import os
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "ArraySource",
    "BadImageWarning",
    "DataError",
    "FileSource",
    "FolderEvalDataset",
    "FolderViewsDataset",
    "decode_image",
    "images_from_numpy",
    "list_image_files",
    "make_synthetic",
    "open_source",
    "read_idx",
]

logger = logging.getLogger("byol.data")

#: File extensions (lower case) recognised as images by the folder sources.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
)

#: Values accepted by ``open_source(source=...)``.
SOURCES: tuple[str, ...] = (
    "folder",
    "unlabeled_folder",
    "idx",
    "fashion_mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "stl10",
    "numpy",
    "synthetic",
)

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES: list[str] = [str(i) for i in range(10)]
STL10_CLASSES: list[str] = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"

_FOLDER_LAYOUT = (
    "expected either <path>/<split>/<class>/<image> (ImageNet layout) or "
    "<path>/<class>/<image>, with images ending in " + ", ".join(sorted(IMAGE_EXTENSIONS))
)
_IDX_IMAGES_MAGIC = 0x00000803  # type byte 0x08 (unsigned byte), 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # type byte 0x08 (unsigned byte), 1 dimension
_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE  # 27648
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# PIL modes whose pixels carry no colour: a folder made only of these is kept single-channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class BadImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped (``strict=False``).

    A dedicated category lets users silence or escalate it (``-W error::...``) independently of
    other warnings.
    """


@dataclass
class ArraySource:
    """A dataset held in memory.

    ``images`` is ``uint8 [N, C, H, W]`` (contiguous, C = 1 or 3) so it can be moved to the
    device once and augmented there; ``labels`` is ``int64 [N]`` or ``None`` for unlabeled data.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None
    name: str

    def __post_init__(self) -> None:
        # Validate once here so every consumer can rely on the invariants without re-checking.
        img = self.images
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor [N, C, H, W], got "
                f"{getattr(img, 'dtype', type(img))} {tuple(getattr(img, 'shape', ()))}"
            )
        if img.shape[1] not in (1, 3):
            raise DataError(f"{self.name}: images must have 1 or 3 channels, got {img.shape[1]}")
        if not img.is_contiguous():
            self.images = img.contiguous()
        if self.labels is not None:
            self.labels = _check_labels(self.labels, len(img), self.name)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class FileSource:
    """A dataset of image files too large to hold in memory; decoded lazily in DataLoader workers.

    Files are not opened when the source is built (that would cost a full pass over e.g.
    ImageNet); unreadable ones are skipped with a warning when a dataset first touches them.
    """

    files: list[Path]
    labels: torch.Tensor | None
    classes: list[str] | None
    name: str

    def __post_init__(self) -> None:
        self.files = [Path(f) for f in self.files]
        if self.labels is not None:
            self.labels = _check_labels(self.labels, len(self.files), self.name)

    def __len__(self) -> int:
        return len(self.files)


def _check_labels(labels: Any, n: int, name: str) -> torch.Tensor:
    """Return labels as a contiguous int64 [n] tensor or raise a DataError explaining why not."""
    t = torch.as_tensor(labels)
    if t.dim() != 1 or t.shape[0] != n:
        raise DataError(f"{name}: expected {n} labels (one per image), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{name}: labels must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64).contiguous()
    if n and int(t.min()) < 0:
        raise DataError(f"{name}: labels must be >= 0, found {int(t.min())}")
    return t


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def open_source(
    source: str,
    path: str = "",
    split: str = "train",
    *,
    image_size: int = 224,
    in_memory: bool | None = None,
    max_memory_gb: float = 8.0,
    load_size: int = 0,
    strict: bool = False,
    synthetic_size: int = 1024,
    limit: int = 0,
    seed: int = 0,
) -> ArraySource | FileSource:
    """Open one split of a dataset.

    Args:
        source: one of :data:`SOURCES`.
        path: the file or folder the reader needs (see each reader); ignored by ``synthetic``.
        split: ``train`` / ``test`` (``val`` or any folder name for ``folder``; STL-10 also
            ``unlabeled`` and ``train+unlabeled``).
        image_size: side of the training crops; folder images held in memory are resized to it
            (unless ``load_size`` is set) and synthetic images are generated at it.
        in_memory: folder sources only. ``None`` decodes into memory when
            ``N * C * side * side`` bytes fit in ``max_memory_gb`` GiB, otherwise returns a
            :class:`FileSource`.
        load_size: side of folder images held in memory (0: ``image_size``).
        strict: raise :class:`DataError` on the first unreadable image instead of skipping it.
        synthetic_size: number of images of the ``synthetic`` source.
        limit: keep only the first ``limit`` samples (0: all) -- for quick runs and tests.
        seed: seed of the ``synthetic`` source.
    """
    if limit < 0:
        raise DataError(f"limit must be >= 0 (0 keeps everything), got {limit}")
    if source in ("folder", "unlabeled_folder"):
        side = load_size or image_size
        if side <= 0:
            raise DataError(f"image_size/load_size must be positive, got {side}")
        files, labels, classes, root = (
            _scan_labeled_folder(path, split)
            if source == "folder"
            else _scan_unlabeled_folder(path)
        )
        if limit:
            files = files[:limit]
            labels = labels[:limit] if labels is not None else None
        name = f"{source}/{split}" if source == "folder" else f"{source}/{Path(path).name}"
        if in_memory is None:
            # Budget three channels: the channel count is only known after decoding.
            in_memory = len(files) * 3 * side * side <= max_memory_gb * 2**30
        if not in_memory:
            return FileSource(files=files, labels=labels, classes=classes, name=name)
        return _decode_folder(files, labels, classes, name, root, side, strict)
    if source == "idx":
        src = read_idx(path, limit=limit)
    elif source in ("fashion_mnist", "mnist"):
        src = _read_mnist_like(source, path, split, limit)
    elif source in ("cifar10", "cifar100"):
        src = _read_cifar(source, path, split)
    elif source == "stl10":
        src = _read_stl10(path, split, limit)
    elif source == "numpy":
        src = _read_numpy(path)
    elif source == "synthetic":
        n = min(synthetic_size, limit) if limit else synthetic_size
        return make_synthetic(n, image_size, seed=seed, split=split)
    else:
        raise DataError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
    return _limit(src, limit)


def _limit(src: ArraySource, limit: int) -> ArraySource:
    """Keep the first ``limit`` samples (cloned, so the full tensor can be freed)."""
    if not limit or limit >= len(src):
        return src
    labels = src.labels[:limit].clone() if src.labels is not None else None
    return ArraySource(src.images[:limit].clone(), labels, src.classes, src.name)


def _default_classes(labels: torch.Tensor | None) -> list[str] | None:
    """Class names "0".."K-1" for formats that store no names."""
    if labels is None or labels.numel() == 0:
        return None
    return [str(i) for i in range(int(labels.max()) + 1)]


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def list_image_files(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, following symlinks, hidden entries skipped), sorted.

    ``os.walk`` with sorted output makes the order -- hence labels and ``limit`` -- identical on
    every machine and file system.
    """
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / fn)
    out.sort()
    return out


def _require_dir(path: str, what: str) -> Path:
    if not path:
        raise DataError(f"{what}: no path given; set data.path to the dataset folder")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what}: folder {p} does not exist; check data.path")
    if not p.is_dir():
        raise DataError(f"{what}: {p} is a file, expected a folder; check data.path")
    return p


def _scan_labeled_folder(path: str, split: str) -> tuple[list[Path], torch.Tensor, list[str], Path]:
    """Find ``<root>/<class>/**/<image>`` files, where root is ``path/split`` if it exists."""
    base = _require_dir(path, "folder source")
    root = base / split if split and (base / split).is_dir() else base
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if root == base:
        splits = [d for d in subdirs if d in ("train", "val", "validation", "test")]
        if splits:
            raise DataError(
                f"folder source: split folder {base / split} does not exist, but {base} has split "
                f"folders {splits}; set data.split (or data.val_split) to one of them"
            )
    if not subdirs:
        raise DataError(
            f"folder source: {root} has no class sub-folders; {_FOLDER_LAYOUT}. "
            "For images without class folders use source=unlabeled_folder"
        )
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for idx, cls in enumerate(subdirs):
        found = list_image_files(root / cls)
        if not found:
            empty.append(cls)
        files.extend(found)
        labels.extend([idx] * len(found))
    if not files:
        raise DataError(f"folder source: no image files found under {root}; {_FOLDER_LAYOUT}")
    if empty:
        # Empty classes keep their index so labels stay aligned with the other splits.
        logger.warning(
            "folder source: %d class folder(s) under %s contain no images: %s",
            len(empty),
            root,
            ", ".join(empty[:5]),
        )
    return files, torch.tensor(labels, dtype=torch.int64), subdirs, root


def _scan_unlabeled_folder(path: str) -> tuple[list[Path], None, None, Path]:
    root = _require_dir(path, "unlabeled_folder source")
    files = list_image_files(root)
    if not files:
        raise DataError(
            f"unlabeled_folder source: no image files found under {root} (searched recursively "
            f"for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files, None, None, root


def decode_image(path: Path | str, mode: str | None = None) -> Image.Image:
    """Open and fully decode an image, converted to ``mode`` ("RGB"/"L"; ``None``: RGB or L).

    ``.load()`` forces decoding now so that truncated files raise here (we deliberately leave
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` off: silently grey-padded images would poison training).
    """
    with Image.open(path) as im:
        im.load()
        if mode is None:
            mode = "L" if im.mode in _GRAY_MODES else "RGB"
        return im.convert(mode)


def _resize_center_crop(
    img: Image.Image, short_side: int, crop: int, resample: Image.Resampling
) -> Image.Image:
    """Resize so the short side is ``short_side`` (aspect kept), then center-crop ``crop``.

    Rounding follows torchvision (``int`` for the long side, ``round`` for the crop offset) so
    our evaluation crops match the reference pipeline pixel for pixel.
    """
    w, h = img.size
    if w <= h:
        nw, nh = short_side, max(short_side, int(short_side * h / w))
    else:
        nw, nh = max(short_side, int(short_side * w / h)), short_side
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    top = int(round((nh - crop) / 2.0))
    left = int(round((nw - crop) / 2.0))
    if (nw, nh) == (crop, crop):
        return img
    return img.crop((left, top, left + crop, top + crop))


def _load_for_memory(path: Path, side: int) -> tuple[np.ndarray | None, bool, str]:
    """Decode one file to a ``side x side`` HWC uint8 array. Returns (array, is_gray, error)."""
    try:
        with Image.open(path) as im:
            # Let JPEG decode at 1/2, 1/4 or 1/8 scale when that still leaves >= side pixels:
            # a large speed-up for big photos; the bicubic resize below does the rest.
            im.draft(None, (side, side))
            im.load()
            gray = im.mode in _GRAY_MODES
            img = im.convert("L" if gray else "RGB")
        img = _resize_center_crop(img, side, side, Image.Resampling.BICUBIC)
        arr = np.array(img, dtype=np.uint8)  # writable copy for torch
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return arr, gray, ""
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return None, False, f"{type(e).__name__}: {e}"


def _bad_files_message(bad: Sequence[tuple[Path, str]], root: Path) -> str:
    shown = "; ".join(f"{p} ({err})" for p, err in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"skipped {len(bad)} unreadable image file(s) under {root}: {shown}{more}. "
        "Delete or re-download them, or pass strict=True (data.strict) to stop on bad files"
    )


def _report_bad_files(bad: Sequence[tuple[Path, str]], root: Path) -> None:
    """One warning for all skipped files, so a dataset with many bad files does not flood logs."""
    msg = _bad_files_message(bad, root)
    warnings.warn(msg, BadImageWarning, stacklevel=4)
    logger.warning(msg)


def _decode_folder(
    files: list[Path],
    labels: torch.Tensor | None,
    classes: list[str] | None,
    name: str,
    root: Path,
    side: int,
    strict: bool,
) -> ArraySource:
    """Decode all files into one uint8 tensor, in parallel threads (PIL releases the GIL)."""
    n = len(files)
    buf = torch.empty((n, 3, side, side), dtype=torch.uint8)
    keep: list[int] = []
    bad: list[tuple[Path, str]] = []
    all_gray = True
    workers = max(1, min(8, os.cpu_count() or 1))
    chunk = 256  # bounded look-ahead: never queue a future per file of a huge folder
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, chunk):
            part = files[start : start + chunk]
            results = pool.map(_load_for_memory, part, [side] * len(part))
            for k, (arr, gray, err) in enumerate(results):
                idx = start + k
                if arr is None:
                    if strict:
                        raise DataError(
                            f"cannot decode image {files[idx]} ({err}); delete or replace the "
                            "file, or set strict=False to skip unreadable images with a warning"
                        )
                    bad.append((files[idx], err))
                    continue
                j = len(keep)
                buf[j] = torch.from_numpy(arr).permute(2, 0, 1)  # broadcasts 1 -> 3 channels
                all_gray = all_gray and gray
                keep.append(idx)
    if bad:
        _report_bad_files(bad, root)
    if not keep:
        first, err = bad[0] if bad else (root, "")
        raise DataError(
            f"none of the {n} image files under {root} could be decoded (first: {first}: {err}); "
            "check that data.path points at the images (JPEG/PNG/BMP/WEBP/TIFF that PIL opens) "
            "and that the files are not truncated or stored as Git LFS pointers"
        )
    images = buf[: len(keep)]
    images = images[:, :1].contiguous() if all_gray else images
    out_labels = labels[torch.tensor(keep, dtype=torch.int64)] if labels is not None else None
    return ArraySource(images=images, labels=out_labels, classes=classes, name=name)


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when it starts with the gzip magic (the name may lie)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"file {path} does not exist; check data.path") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read {path}: {e}; the file is probably truncated or corrupt, re-download it"
        ) from e
    return data


def _parse_idx(data: bytes, path: Path, magic: int, what: str) -> np.ndarray:
    """Parse an IDX buffer with the given magic (uint8 data) into a read-only numpy array."""
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != magic:
        got = f"0x{struct.unpack('>I', data[:4])[0]:08x}" if len(data) >= 4 else "nothing"
        raise DataError(
            f"{path}: expected an IDX file (magic 0x{magic:08x}, {what}) but the file starts with "
            f"{got}; pass the '*-{'images-idx3' if magic == _IDX_IMAGES_MAGIC else 'labels-idx1'}"
            "-ubyte' file, gzipped or not"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: IDX header is truncated ({len(data)} bytes); re-download the file"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
        raise DataError(f"{path}: IDX images have invalid size {dims[1]}x{dims[2]}")
    expected = header + math.prod(dims)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{path}: IDX file is {state}: header declares dims {list(dims)} = {expected} bytes, "
            f"file has {len(data)} bytes; re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _labels_path_for(images: Path) -> Path | None:
    """The labels file next to an images IDX file, gzipped or not, if one exists."""
    name = images.name
    if "images-idx3-ubyte" not in name:
        return None
    stem = name.replace("images-idx3-ubyte", "labels-idx1-ubyte")
    stem = stem[:-3] if stem.endswith(".gz") else stem
    for cand in (stem, stem + ".gz"):
        if (images.parent / cand).is_file():
            return images.parent / cand
    return None


def read_idx(
    path: str | Path,
    labels_path: str | Path | None = None,
    *,
    classes: list[str] | None = None,
    name: str | None = None,
    limit: int = 0,
) -> ArraySource:
    """Read an IDX images file (and its labels file, found automatically) into uint8 [N,1,H,W]."""
    if not str(path):
        raise DataError("idx source: no path given; set data.path to the *-images-idx3-ubyte file")
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(
            f"idx source: {p} is a folder; set data.path to the '*-images-idx3-ubyte[.gz]' file "
            "inside it (or use source=mnist / fashion_mnist for the folder)"
        )
    arr = _parse_idx(_read_bytes(p), p, _IDX_IMAGES_MAGIC, "3-D unsigned-byte images")
    n = arr.shape[0]
    if n == 0:
        raise DataError(f"{p}: IDX file contains no images")
    keep = min(n, limit) if limit else n
    images = torch.from_numpy(arr[:keep, None].copy())
    lp = Path(labels_path) if labels_path is not None else _labels_path_for(p)
    labels = None
    if lp is not None:
        lab = _parse_idx(_read_bytes(lp), lp, _IDX_LABELS_MAGIC, "1-D unsigned-byte labels")
        if lab.shape[0] != n:
            raise DataError(
                f"{lp}: has {lab.shape[0]} labels but {p} has {n} images; the two files do not "
                "belong together"
            )
        labels = torch.from_numpy(lab[:keep].astype(np.int64))
    if classes is None:
        classes = _default_classes(labels)
    return ArraySource(images=images, labels=labels, classes=classes, name=name or f"idx/{p.name}")


def _read_mnist_like(source: str, path: str, split: str, limit: int) -> ArraySource:
    if split not in ("train", "test"):
        raise DataError(f"{source}: split must be 'train' or 'test', got {split!r}")
    if not path and source == "fashion_mnist":
        path = DEFAULT_FASHION_MNIST_PATH
    base = _require_dir(path, f"{source} source")
    prefix = "train" if split == "train" else "t10k"
    # Also accept torchvision's download layout (<root>/FashionMNIST/raw/...).
    tv = "FashionMNIST" if source == "fashion_mnist" else "MNIST"
    for folder in (base, base / "raw", base / tv / "raw"):
        for fn in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz"):
            if (folder / fn).is_file():
                classes = FASHION_MNIST_CLASSES if source == "fashion_mnist" else MNIST_CLASSES
                src = read_idx(
                    folder / fn, classes=list(classes), name=f"{source}/{split}", limit=limit
                )
                if src.labels is None:
                    raise DataError(
                        f"{source}: found {folder / fn} but not its labels file "
                        f"{prefix}-labels-idx1-ubyte[.gz] next to it; download it too"
                    )
                return src
    raise DataError(
        f"{source}: no {prefix}-images-idx3-ubyte[.gz] in {base}; expected the four original "
        "files (train/t10k images-idx3 and labels-idx1, gzipped or not) directly in that folder"
    )


# --------------------------------------------------------------------------------------------
# CIFAR python pickles
# --------------------------------------------------------------------------------------------


def _numpy_attr(module: str, name: str) -> Any:
    """Look up ``name`` in numpy's private core module (``numpy._core`` on 2.x, ``numpy.core`` on 1.x)."""
    import importlib

    for mod in (f"numpy._core.{module}", f"numpy.core.{module}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles of ``bytes``, limited to latin-1."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"forbidden encoding {encoding!r} in pickle")
    return obj.encode("latin1")


_SAFE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = lambda: _numpy_attr(
        "multiarray", "_reconstruct"
    )
    _SAFE_GLOBALS[(f"{_core}.multiarray", "scalar")] = lambda: _numpy_attr("multiarray", "scalar")
    _SAFE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = lambda: _numpy_attr(
        "numeric", "_frombuffer"
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-reconstruction globals.

    A pickle can call any importable function; CIFAR batches need nothing beyond dicts, lists,
    bytes and numpy arrays, so refusing every other global makes a hostile file harmless.
    """

    def find_class(self, module: str, name: str) -> Any:
        getter = _SAFE_GLOBALS.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is forbidden (only numpy arrays are allowed)"
            )
        return getter()


def _load_pickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle safely; dict keys are returned as ``str`` (py2 files store bytes)."""
    if not path.is_file():
        raise DataError(f"CIFAR file {path} does not exist; check data.path")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - unpickling raises arbitrary types on garbage
        raise DataError(
            f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e}); re-download "
            "the 'python version' archive (cifar-10-python.tar.gz / cifar-100-python.tar.gz)"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _as_str(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _cifar_root(path: str, source: str) -> Path:
    base = _require_dir(path, f"{source} source")
    sub, marker = (
        ("cifar-10-batches-py", "batches.meta")
        if source == "cifar10"
        else ("cifar-100-python", "meta")
    )
    if not (base / marker).is_file() and (base / sub).is_dir():
        return base / sub
    return base


def _read_cifar(source: str, path: str, split: str) -> ArraySource:
    if split not in ("train", "test"):
        raise DataError(f"{source}: split must be 'train' or 'test', got {split!r}")
    root = _cifar_root(path, source)
    if source == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_name, names_key = "labels", "batches.meta", "label_names"
    else:
        names = [split]
        label_key, meta_name, names_key = "fine_labels", "meta", "fine_label_names"
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"{source}: {root} lacks {', '.join(missing)}; expected the extracted python archive "
            + (
                "(cifar-10-batches-py with data_batch_1..5, test_batch, batches.meta)"
                if source == "cifar10"
                else "(cifar-100-python with train, test, meta)"
            )
        )
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for n in names:
        p = root / n
        d = _load_pickle(p)
        if "data" not in d or label_key not in d:
            raise DataError(f"{p}: missing key 'data' or '{label_key}' (found {sorted(d)})")
        data = np.asarray(d["data"])
        lab = np.asarray(d[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{p}: 'data' should be uint8 [N, 3072], got {data.dtype} {list(data.shape)}"
            )
        if (
            lab.ndim != 1
            or lab.shape[0] != data.shape[0]
            or not np.issubdtype(lab.dtype, np.integer)
        ):
            raise DataError(
                f"{p}: '{label_key}' should be {data.shape[0]} integers, got {lab.dtype} {list(lab.shape)}"
            )
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        labels.append(lab.astype(np.int64))
    img = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
    lab_t = torch.from_numpy(np.concatenate(labels))
    classes: list[str] | None = None
    if (root / meta_name).is_file():
        meta = _load_pickle(root / meta_name)
        if names_key in meta:
            classes = [_as_str(c) for c in meta[names_key]]
    if classes is None:
        classes = _default_classes(lab_t)
    return ArraySource(images=img, labels=lab_t, classes=classes, name=f"{source}/{split}")


# --------------------------------------------------------------------------------------------
# STL-10 binaries
# --------------------------------------------------------------------------------------------


def _read_stl_images(path: Path, limit: int) -> torch.Tensor:
    """Read ``*_X.bin``: N images of 3 planes of 96x96 stored column-major -> uint8 [N,3,96,96]."""
    if not path.is_file():
        raise DataError(f"stl10: {path} does not exist; expected the extracted stl10_binary folder")
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        raise DataError(
            f"{path}: size {size} bytes is not a positive multiple of {_STL_IMAGE_BYTES} "
            "(3x96x96); the file is truncated or not an STL-10 binary, re-download it"
        )
    n = size // _STL_IMAGE_BYTES
    n = min(n, limit) if limit else n
    # memmap + one transposing copy: the unlabeled split is 2.7 GB, avoid holding it twice.
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, _STL_SIDE, _STL_SIDE))
    arr = np.ascontiguousarray(mm.transpose(0, 1, 3, 2))
    del mm
    return torch.from_numpy(arr)


def _read_stl_labels(path: Path, n: int, limit: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError(f"stl10: labels file {path} does not exist")
    lab = np.fromfile(path, dtype=np.uint8)
    if lab.shape[0] != n:
        raise DataError(f"{path}: has {lab.shape[0]} labels but the images file has {n} images")
    if n and (lab.min() < 1 or lab.max() > 10):
        raise DataError(f"{path}: STL-10 labels must be 1..10, found {lab.min()}..{lab.max()}")
    lab = lab[:limit] if limit else lab
    return torch.from_numpy(lab.astype(np.int64) - 1)


def _read_stl10(path: str, split: str, limit: int) -> ArraySource:
    splits = ("train", "test", "unlabeled", "train+unlabeled")
    if split not in splits:
        raise DataError(f"stl10: split must be one of {', '.join(splits)}, got {split!r}")
    base = _require_dir(path, "stl10 source")
    root = base / "stl10_binary" if (base / "stl10_binary").is_dir() else base
    classes = list(STL10_CLASSES)
    names_file = root / "class_names.txt"
    if names_file.is_file():
        read = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        classes = read or classes
    name = f"stl10/{split}"
    if split in ("train", "test"):
        xp = root / f"{split}_X.bin"
        images = _read_stl_images(xp, limit)
        total = xp.stat().st_size // _STL_IMAGE_BYTES
        labels = _read_stl_labels(root / f"{split}_y.bin", total, limit)
        return ArraySource(images=images, labels=labels, classes=classes, name=name)
    if split == "unlabeled":
        return ArraySource(_read_stl_images(root / "unlabeled_X.bin", limit), None, classes, name)
    train = _read_stl_images(root / "train_X.bin", limit)
    rest = limit - len(train) if limit else 0
    if limit and rest <= 0:
        return ArraySource(train, None, classes, name)
    unl = _read_stl_images(root / "unlabeled_X.bin", rest)
    return ArraySource(torch.cat([train, unl]), None, classes, name)


# --------------------------------------------------------------------------------------------
# NumPy arrays
# --------------------------------------------------------------------------------------------

_NUMPY_ACCEPTED = (
    "accepted: uint8 arrays shaped [N,H,W] (grayscale), [N,H,W,C] or [N,C,H,W] with C in {1,3}, "
    "or float arrays of those shapes with values in [0, 1]"
)


def images_from_numpy(arr: np.ndarray, where: str) -> torch.Tensor:
    """Convert a user's image array to uint8 [N, C, H, W], or raise a DataError naming ``where``."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] in (1, 3) and arr.shape[3] not in (1, 3):
            pass  # NCHW
        elif arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        else:
            raise DataError(
                f"{where}: cannot find a channel axis of size 1 or 3 in shape {list(arr.shape)}; "
                + _NUMPY_ACCEPTED
            )
    else:
        raise DataError(f"{where}: images have shape {list(arr.shape)}; " + _NUMPY_ACCEPTED)
    if arr.shape[0] == 0:
        raise DataError(f"{where}: the image array is empty")
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{where}: float images must lie in [0, 1], found values in [{lo}, {hi}]; "
                + _NUMPY_ACCEPTED
            )
        out = np.rint(arr.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise DataError(f"{where}: images have dtype {arr.dtype}; " + _NUMPY_ACCEPTED)
    return torch.from_numpy(np.ascontiguousarray(out))


def _read_numpy(path: str) -> ArraySource:
    if not path:
        raise DataError("numpy source: no path given; set data.path to a .npz or .npy file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"numpy source: file {p} does not exist; check data.path")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises several types on corrupt files
        raise DataError(
            f"{p}: cannot load as .npy/.npz without pickle ({type(e).__name__}: {e}); save it "
            "with np.savez(path, images=..., labels=...)"
        ) from e
    classes: list[str] | None = None
    if isinstance(loaded, np.ndarray):
        images_np, labels_np = loaded, None
    else:
        with loaded:
            keys = set(loaded.files)
            if "images" in keys:
                images_np = loaded["images"]
                labels_np = loaded["labels"] if "labels" in keys else None
            elif "x" in keys:
                images_np = loaded["x"]
                labels_np = loaded["y"] if "y" in keys else None
            else:
                raise DataError(
                    f"{p}: found arrays {sorted(keys)}; expected 'images' (and optional 'labels') "
                    "or 'x' (and optional 'y')"
                )
            if "classes" in keys:
                classes = [str(c) for c in loaded["classes"].tolist()]
    images = images_from_numpy(images_np, str(p))
    labels = None
    if labels_np is not None:
        if not np.issubdtype(labels_np.dtype, np.integer):
            raise DataError(f"{p}: labels must be integers, got dtype {labels_np.dtype}")
        labels = _check_labels(
            torch.from_numpy(labels_np.reshape(-1).astype(np.int64)), len(images), str(p)
        )
        if classes is None:
            classes = _default_classes(labels)
    return ArraySource(images=images, labels=labels, classes=classes, name=f"numpy/{p.stem}")


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------

_SYN_BLOCK = 64  # images per generator block of the synthetic source

# Ten well-separated colours (RGB); classes 0-4 are discs and 5-9 squares, so both colour and
# shape carry the label and a network can learn it even under BYOL's colour jitter.
_SYN_COLOURS = torch.tensor(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [250, 250, 250],
        [128, 128, 0],
    ],
    dtype=torch.float32,
)


def make_synthetic(n: int, side: int, *, seed: int = 0, split: str = "train") -> ArraySource:
    """``n`` RGB images of class-dependent coloured blobs on noise, deterministic in ``seed``.

    For tests and benchmarks without a dataset on disk. The split name is mixed into the seed so
    ``train`` and ``test`` differ but are each reproducible. Images are generated in blocks of
    :data:`_SYN_BLOCK`, each from its own generator, so image ``i`` depends only on
    ``(seed, split, i)``: ``limit`` then really keeps the first samples of the full set.
    """
    if n <= 0 or side <= 0:
        raise DataError(f"synthetic source: need positive size and side, got {n} and {side}")
    base = seed * 1_000_003 + zlib.crc32(split.encode())
    labels = torch.empty((n,), dtype=torch.int64)
    images = torch.empty((n, 3, side, side), dtype=torch.uint8)
    coords = torch.arange(side, dtype=torch.float32)
    yy, xx = coords[:, None], coords[None, :]
    b = _SYN_BLOCK
    for block, start in enumerate(range(0, n, b)):  # blocks also bound the float temporaries
        g = torch.Generator().manual_seed((base * 65_537 + block) % 2**63)
        m = min(b, n - start)
        lab = torch.randint(0, 10, (b,), generator=g)[:m]
        noise = (torch.rand((b, 3, side, side), generator=g)[:m] * 110.0 + 20.0).round()
        radius = (torch.rand((b,), generator=g)[:m] * 0.15 + 0.15) * side
        cy = radius + torch.rand((b,), generator=g)[:m] * (side - 2 * radius)
        cx = radius + torch.rand((b,), generator=g)[:m] * (side - 2 * radius)
        jitter = torch.rand((b, 1, 1, 1), generator=g)[:m] * 0.3 + 0.85  # brightness variation
        dy = (yy[None] - cy[:, None, None]).abs()
        dx = (xx[None] - cx[:, None, None]).abs()
        r = radius[:, None, None]
        disc = dy.square() + dx.square() <= r.square()
        square = torch.maximum(dy, dx) <= r
        mask = torch.where((lab >= 5)[:, None, None], square, disc)[:, None]
        fg = (_SYN_COLOURS[lab][:, :, None, None] * jitter).round().clamp(0, 255)
        images[start : start + m] = torch.where(mask, fg, noise).to(torch.uint8)
        labels[start : start + m] = lab
    return ArraySource(
        images=images,
        labels=labels,
        classes=[f"class{i}" for i in range(10)],
        name=f"synthetic/{split}",
    )


# --------------------------------------------------------------------------------------------
# Lazily decoded datasets for FileSource
# --------------------------------------------------------------------------------------------


def _rrc_params(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """Random-resized-crop box (top, left, h, w) with torchvision's ``get_params`` semantics."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            return top, left, h, w
    # Fallback: the whole image, center-cropped to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [C, H, W] (contiguous, owns its memory)."""
    t = torch.from_numpy(np.array(img, dtype=np.uint8))  # np.array: writable copy for torch
    if t.dim() == 2:
        return t.unsqueeze(0)
    return t.permute(2, 0, 1).contiguous()


class _FileDatasetBase(torch.utils.data.Dataset):
    """Shared decode-with-fallback logic: a bad file must not kill a multi-hour epoch."""

    def __init__(
        self, src: FileSource, out_size: int, interpolation: str, strict: bool, in_chans: int
    ) -> None:
        if len(src) == 0:
            raise DataError(f"{src.name}: the file list is empty")
        if out_size <= 0:
            raise DataError(f"out_size must be positive, got {out_size}")
        if interpolation not in _PIL_RESAMPLE:
            raise DataError(
                f"interpolation must be one of {', '.join(_PIL_RESAMPLE)}, got {interpolation!r}"
            )
        if in_chans not in (1, 3):
            raise DataError(f"in_chans must be 1 or 3, got {in_chans}")
        self.src = src
        self.out_size = int(out_size)
        self.resample = _PIL_RESAMPLE[interpolation]
        self.strict = strict
        self.mode = "RGB" if in_chans == 3 else "L"
        self._bad: set[int] = set()  # per worker process: warn once per file

    def __len__(self) -> int:
        return len(self.src)

    def _label(self, i: int) -> int:
        return int(self.src.labels[i]) if self.src.labels is not None else -1

    def _decode(self, i: int) -> tuple[Image.Image, int]:
        """Decode file ``i``, or the next decodable one; returns (image, index used)."""
        n = len(self.src)
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            path = self.src.files[j]
            try:
                return decode_image(path, self.mode), j
            except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
                if self.strict:
                    raise DataError(
                        f"cannot decode image {path} ({type(e).__name__}: {e}); delete or "
                        "replace it, or set strict=False to skip unreadable images"
                    ) from e
                self._bad.add(j)
                logger.warning(
                    "skipping unreadable image %s (%s: %s); using the next file instead",
                    path,
                    type(e).__name__,
                    e,
                )
        raise DataError(
            f"{self.src.name}: none of the {n} image files could be decoded (see the warnings "
            "above for each file); check that data.path points at the images (JPEG/PNG/BMP/WEBP/"
            "TIFF that PIL opens) and that the files are not truncated or Git LFS pointers"
        )


class FolderViewsDataset(_FileDatasetBase):
    """Decodes a file and returns two independently random-resized-cropped (+ horizontally flipped)
    uint8 views of size out_size, i.e. only the GEOMETRIC part of BYOL's augmentation; colour ops
    happen later on the device.

    Doing only crop/flip in the workers keeps CPU cost per image low (the expensive colour jitter,
    blur and solarize run batched on the accelerator) and ships small fixed-size uint8 tensors.
    Randomness comes from torch's generator, which ``DataLoader`` seeds differently per worker.
    """

    def __init__(
        self,
        src: FileSource,
        out_size: int,
        crop_scale: tuple[tuple[float, float], tuple[float, float]] = ((0.08, 1.0), (0.08, 1.0)),
        crop_ratio: tuple[tuple[float, float], tuple[float, float]] = (
            (3 / 4, 4 / 3),
            (3 / 4, 4 / 3),
        ),
        flip_p: tuple[float, float] = (0.5, 0.5),
        interpolation: str = "bicubic",
        strict: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__(src, out_size, interpolation, strict, in_chans)
        self.crop_scale = tuple(tuple(float(v) for v in s) for s in crop_scale)
        self.crop_ratio = tuple(tuple(float(v) for v in r) for r in crop_ratio)
        self.flip_p = tuple(float(p) for p in flip_p)
        for s, r in zip(self.crop_scale, self.crop_ratio):
            if not (0 < s[0] <= s[1] <= 1) or not (0 < r[0] <= r[1]):
                raise DataError(f"invalid crop_scale {s} or crop_ratio {r}")

    def _view(self, img: Image.Image, v: int) -> torch.Tensor:
        top, left, h, w = _rrc_params(img.width, img.height, self.crop_scale[v], self.crop_ratio[v])
        s = self.out_size
        # resize(box=...) crops and resamples in one pass (no intermediate crop copy).
        out = img.resize((s, s), self.resample, box=(left, top, left + w, top + h))
        if torch.rand(1).item() < self.flip_p[v]:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(out)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img, j = self._decode(int(i))
        return self._view(img, 0), self._view(img, 1), self._label(j)


class FolderEvalDataset(_FileDatasetBase):
    """resize short side to round(out_size*256/224) then center crop out_size -> uint8 [C,S,S], label.

    The standard ImageNet evaluation crop (256 -> 224), scaled to other sizes.
    """

    def __init__(
        self,
        src: FileSource,
        out_size: int,
        interpolation: str = "bicubic",
        strict: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__(src, out_size, interpolation, strict, in_chans)
        self.resize_to = int(round(self.out_size * 256 / 224))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, j = self._decode(int(i))
        img = _resize_center_crop(img, self.resize_to, self.out_size, self.resample)
        return _to_tensor(img), self._label(j)
