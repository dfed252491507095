"""Semi-supervised evaluation: fine-tune the whole network on 1%, 10% or 100% of the labels.

The BYOL paper (table 2) fine-tunes the pretrained ResNet-50 plus a new linear classifier on
class-balanced 1% and 10% subsets of ImageNet's labels (53.2% / 68.8% top-1). Here: SGD with
Nesterov momentum and a cosine schedule, RandomResizedCrop + flip training augmentation, BN in
train mode (the statistics adapt, unlike the linear probe), evaluation with the standard crop.
The paper swept lr and weight decay on a validation split; the defaults below are a reasonable
starting point, not the tuned values.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EvalError
from .features import autocast_context, resolve_device, source_labels
from .linear import (
    _cosine_epochs,
    _feature_dim,
    _generators,
    _linear_head,
    _test_pooled,
    augmented_batches,
)

log = logging.getLogger(__name__)


def balanced_subset(labels: Any, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset: round(fraction * n_c) samples of each
    class c (at least one), drawn without replacement; deterministic in ``seed``."""
    if not 0 < fraction <= 1:
        raise EvalError(f"label fraction {fraction}: must lie in (0, 1]")
    y = np.asarray(torch.as_tensor(labels).cpu().numpy())
    if fraction == 1:
        return torch.arange(len(y))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(round(fraction * 1e6))]))
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(keep))).long()


def fraction_name(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def finetune(
    backbone: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    fraction: float = 1.0,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float | None = None,
    head_lr_mult: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    copy_backbone: bool = True,
    min_steps: int = 0,
) -> dict[str, Any]:
    """Fine-tune backbone + new Linear on a class-balanced ``fraction`` of the train labels.

    ``lr`` defaults to 0.05 per 256 images (linear scaling). The backbone is deep-copied unless
    ``copy_backbone=False``, so 1% / 10% / 100% runs all start from the same weights.
    ``min_steps`` raises the epoch count until that many optimizer steps are taken: a 1% subset
    of a small dataset is a couple of batches per epoch, and a few steps teach nothing (the
    paper's 30 epochs of 1% ImageNet are ~360 steps at batch 1024).
    Returns test {"top1", "top5"}, "fraction", "num_train", "epochs", "lr", "wall_s".
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    ytr = source_labels(train_source)
    yte = source_labels(test_source)
    c = num_classes or int(max(int(ytr.max()), int(yte.max()))) + 1
    idx = balanced_subset(ytr, fraction, seed)
    if len(idx) < 2:
        raise EvalError(f"{fraction_name(fraction)} of the labels is {len(idx)} sample(s): too "
                        "few to fine-tune; use a larger fraction or dataset")
    bs = min(batch_size, len(idx))
    if lr is None:
        lr = 0.05 * bs / 256
    net = copy.deepcopy(backbone) if copy_backbone else backbone
    dim = _feature_dim(net, "classifier")
    net.to(dev).train()
    for p in net.parameters():
        p.requires_grad_(True)
    gen, dev_gen = _generators(seed, dev)
    head = _linear_head(dim, c, gen, dev)
    opt = torch.optim.SGD(
        [{"params": net.parameters(), "lr_mult": 1.0},
         {"params": head.parameters(), "lr_mult": head_lr_mult}],
        lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay,
    )
    in_chans = getattr(net, "in_chans", None)
    steps_per_epoch = max(1, len(idx) // bs)
    if min_steps:
        epochs = max(epochs, -(-min_steps // steps_per_epoch))

    def batches():
        return augmented_batches(train_source, idx, batch_size=bs, image_size=image_size,
                                 mean=mean, std=std, in_chans=in_chans, device=dev, gen=gen,
                                 dev_gen=dev_gen, num_workers=num_workers)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_context(dev, precision):
            logits = head(net(x))
        return F.cross_entropy(logits.float(), y)

    _cosine_epochs(opt, batches, loss_of, lr=lr, epochs=epochs, total=epochs * steps_per_epoch,
                   progress=progress, label=f"fine-tune {fraction_name(fraction)}", logger=log)
    res = _test_pooled(net, head, test_source, yte, image_size=image_size, mean=mean, std=std,
                       device=dev, precision=precision, progress=progress,
                       num_workers=num_workers)
    return {**res, "fraction": fraction, "num_train": len(idx), "epochs": epochs, "lr": lr,
            "wall_s": time.perf_counter() - t0}


def finetune_fractions(
    backbone: nn.Module,
    train_source: Any,
    test_source: Any,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    epochs: int | Sequence[int] = 30,
    **kw: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`finetune` for each label fraction, each from the same starting weights.
    ``epochs`` may be one number or one per fraction (the paper: 30 for 1%, 50 for 10%)."""
    ep = [epochs] * len(fractions) if isinstance(epochs, int) else list(epochs)
    if len(ep) != len(fractions):
        raise EvalError(f"{len(ep)} epoch counts for {len(fractions)} label fractions")
    return {fraction_name(f): finetune(backbone, train_source, test_source, fraction=f, epochs=e,
                                       **kw)
            for f, e in zip(fractions, ep)}
