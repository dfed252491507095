"""Whitening of the pooled features, fitted once on training images (``model.feature_whiten``).

BYOL's pooled features concentrate their variance in a few directions: a cosine similarity
between two images is then mostly the agreement of those few, and the many weaker directions
that also separate classes are drowned. ZCA whitening with shrinkage rescales every direction
of the features' covariance to comparable variance (directions far below the largest are damped
by the shrinkage instead of blown up), the standard post-processing of retrieval descriptors.
It is fitted after pretraining on the features of clean training images (no labels), and is a
fixed linear map afterwards: a linear probe on top can absorb it, a cosine kNN reads it.
"""

from __future__ import annotations

import torch
from torch import nn

# model.feature_whiten fits on this many clean training images, all of them when the set is
# smaller (a 512-feature covariance needs a few thousand; more costs forward passes)
WHITEN_IMAGES = 10_000


class FeatureWhitening(nn.Module):
    """``(x - mean) @ matrix`` in fp32 once fitted, the identity before.

    Args:
        dim: feature dimension.
        shrink: the shrinkage, as a fraction of the covariance's largest eigenvalue added to
            every eigenvalue before the inverse square root.
    """

    def __init__(self, dim: int, shrink: float = 0.01) -> None:
        super().__init__()
        if shrink <= 0:
            raise ValueError(f"shrink={shrink}: must be > 0 (a fraction of the largest eigenvalue)")
        self.register_buffer("shrink", torch.tensor(float(shrink), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))
        # how many images it was fitted on (0: not fitted, the identity)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))
        # the same on the host, so that a forward never waits for the device to read it
        self.is_fitted = False
        self.register_load_state_dict_post_hook(_refresh_fitted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_fitted:
            return x
        with torch.autocast(x.device.type, enabled=False):  # bf16 would undo the small directions
            return (x.float() - self.mean) @ self.matrix

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Fit on ``features`` [N, dim] (the pooled features before this layer)."""
        if features.dim() != 2 or features.shape[1] != self.mean.numel():
            raise ValueError(f"features of shape {tuple(features.shape)}: expected [N, "
                             f"{self.mean.numel()}]")
        if len(features) < 2:
            raise ValueError(f"{len(features)} images cannot fit a whitening: give at least 2")
        f = features.double()
        mu = f.mean(0)
        c = f - mu
        cov = c.T @ c / (len(f) - 1)
        ev, vec = torch.linalg.eigh(cov)
        ev = ev.clamp_min(0)
        eps = float(self.shrink) * float(ev.max()) + 1e-12
        w = vec @ torch.diag((ev + eps).rsqrt()) @ vec.T
        self.mean.copy_(mu.to(self.mean))
        self.matrix.copy_(w.to(self.matrix))
        self.fitted.fill_(len(f))
        self.is_fitted = True


def _refresh_fitted(module: FeatureWhitening, _incompatible) -> None:
    module.is_fitted = bool(int(module.fitted))


@torch.no_grad()
def fit_feature_whitening(backbone: nn.Module, source, *, images: int, seed: int, image_size: int,
                          mean, std, device: torch.device) -> int:
    """Fit ``backbone.feat_whiten`` on the pooled features (before it) of ``images`` training
    images of ``source`` drawn with ``seed``, through the evaluation transform. Returns the
    count used. The backbone's train/eval mode is kept."""
    from ..data.base import subset
    from ..eval.features import extract_features

    layer = backbone.feat_whiten
    n = min(images, len(source))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(source), generator=g)[:n].sort().values
    was_fitted, was_training = layer.is_fitted, backbone.training
    layer.is_fitted = False  # the features before the whitening
    try:
        feats = extract_features(backbone, subset(source, idx, "whitening"), image_size=image_size,
                                 mean=mean, std=std, device=device, progress=False,
                                 batch_size=512)["pooled"]
    finally:
        layer.is_fitted = was_fitted
        backbone.train(was_training)
    layer.fit(feats.float().cpu())
    return n
