"""``open_source``: which reader opens which ``data.source``.

Readers live by concern: :mod:`.folders` (image folders), :mod:`.formats` (IDX, CIFAR, STL-10,
NumPy), :mod:`.synthetic`; all return a :mod:`.base` source.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SOURCES, ArraySource, FileSource, limit_samples
from .folders import SPLIT_FOLDERS, decode_folder, scan_labeled_folder, scan_unlabeled_folder
from .formats import read_cifar, read_idx, read_mnist_like, read_numpy, read_stl10
from .synthetic import make_synthetic

# --------------------------------------------------------------------------------------------
# Split names
# --------------------------------------------------------------------------------------------

#: The splits of the readers whose files fix them; ``folder`` has its split folders, and the
#: one-set readers (:data:`ONE_SET`) accept only the role names of :data:`SPLIT_FOLDERS`.
FIXED_SPLITS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("train", "test"),
    "mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "synthetic": ("train", "test", "val"),
}
#: Readers of one set of images with no splits: a test set is a separate file or folder.
ONE_SET: tuple[str, ...] = ("numpy", "idx", "unlabeled_folder")


def check_split(source: str, split: str, option: str = "data.split") -> None:
    """Raise a :class:`DataError` naming ``option`` when ``source`` has no split ``split``.

    One-set readers accept the role names (``train``, ``val``, ``validation``, ``test``): every
    role opens the same images, which evaluations and the kNN monitor then detect."""
    if source in FIXED_SPLITS and split not in FIXED_SPLITS[source]:
        raise DataError(f"{source} has no split {split!r}; its splits are "
                        f"{', '.join(FIXED_SPLITS[source])}: set {option} to one of them")
    if source in ONE_SET and split not in SPLIT_FOLDERS:
        raise DataError(f"{source} source: a {'folder' if 'folder' in source else 'file'} is one "
                        f"set of images without splits, so {option} {split!r} names no split; "
                        "name a separate test set with --test-data PATH (or data.val_path)")


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
    split_option: str = "data.split",
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
        split_option: the setting or flag that chose ``split`` (``data.split``,
            ``--test-split``, ...), named in the error when the split does not exist.
    """
    if limit < 0:
        raise DataError(f"limit must be >= 0 (0 keeps everything), got {limit}")
    check_split(source, split, split_option)
    if source in ("folder", "unlabeled_folder"):
        side = load_size or image_size
        if side <= 0:
            raise DataError(f"image_size/load_size must be positive, got {side}")
        files, labels, classes, root = (
            scan_labeled_folder(path, split, split_option)
            if source == "folder"
            else scan_unlabeled_folder(path)
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
        return decode_folder(files, labels, classes, name, root, side, strict)
    if source == "idx":
        src = read_idx(path, limit=limit)
    elif source in ("fashion_mnist", "mnist"):
        src = read_mnist_like(source, path, split, limit)
    elif source in ("cifar10", "cifar100"):
        src = read_cifar(source, path, split)
    elif source == "stl10":
        src = read_stl10(path, split, limit)
    elif source == "numpy":
        src = read_numpy(path)
    elif source == "synthetic":
        n = min(synthetic_size, limit) if limit else synthetic_size
        return make_synthetic(n, image_size, seed=seed, split=split)
    else:
        raise DataError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
    return limit_samples(src, limit)
