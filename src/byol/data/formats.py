"""Readers of the binary dataset formats: IDX (MNIST / Fashion-MNIST), CIFAR python pickles
(through a restricted unpickler, so a hostile file cannot run code), STL-10 binaries and NumPy
arrays.

They parse the raw files themselves rather than depending on ``torchvision.datasets``, so that
a malformed file produces a :class:`~byol.errors.DataError` that names the file, says what is
wrong and how to fix it, instead of a reshape error deep inside a third-party class.
"""

from __future__ import annotations

import codecs
import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import ArraySource, check_labels, default_classes, require_dir

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


_IDX_IMAGES_MAGIC = 0x00000803  # type byte 0x08 (unsigned byte), 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # type byte 0x08 (unsigned byte), 1 dimension
_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE  # 27648


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
        classes = default_classes(labels)
    return ArraySource(images=images, labels=labels, classes=classes, name=name or f"idx/{p.name}")


def read_mnist_like(source: str, path: str, split: str, limit: int) -> ArraySource:
    if split not in ("train", "test"):
        raise DataError(f"{source}: split must be 'train' or 'test', got {split!r}")
    if not path and source == "fashion_mnist":
        path = DEFAULT_FASHION_MNIST_PATH
    base = require_dir(path, f"{source} source")
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
    base = require_dir(path, f"{source} source")
    sub, marker = (
        ("cifar-10-batches-py", "batches.meta")
        if source == "cifar10"
        else ("cifar-100-python", "meta")
    )
    if not (base / marker).is_file() and (base / sub).is_dir():
        return base / sub
    return base


def read_cifar(source: str, path: str, split: str) -> ArraySource:
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
        classes = default_classes(lab_t)
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


def read_stl10(path: str, split: str, limit: int) -> ArraySource:
    splits = ("train", "test", "unlabeled", "train+unlabeled")
    if split not in splits:
        raise DataError(f"stl10: split must be one of {', '.join(splits)}, got {split!r}")
    base = require_dir(path, "stl10 source")
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


def _stored_dtype(p: Path, member: str) -> np.dtype | None:
    """The dtype written in the header of ``p`` (a .npy) or of its ``member`` (an .npz), read
    without loading the data; None when the header itself is unreadable."""
    import zipfile

    def header(f) -> np.dtype:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        return read(f)[2]

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z, z.open(f"{member}.npy") as f:
                return header(f)
        with open(p, "rb") as f:
            return header(f)
    except Exception:  # noqa: BLE001 - a damaged header: the caller reports the file as corrupt
        return None


def read_numpy(path: str) -> ArraySource:
    if not path:
        raise DataError("numpy source: no path given; set data.path to a .npz or .npy file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"numpy source: file {p} does not exist; check data.path")
    classes: list[str] | None = None
    member = ""
    try:  # every read, not only the open: an .npz reads its arrays lazily
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            images_np, labels_np = loaded, None
        else:
            with loaded:
                keys = set(loaded.files)
                if "images" in keys:
                    names = ("images", "labels")
                elif "x" in keys:
                    names = ("x", "y")
                else:
                    raise DataError(
                        f"{p}: found arrays {sorted(keys)}; expected 'images' (and optional "
                        "'labels') or 'x' (and optional 'y')"
                    )
                member = names[0]
                images_np = loaded[names[0]]
                member = names[1]
                labels_np = loaded[names[1]] if names[1] in keys else None
                if "classes" in keys:
                    member = "classes"
                    classes = [str(c) for c in loaded["classes"].tolist()]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/zipfile raise several types on bad files
        what = f"its array '{member}'" if member else "it"
        dtype = _stored_dtype(p, member)
        with open(p, "rb") as f:
            head = f.read(6)
        if dtype is not None and dtype.hasobject:
            why = ("it holds Python objects (dtype=object), which only unpickling can read, and "
                   "byol does not unpickle data files")
        elif not head:
            why = "the file is empty (0 bytes)"
        elif not head.startswith((b"\x93NUMPY", b"PK")):
            why = "it is not a NumPy .npy/.npz file"
        else:
            why = (f"the file is corrupt (truncated or damaged: {type(e).__name__}: "
                   f"{' '.join(str(e).split())[:120]})")
        raise DataError(
            f"{p}: cannot load {what}: {why}; save plain arrays with "
            "np.savez(path, images=uint8 array, labels=int array)"
        ) from None
    images = images_from_numpy(images_np, str(p))
    labels = None
    if labels_np is not None:
        if not np.issubdtype(labels_np.dtype, np.integer):
            raise DataError(f"{p}: labels must be integers, got dtype {labels_np.dtype}")
        labels = check_labels(
            torch.from_numpy(labels_np.reshape(-1).astype(np.int64)), len(images), str(p)
        )
        if classes is None:
            classes = default_classes(labels)
    return ArraySource(images=images, labels=labels, classes=classes, name=f"numpy/{p.stem}")
