"""Data loading for BYOL: readers that turn datasets on disk into tensors or lazy file lists.

:mod:`.base` (the two source types), :mod:`.folders`, :mod:`.formats`, :mod:`.synthetic` and
:mod:`.sources` (``open_source``, which reader for which source); the public names are
re-exported here so callers can write ``from byol.data import open_source``. The pretraining
feeders (:mod:`.feeders`) are imported from their module by the engine and the kNN monitor.
"""

from ..errors import DataError
from .base import SOURCES, ArraySource, BadImageWarning, FileSource, same_images
from .folders import (
    IMAGE_EXTENSIONS,
    FolderEvalDataset,
    FolderViewsDataset,
    decode_image,
    list_image_files,
)
from .formats import images_from_numpy, read_idx
from .sources import check_split, open_source
from .synthetic import make_synthetic

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
    "check_split",
    "list_image_files",
    "make_synthetic",
    "open_source",
    "read_idx",
    "same_images",
]
