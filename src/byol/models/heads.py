"""Projector and predictor: BYOL's two-layer MLPs (paper, section 3.3)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Linear(in -> hidden, bias) -> BatchNorm1d -> ReLU -> Linear(hidden -> out, no bias).

    No BatchNorm after the output layer: the paper's projector and predictor end linearly.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )
