"""Weighted k-nearest-neighbour classification (mmselfsup's / DINO's kNN protocol).

Features are L2-normalised; each test sample's k most cosine-similar training samples vote for
their class with weight exp(sim / T), T = 0.07. mmselfsup reports top-1 for k = 10, 20, 100, 200.

Memory: the train features are never copied. Instead of normalising the [N, D] train matrix we
keep its row norms ([N]) and divide the similarities by them, and we scan the training set in
blocks, merging each block's top-k into a running top-k. So ImageNet (1.28M x 2048 float32,
10.5 GB) needs that one matrix plus a [chunk, block] similarity buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import EvalError
from .features import l2_normalize


def _check(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
           test_labels: torch.Tensor | None) -> None:
    if train_feats.dim() != 2 or test_feats.dim() != 2:
        raise EvalError("kNN features must be [N, D] matrices")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise EvalError(f"train features have {train_feats.shape[1]} dims but test features "
                        f"{test_feats.shape[1]}: extract both with the same model and layer")
    if len(train_labels) != len(train_feats):
        raise EvalError(f"{len(train_labels)} train labels for {len(train_feats)} train features")
    if test_labels is not None and len(test_labels) != len(test_feats):
        raise EvalError(f"{len(test_labels)} test labels for {len(test_feats)} test features")
    if len(train_feats) == 0:
        raise EvalError("the kNN training set is empty")


@torch.no_grad()
def knn_neighbours(
    train_feats: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    *,
    train_block: int = 65536,
    device: str | torch.device | None = None,
    train_inv_norm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities [q, k] (descending) and indices [q, k] of each query's k nearest
    training samples. ``queries`` must already be L2-normalised."""
    dev = torch.device(device) if device is not None else queries.device
    n = len(train_feats)
    k = min(k, n)
    if train_inv_norm is None:
        train_inv_norm = 1.0 / train_feats.float().norm(dim=1).clamp_min(1e-12)
    q = queries.to(dev, torch.float32)
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start in range(0, n, train_block):
        blk = train_feats[start : start + train_block].to(dev, torch.float32)
        sim = q @ blk.T
        sim.mul_(train_inv_norm[start : start + train_block].to(dev).unsqueeze(0))
        s, i = sim.topk(min(k, sim.shape[1]), dim=1)
        i = i + start
        if best_s is None:
            best_s, best_i = s, i
        else:
            s = torch.cat([best_s, s], 1)
            i = torch.cat([best_i, i], 1)
            best_s, pos = s.topk(k, dim=1)
            best_i = i.gather(1, pos)
    assert best_s is not None and best_i is not None
    return best_s, best_i


def weighted_votes(
    sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores [q, C]: sum over the neighbours of exp(sim / T) for each neighbour's class."""
    w = (sims / temperature).exp()
    votes = torch.zeros(sims.shape[0], num_classes, dtype=w.dtype, device=w.device)
    return votes.scatter_add_(1, neighbour_labels, w)


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
    train_block: int = 65536,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 accuracy (%) of the weighted kNN classifier for each k.

    Returns ``{"k=10": {"top1": .., "top5": ..}, ...}``. k larger than the training set is
    clipped to its size. Test samples are processed ``chunk_size`` at a time and the training
    set ``train_block`` rows at a time, on ``device`` (default: the features' device).
    """
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    test_labels = torch.as_tensor(test_labels, dtype=torch.int64)
    _check(train_feats, train_labels, test_feats, test_labels)
    if not ks or any(int(k) < 1 for k in ks):
        raise EvalError(f"ks={tuple(ks)}: every k must be >= 1")
    if temperature <= 0:
        raise EvalError(f"temperature={temperature}: must be > 0")
    c = int(num_classes or int(max(train_labels.max(), test_labels.max())) + 1)
    dev = torch.device(device) if device is not None else train_feats.device
    kmax = min(max(int(k) for k in ks), len(train_feats))
    inv_norm = (1.0 / train_feats.float().norm(dim=1).clamp_min(1e-12)).to(dev)
    labels_dev = train_labels.to(dev)
    top1 = {int(k): 0 for k in ks}
    top5 = {int(k): 0 for k in ks}
    for start in range(0, len(test_feats), chunk_size):
        q = l2_normalize(test_feats[start : start + chunk_size].to(dev, torch.float32))
        y = test_labels[start : start + chunk_size].to(dev)
        sims, idx = knn_neighbours(train_feats, q, kmax, train_block=train_block, device=dev,
                                   train_inv_norm=inv_norm)
        nl = labels_dev[idx]
        for k in top1:
            kk = min(k, kmax)
            votes = weighted_votes(sims[:, :kk], nl[:, :kk], c, temperature)
            pred = votes.topk(min(5, c), dim=1).indices
            top1[k] += int((pred[:, 0] == y).sum())
            top5[k] += int((pred == y[:, None]).any(1).sum())
    n = len(test_feats)
    return {f"k={k}": {"top1": 100.0 * top1[k] / n, "top5": 100.0 * top5[k] / n} for k in top1}


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Class scores [N_test, C] of the weighted kNN (for inspection and tests)."""
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    _check(train_feats, train_labels, test_feats, None)
    c = int(num_classes or int(train_labels.max()) + 1)
    sims, idx = knn_neighbours(train_feats, l2_normalize(test_feats.float()), k)
    return weighted_votes(sims, train_labels[idx], c, temperature)
