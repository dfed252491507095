"""The two shapes of data every reader returns, so the training loop needs two code paths only.

* :class:`ArraySource` -- the whole split decoded into one ``uint8 [N, C, H, W]`` tensor. Small and
  medium datasets (MNIST, CIFAR, STL-10, a folder that fits in ``max_memory_gb``) take this path,
  because augmenting on the device from memory is far faster than decoding files every epoch.
* :class:`FileSource` -- a sorted list of image files, decoded on the fly by
  :class:`~byol.data.folders.FolderViewsDataset` / :class:`~byol.data.folders.FolderEvalDataset`
  inside ``DataLoader`` workers. Large folders (ImageNet) take this path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import CHOICES
from ..errors import DataError

#: Values accepted by ``open_source(source=...)`` (the config's ``data.source`` choices).
SOURCES: tuple[str, ...] = CHOICES["data.source"]


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
            self.labels = check_labels(self.labels, len(img), self.name)

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
            self.labels = check_labels(self.labels, len(self.files), self.name)

    def __len__(self) -> int:
        return len(self.files)


def check_labels(labels: Any, n: int, name: str) -> torch.Tensor:
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


def limit_samples(src: ArraySource, limit: int) -> ArraySource:
    """Keep the first ``limit`` samples (cloned, so the full tensor can be freed)."""
    if not limit or limit >= len(src):
        return src
    labels = src.labels[:limit].clone() if src.labels is not None else None
    return ArraySource(src.images[:limit].clone(), labels, src.classes, src.name)


def default_classes(labels: torch.Tensor | None) -> list[str] | None:
    """Class names "0".."K-1" for formats that store no names."""
    if labels is None or labels.numel() == 0:
        return None
    return [str(i) for i in range(int(labels.max()) + 1)]


def same_images(a: Any, b: Any) -> bool:
    """True when two opened splits hold the same images (e.g. one ``.npz`` named for both, or
    a folder without split folders opened as ``train`` and as ``test``)."""
    if len(a) != len(b):
        return False
    if hasattr(a, "images") and hasattr(b, "images"):
        k = min(len(a), 64)
        return a.images.shape == b.images.shape and torch.equal(a.images[:k], b.images[:k])
    if hasattr(a, "files") and hasattr(b, "files"):
        return a.files == b.files
    return False


def subset(src: ArraySource | FileSource, idx: torch.Tensor, what: str) -> ArraySource | FileSource:
    """The samples ``idx`` of an in-memory or file source, as a source of the same kind."""
    labels = src.labels[idx] if src.labels is not None else None
    name = f"{src.name} ({what}: {len(idx)} of {len(src)})"
    if isinstance(src, ArraySource):
        return ArraySource(src.images[idx], labels, src.classes, name)
    return FileSource([src.files[i] for i in idx.tolist()], labels, src.classes, name)


def require_dir(path: str, what: str) -> Path:
    if not path:
        raise DataError(f"{what}: no path given; set data.path to the dataset folder")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what}: folder {p} does not exist; check data.path")
    if not p.is_dir():
        raise DataError(f"{what}: {p} is a file, expected a folder; check data.path")
    return p

