"""Data loading for BYOL: readers that turn datasets on disk into tensors or lazy file lists.

Re-exports the public names of :mod:`byol.data.sources` so callers can write
``from byol.data import open_source``.
"""

from byol.data.sources import (
    IMAGE_EXTENSIONS,
    SOURCES,
    ArraySource,
    BadImageWarning,
    DataError,
    FileSource,
    FolderEvalDataset,
    FolderViewsDataset,
    decode_image,
    images_from_numpy,
    list_image_files,
    make_synthetic,
    open_source,
    read_idx,
)

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
