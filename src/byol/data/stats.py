"""Normalisation statistics computed from the data: per-channel mean and std in [0, 1].

:func:`image_stats` reads a bounded, seeded sample of a source (every image of a small one), so
a large folder costs a few thousand decodes, not a pass over all of it.
"""

from __future__ import annotations

import torch

from ..errors import DataError
from .base import ArraySource, FileSource

DEFAULT_SAMPLE = 2000


def image_stats(src: ArraySource | FileSource, *, max_images: int = DEFAULT_SAMPLE,
                side: int = 64, seed: int = 0, channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(mean per channel, std per channel, images used) over a sample of ``src``.

    In-memory images are used as stored; files are decoded and center-cropped at ``side``
    pixels (statistics barely depend on the resolution) with ``channels`` channels (None: those
    of the first sampled file). Values are rounded to 4 decimals.
    """
    n = len(src)
    if n == 0:
        raise DataError(f"{src.name}: no images to compute statistics from")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:max_images].sort().values if n > max_images \
        else torch.arange(n)
    total = sq = None
    count = 0
    for batch in _batches(src, idx, side, channels):
        x = batch.to(torch.float64) / 255.0  # [b, C, H, W]
        s = x.sum(dim=(0, 2, 3))
        q = x.square().sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean.square()).clamp_min(1e-12).sqrt()
    # a constant image set has std 0: keep a usable floor so normalisation stays finite
    std = std.clamp_min(1e-3)
    return (tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std),
            len(idx))


def _batches(src: ArraySource | FileSource, idx: torch.Tensor, side: int, channels: int | None,
             batch: int = 256):
    if isinstance(src, ArraySource):
        for start in range(0, len(idx), batch):
            yield src.images[idx[start : start + batch]]
        return
    from .folders import FolderEvalDataset, decode_image

    chans = channels or (1 if decode_image(src.files[int(idx[0])]).mode == "L" else 3)
    ds = FolderEvalDataset(src, side, interpolation="bilinear", in_chans=chans)
    for start in range(0, len(idx), batch):
        yield torch.stack([ds[int(i)][0] for i in idx[start : start + batch]])
