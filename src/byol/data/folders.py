"""Image folders: scanning (ImageNet or class-per-folder layout), decoding into memory, and
the lazily decoded datasets DataLoader workers run over a :class:`~byol.data.base.FileSource`.

The pretraining views' crops are drawn by :func:`byol.augment.crop_boxes`, the same rule the
in-memory path applies on the device.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..augment import crop_boxes
from ..config import ViewConfig
from ..errors import DataError
from .base import ArraySource, BadImageWarning, FileSource, require_dir

#: File extensions (lower case) recognised as images by the folder sources.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
)


_FOLDER_LAYOUT = (
    "expected either <path>/<split>/<class>/<image> (ImageNet layout) or "
    "<path>/<class>/<image>, with images ending in " + ", ".join(sorted(IMAGE_EXTENSIONS))
)

logger = logging.getLogger("byol.data")


_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# PIL modes whose pixels carry no colour: a folder made only of these is kept single-channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


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




#: Folder names read as splits (``<path>/<split>/<class>/<image>``); a folder without any of
#: them is one set of images, and these names are then its only valid split names (roles).
SPLIT_FOLDERS: tuple[str, ...] = ("train", "val", "validation", "test")


def split_folders(base: Path) -> list[str]:
    """The split folders (:data:`SPLIT_FOLDERS`) directly under ``base``, in that order."""
    return [s for s in SPLIT_FOLDERS if (base / s).is_dir()]


def scan_labeled_folder(path: str, split: str, option: str = "data.split"
                        ) -> tuple[list[Path], torch.Tensor, list[str], Path]:
    """Find ``<root>/<class>/**/<image>`` files, where root is ``path/split`` if it exists.

    ``option``: the setting or flag that chose ``split``, named in the errors."""
    base = require_dir(path, "folder source")
    root = base / split if split and (base / split).is_dir() else base
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if root == base:
        splits = split_folders(base)
        if splits:
            raise DataError(
                f"folder source: split folder {base / split} does not exist, but {base} has split "
                f"folders {splits}; set {option} to one of them"
            )
        if split and split not in SPLIT_FOLDERS:
            raise DataError(
                f"folder source: {base} has no split folders ({', '.join(SPLIT_FOLDERS)}), so "
                f"{option} {split!r} names no split; the folder is one set of images: name a "
                "separate test set with --test-data PATH (or data.val_path)"
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


def scan_unlabeled_folder(path: str) -> tuple[list[Path], None, None, Path]:
    root = require_dir(path, "unlabeled_folder source")
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


def decode_folder(
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
# Lazily decoded datasets for FileSource
# --------------------------------------------------------------------------------------------




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
        views: Sequence[ViewConfig] = (ViewConfig(), ViewConfig()),
        interpolation: str = "bicubic",
        strict: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__(src, out_size, interpolation, strict, in_chans)
        self.views = tuple(views)  # validated with the config (augment.viewN.crop_*)

    def _view(self, img: Image.Image, v: int) -> torch.Tensor:
        view = self.views[v]
        box = crop_boxes(1, img.height, img.width, view.crop_scale, view.crop_ratio)[0]
        left, top, w, h = (int(c) for c in box.tolist())
        s = self.out_size
        # resize(box=...) crops and resamples in one pass (no intermediate crop copy).
        out = img.resize((s, s), self.resample, box=(left, top, left + w, top + h))
        if torch.rand(1).item() < view.flip_p:
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
