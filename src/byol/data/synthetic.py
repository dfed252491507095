"""The synthetic source: seeded coloured discs and squares, ten classes, any size."""

from __future__ import annotations

import zlib

import torch

from ..errors import DataError
from .base import ArraySource

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
