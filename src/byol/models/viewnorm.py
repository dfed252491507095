"""BatchNorm that normalises each augmented view with its own statistics.

Feeding both views through a network in one batch is faster than two forwards (one launch per
layer instead of two), but a plain BatchNorm would then mix the statistics of the two views,
which the paper's separate forwards never do and which changes what BYOL learns. The classes
here behave exactly like separate forwards: the batch is cut into ``views`` equal chunks and
each chunk is normalised (and updates the running statistics) on its own, in order.

They are swapped in by changing ``__class__`` so parameters, buffers and state-dict keys stay
those of ``nn.BatchNorm*``/``nn.SyncBatchNorm``: exported weights need no renaming.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _ViewSplit:
    views: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.views == 1 or not self.training:
            return super().forward(x)  # type: ignore[misc]
        return torch.cat([super(_ViewSplit, self).forward(c) for c in x.chunk(self.views)])


class ViewBatchNorm1d(_ViewSplit, nn.BatchNorm1d):
    pass


class ViewBatchNorm2d(_ViewSplit, nn.BatchNorm2d):
    pass


class ViewSyncBatchNorm(_ViewSplit, nn.SyncBatchNorm):
    pass


_SWAP = {
    nn.BatchNorm1d: ViewBatchNorm1d,
    nn.BatchNorm2d: ViewBatchNorm2d,
    nn.SyncBatchNorm: ViewSyncBatchNorm,
}


def make_view_split(module: nn.Module) -> list[nn.Module]:
    """Turn every BatchNorm in ``module`` into its view-splitting twin (in place); return them."""
    swapped = []
    for m in module.modules():
        cls = _SWAP.get(type(m))
        if cls is not None:
            m.__class__ = cls
        if isinstance(m, _ViewSplit):
            swapped.append(m)
    return swapped


@contextlib.contextmanager
def split_views(norms: list[nn.Module], views: int) -> Iterator[None]:
    """Within the block, each listed norm layer normalises ``views`` batch chunks separately."""
    for m in norms:
        m.views = views
    try:
        yield
    finally:
        for m in norms:
            m.views = 1
