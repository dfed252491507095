"""Linear evaluation: a fast probe on cached features, mmselfsup's augmented GAP probe and the
multi-head (feature1..feature5) probe.

* :func:`linear_probe_features` is the quick, deterministic probe used during development and in
  the CPU benchmark: frozen features computed once, standardised with train statistics (no BN in
  the head), an lr sweep selected on a held-out part of train (DeepMind's protocol), retrain on
  all of train at the chosen lr, test once.
* :func:`linear_probe_augmented` is mmselfsup's protocol: frozen backbone including its BN
  statistics (eval mode), Linear(num_features -> classes) on the GAP output, RandomResizedCrop +
  flip training augmentation recomputed every epoch, LARS lr 1.6 (per 4096 images) momentum 0.9
  without weight decay, or DeepMind's SGD Nesterov lr 0.2 per 256; cosine schedule.
* :func:`multihead_probe` (cached pooled stage features) and
  :func:`multihead_probe_augmented` (on the fly, augmented) implement mmselfsup's multi-head
  benchmark: per stage AvgPool -> BatchNorm(affine=False) -> Linear, the heads' losses summed,
  SGD Nesterov lr 0.01 momentum 0.9 wd 1e-4, lr x0.1 at 1/3 and 2/3 of the epochs (30/60 of 90).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EvalError
from ..optim import LARS
from .features import (
    autocast_context,
    extract_features,
    features_from_batch,
    iter_image_batches,
    resolve_device,
    source_labels,
    source_len,
)
from .transforms import train_transform

log = logging.getLogger(__name__)

DEFAULT_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


# ---------------------------------------------------------------------------------------------
# small helpers


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
                  ) -> dict[str, float]:
    """{"top1": %, "top5": %} (top-k clipped to the number of classes)."""
    labels = labels.to(logits.device)
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    out = {}
    for k in ks:
        hit = (pred[:, : min(k, kmax)] == labels[:, None]).any(1)
        out[f"top{k}"] = 100.0 * float(hit.float().mean())
    return out


def cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def step_lr(base: float, epoch: int, milestones: Sequence[int], gamma: float = 0.1) -> float:
    return base * gamma ** sum(epoch >= m for m in milestones)


def default_milestones(epochs: int) -> tuple[int, ...]:
    """lr steps at 1/3 and 2/3 of training: (30, 60) for mmselfsup's 90 epochs."""
    return (round(epochs / 3), round(2 * epochs / 3))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def _num_classes(*labels: torch.Tensor) -> int:
    return int(max(int(lab.max()) for lab in labels if len(lab))) + 1


def _check_xy(feats: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if feats.dim() != 2:
        raise EvalError(f"{what} features must be [N, D], got {tuple(feats.shape)}")
    if len(feats) != len(labels):
        raise EvalError(f"{what}: {len(labels)} labels for {len(feats)} feature rows")
    if len(feats) == 0:
        raise EvalError(f"{what} set is empty")


def _batches(n: int, batch_size: int, gen: torch.Generator, drop_single: bool = True
             ) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for s in range(0, n, batch_size):
        b = perm[s : s + batch_size]
        if drop_single and len(b) < 2 and n > 1:
            continue  # a batch of one breaks BatchNorm in train mode
        yield b


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6
                ) -> tuple[torch.Tensor, ...]:
    """(x - mean) / std with the statistics of ``train``: the probe's replacement for a BN layer,
    so the lr sweep works on features of any scale."""
    mu = train.mean(0, keepdim=True)
    sd = train.std(0, keepdim=True).clamp_min(eps)
    return tuple((x - mu) / sd for x in (train, *others))


# ---------------------------------------------------------------------------------------------
# (a) fast probe on cached features


def _fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, lr: float, epochs: int,
                batch_size: int, weight_decay: float, seed: int) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():  # initialised on the CPU from the seeded generator, then moved
        head.weight.normal_(0, 0.01, generator=gen)
        head.bias.zero_()
    head.to(x.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        for b in _batches(len(x), batch_size, gen, drop_single=False):
            _set_lr(opt, cosine_lr(lr, step, total))
            b = b.to(x.device)
            loss = F.cross_entropy(head(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if not torch.isfinite(loss):
            break  # diverged: this lr loses the sweep
    return head


def _next_lr(before: float, edge: float, before_before: float) -> float:
    """The lr after ``edge`` in its grid's pattern: ``before * edge / before_before`` (after
    0.1, 0.3, 1: 3; after 0.3, 1, 3: 10; below 0.03, 0.01, 0.003: 0.001), at 12 digits."""
    return float(f"{before * edge / before_before:.12g}")


def linear_probe_features(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    lrs: Sequence[float] = DEFAULT_LRS,
    epochs: int = 50,
    batch_size: int = 1024,
    val_fraction: float = 0.1,
    seed: int = 0,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    extend: int = 2,
    train_views: Sequence[torch.Tensor] = (),
) -> dict[str, Any]:
    """Linear probe on frozen features with an lr sweep on a held-out split of train.

    ``train_views``: features of the same training images under a training augmentation (row
    i of each is image i, e.g. its mirror image: the paper's flip), added as more training rows.
    The held-out split is drawn by image, so no view of a held-out image is trained on, and the
    held-out and test images are read as they are (one view each).

    When the best held-out lr of a sweep of three or more is at an end of the grid and strictly
    better than its neighbour, the grid goes on past that end in its own pattern (after 0.3, 1:
    3, then 10), up to ``extend`` more lrs, while the held-out accuracy still rises: a best lr
    at the edge says the grid stopped too soon (a one-hour Fashion-MNIST checkpoint picked 1.0,
    the top of the default grid).

    Returns {"top1", "top5" (test, %), "lr" (chosen), "val_top1" {lr: %}, "epochs"}.
    """
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    test_labels = torch.as_tensor(test_labels, dtype=torch.int64)
    _check_xy(train_feats, train_labels, "train")
    _check_xy(test_feats, test_labels, "test")
    if not 0 < val_fraction < 1:
        raise EvalError(f"val_fraction={val_fraction}: must lie in (0, 1)")
    if not lrs or any(lr <= 0 for lr in lrs):
        raise EvalError(f"lrs={tuple(lrs)}: give positive learning rates")
    dev = resolve_device(device)
    c = num_classes or _num_classes(train_labels, test_labels)
    xtr, ytr = train_feats.to(dev, torch.float32), train_labels.to(dev)
    xte, yte = test_feats.to(dev, torch.float32), test_labels.to(dev)
    views = [v.to(dev, torch.float32) for v in train_views]
    for i, v in enumerate(views):
        if v.shape != xtr.shape:
            raise EvalError(f"train_views[{i}] has shape {tuple(v.shape)}; the training "
                            f"features have {tuple(xtr.shape)}: one row per training image")

    def with_views(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training rows ``rows`` in every view, and their labels."""
        x = torch.cat([xtr[rows]] + [v[rows] for v in views])
        return x, ytr[rows].repeat(1 + len(views))

    val_top1: dict[str, float] = {}
    if len(lrs) > 1:
        perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed)).to(dev)
        n_val = max(1, int(round(val_fraction * len(xtr))))
        vi, ti = perm[:n_val], perm[n_val:]
        if len(ti) == 0:
            raise EvalError("the training set is too small to hold out a validation split")
        xa, ya = with_views(ti)
        a, v = standardize(xa, xtr[vi])

        def held_out(lr: float) -> None:
            head = _fit_linear(a, ya, c, lr, epochs, batch_size, weight_decay, seed)
            with torch.no_grad():
                logits = head(v)
            acc = topk_accuracy(logits, ytr[vi])["top1"] if torch.isfinite(logits).all() else 0.0
            val_top1[f"{lr:g}"] = acc
            log.info("linear probe lr %g: held-out top-1 %.2f", lr, acc)

        grid = sorted(set(lrs))
        for lr in grid:
            held_out(lr)
        for _ in range(extend if len(grid) >= 3 else 0):
            acc = [val_top1[f"{lr:g}"] for lr in grid]
            if acc[-1] > max(acc[:-1]):  # still rising at the top: the next lr of the pattern
                grid.append(_next_lr(grid[-2], grid[-1], grid[-3]))
                held_out(grid[-1])
            elif acc[0] > max(acc[1:]):  # still rising at the bottom
                grid.insert(0, _next_lr(grid[1], grid[0], grid[2]))
                held_out(grid[0])
            else:
                break
        best = max(grid, key=lambda lr: (val_top1[f"{lr:g}"], -lr))
    else:
        best = lrs[0]
    xa, ya = with_views(torch.arange(len(xtr), device=dev))
    a, t = standardize(xa, xte)
    head = _fit_linear(a, ya, c, best, epochs, batch_size, weight_decay, seed)
    with torch.no_grad():
        res = topk_accuracy(head(t), yte)
    return {**res, "lr": best, "val_top1": val_top1, "epochs": epochs,
            "num_train": len(xtr), "num_test": len(xte), "train_views": 1 + len(views)}


# ---------------------------------------------------------------------------------------------
# shared loop pieces for the augmented protocols


def _is_file_source(source: Any) -> bool:
    return not (isinstance(source, torch.Tensor) or hasattr(source, "images"))


def augmented_batches(
    source: Any,
    indices: torch.Tensor,
    *,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int | None,
    device: torch.device,
    gen: torch.Generator,
    dev_gen: torch.Generator,
    num_workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of RandomResizedCrop + flip training batches (normalised, on device).

    In-memory images are cropped from the full image, as torchvision's RandomResizedCrop does.
    File sources are first decoded at the eval crop of side image_size*256/224 (workers return
    fixed-size tensors), and the random crop is taken from that.
    """
    perm = indices[torch.randperm(len(indices), generator=gen)]
    out_size = round(image_size * 256 / 224) if _is_file_source(source) else None
    for xb, yb, m in iter_image_batches(source, batch_size, indices=perm, out_size=out_size,
                                        num_workers=num_workers):
        if m < 2:
            continue
        x = train_transform(xb.to(device, non_blocking=True), image_size, mean, std,
                            generator=dev_gen, in_chans=in_chans)
        yield x, yb.to(device)


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    return gen, dev_gen


def _make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float
                    ) -> torch.optim.Optimizer:
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    raise EvalError(f"optimizer {name!r}: choose lars or sgd")


def _cosine_epochs(opt: torch.optim.Optimizer, batches, loss_of, *, lr: float, epochs: int,
                   total: int, progress: bool, label: str,
                   logger: logging.Logger = log) -> None:
    """``epochs`` passes over ``batches()`` (x, y), one optimizer step on ``loss_of(x, y)`` per
    batch at the cosine lr of ``total`` steps (times each group's ``lr_mult``); with
    ``progress``, the epoch's mean loss is logged as "LABEL epoch i/n loss L"."""
    step = 0
    for epoch in range(epochs):
        running, seen = 0.0, 0
        for x, y in batches():
            _set_lr(opt, cosine_lr(lr, step, total))
            loss = loss_of(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += float(loss.detach()) * len(y)
            seen += len(y)
        if progress:
            logger.info("%s epoch %d/%d loss %.4f", label, epoch + 1, epochs,
                        running / max(1, seen))


def _frozen(backbone: nn.Module, device: torch.device) -> nn.Module:
    """The backbone on ``device``, in eval mode (BN statistics kept), without gradients."""
    backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def _feature_dim(backbone: nn.Module, what: str) -> int:
    dim = getattr(backbone, "num_features", 0)
    if not dim:
        raise EvalError(f"the backbone does not report num_features; cannot size the {what}")
    return dim


def _linear_head(dim: int, num_classes: int, gen: torch.Generator, device: torch.device
                 ) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, 0, 0.01, generator=gen)  # seeded: reruns give the same numbers
    nn.init.zeros_(head.bias)
    return head.to(device)


def _test_pooled(backbone: nn.Module, head: nn.Module, test_source: Any, labels: torch.Tensor, *,
                 image_size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, precision: str, progress: bool,
                 num_workers: int | None) -> dict[str, float]:
    """Test {"top1", "top5"} of ``head`` on the backbone's GAP features of ``test_source``."""
    feats = extract_features(backbone, test_source, image_size=image_size, mean=mean, std=std,
                             device=device, precision=precision, progress=progress,
                             num_workers=num_workers)["pooled"]
    with torch.no_grad():
        return topk_accuracy(head(feats.to(device)), labels)


# ---------------------------------------------------------------------------------------------
# (b) mmselfsup's augmented linear probe


def linear_probe_augmented(
    backbone: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    epochs: int = 90,
    batch_size: int = 256,
    optimizer: str = "lars",
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    train_indices: torch.Tensor | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """mmselfsup's linear evaluation on the GAP features of a frozen backbone (BN in eval mode).

    ``lr`` defaults to the protocol's rate scaled to ``batch_size``: LARS 1.6 per 4096 images
    (mmselfsup), SGD 0.2 per 256 (DeepMind). Returns test {"top1", "top5"}, "lr", "epochs".

    LARS moves each tensor by about lr * eta of its norm per step, so the total change per epoch
    scales with the dataset size: the ImageNet recipe barely trains the head on a 60k-image set
    in a few epochs (measured: chance level after 10 epochs on 20k Fashion-MNIST images, 64%
    with SGD). On small datasets use ``optimizer="sgd"``, more epochs or a larger ``lr``.
    """
    dev = resolve_device(device)
    ytr_all = source_labels(train_source)
    yte = source_labels(test_source)
    c = num_classes or _num_classes(ytr_all, yte)
    if lr is None:
        lr = 1.6 * batch_size / 4096 if optimizer == "lars" else 0.2 * batch_size / 256
    idx = torch.arange(source_len(train_source)) if train_indices is None else train_indices
    in_chans = getattr(backbone, "in_chans", None)
    dim = _feature_dim(_frozen(backbone, dev), "head")
    gen, dev_gen = _generators(seed, dev)
    head = _linear_head(dim, c, gen, dev)
    opt = _make_optimizer(head.parameters(), optimizer, lr, momentum, weight_decay)
    def batches():
        return augmented_batches(train_source, idx, batch_size=batch_size,
                                 image_size=image_size, mean=mean, std=std, in_chans=in_chans,
                                 device=dev, gen=gen, dev_gen=dev_gen, num_workers=num_workers)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast_context(dev, precision):
            f = backbone(x)
        return F.cross_entropy(head(f.float()), y)

    _cosine_epochs(opt, batches, loss_of, lr=lr, epochs=epochs,
                   total=epochs * max(1, len(idx) // batch_size), progress=progress,
                   label="linear")
    res = _test_pooled(backbone, head, test_source, yte, image_size=image_size, mean=mean,
                       std=std, device=dev, precision=precision, progress=progress,
                       num_workers=num_workers)
    return {**res, "lr": lr, "epochs": epochs, "optimizer": optimizer, "batch_size": batch_size,
            "num_train": len(idx), "num_test": len(yte)}


# ---------------------------------------------------------------------------------------------
# (c) multi-head probe


class MultiHead(nn.Module):
    """mmselfsup's MultiClsHead on pooled stage features: BN(affine=False) -> Linear per stage.

    When a stage's channel count is known, the flat [N, C*g*g] feature is viewed as [N, C, g*g]
    and normalised per channel (BatchNorm2d on the pooled map, as mmselfsup); otherwise per
    dimension (BatchNorm1d).
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int,
                 channels: Mapping[str, int] | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.names = list(dims)
        self.channels = {}
        self.norms = nn.ModuleDict()
        self.fcs = nn.ModuleDict()
        for n, d in dims.items():
            ch = (channels or {}).get(n)
            if ch and d % ch == 0:
                self.channels[n] = ch
                self.norms[n] = nn.BatchNorm1d(ch, affine=False)
            else:
                self.norms[n] = nn.BatchNorm1d(d, affine=False)
            fc = nn.Linear(d, num_classes)
            nn.init.normal_(fc.weight, 0, 0.01, generator=generator)
            nn.init.zeros_(fc.bias)
            self.fcs[n] = fc

    def forward(self, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            x = feats[n].float()
            if n in self.channels:
                x = self.norms[n](x.view(len(x), self.channels[n], -1)).flatten(1)
            else:
                x = self.norms[n](x)
            out[n] = self.fcs[n](x)
        return out


def _mhead_optimizer(head: MultiHead, lr: float, momentum: float, weight_decay: float):
    # BN(affine=False) has no parameters: every parameter is a Linear's, all decayed (mmselfsup's
    # norm_decay_mult=0 only concerns norm layers).
    return torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=weight_decay)


def _fit_multihead(head: MultiHead, batches, *, epochs: int, lr: float, momentum: float,
                   weight_decay: float, milestones: Sequence[int] | None,
                   progress: bool = False) -> None:
    """SGD on the summed heads' losses with the step schedule; ``batches()`` yields one epoch of
    (features {name: [B, D]}, labels)."""
    opt = _mhead_optimizer(head, lr, momentum, weight_decay)
    ms = tuple(milestones) if milestones is not None else default_milestones(epochs)
    for epoch in range(epochs):
        _set_lr(opt, step_lr(lr, epoch, ms))
        head.train()
        for feats, y in batches():
            logits = head(feats)
            loss = sum(F.cross_entropy(v, y) for v in logits.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress:
            log.info("multi-head epoch %d/%d loss %.4f", epoch + 1, epochs, float(loss))
    head.eval()


def multihead_probe(
    train_feats: Mapping[str, torch.Tensor],
    train_labels: torch.Tensor,
    test_feats: Mapping[str, torch.Tensor],
    test_labels: torch.Tensor,
    *,
    channels: Mapping[str, int] | None = None,
    epochs: int = 90,
    batch_size: int = 256,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    milestones: Sequence[int] | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Multi-head linear probe on cached pooled stage features ({"feature1": [N, D1], ...}).

    Without augmentation (the features are computed once with the eval crop): a fast stand-in
    for mmselfsup's protocol; :func:`multihead_probe_augmented` is the full one.
    Returns {"feature1": {"top1", "top5"}, ...}.
    """
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    test_labels = torch.as_tensor(test_labels, dtype=torch.int64)
    names = list(train_feats)
    if not names or set(names) != set(test_feats):
        raise EvalError("train and test multi-head features must have the same non-empty names")
    for n in names:
        _check_xy(train_feats[n], train_labels, f"train {n}")
        _check_xy(test_feats[n], test_labels, f"test {n}")
    dev = resolve_device(device)
    c = num_classes or _num_classes(train_labels, test_labels)
    gen = torch.Generator().manual_seed(seed)
    head = MultiHead({n: train_feats[n].shape[1] for n in names}, c, channels, gen).to(dev)
    ytr = train_labels.to(dev)

    def batches():
        for b in _batches(len(ytr), batch_size, gen):
            yield {n: train_feats[n][b].to(dev) for n in names}, ytr[b.to(dev)]

    _fit_multihead(head, batches, epochs=epochs, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, milestones=milestones)
    res: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        logits = {n: [] for n in names}
        for s in range(0, len(test_labels), 4096):
            out = head({n: test_feats[n][s : s + 4096].to(dev) for n in names})
            for n in names:
                logits[n].append(out[n])
        for n in names:
            res[n] = topk_accuracy(torch.cat(logits[n]), test_labels)
    return res


def stage_channels(backbone: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Channels of feature1..5 for a byol ResNet (``stage_channels``), else {}."""
    chans = getattr(backbone, "stage_channels", None)
    if not chans:
        return {}
    return {n: int(chans[int(n[-1]) - 1]) for n in names if n.startswith("feature")}


def multihead_probe_augmented(
    backbone: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    names: Sequence[str] = ("feature1", "feature2", "feature3", "feature4", "feature5"),
    epochs: int = 90,
    batch_size: int = 256,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    milestones: Sequence[int] | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    pool: str = "auto",
    train_indices: torch.Tensor | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """mmselfsup's multi-head benchmark with on-the-fly RandomResizedCrop + flip: the frozen
    backbone (eval mode) is run every step, its stage maps pooled, normalised and classified."""
    dev = resolve_device(device)
    ytr_all = source_labels(train_source)
    yte = source_labels(test_source)
    c = num_classes or _num_classes(ytr_all, yte)
    names = list(names)
    in_chans = getattr(backbone, "in_chans", None)
    _frozen(backbone, dev)
    with torch.no_grad():
        probe = torch.zeros(2, in_chans or 3, image_size, image_size, device=dev)
        dims = {n: v.shape[1] for n, v in features_from_batch(backbone, probe, names, pool).items()}
    gen, dev_gen = _generators(seed, dev)
    head = MultiHead(dims, c, stage_channels(backbone, names), gen).to(dev)
    idx = torch.arange(source_len(train_source)) if train_indices is None else train_indices

    def batches():
        for x, y in augmented_batches(train_source, idx, batch_size=batch_size,
                                      image_size=image_size, mean=mean, std=std,
                                      in_chans=in_chans, device=dev, gen=gen, dev_gen=dev_gen,
                                      num_workers=num_workers):
            with torch.no_grad(), autocast_context(dev, precision):
                feats = features_from_batch(backbone, x, names, pool)
            yield feats, y

    _fit_multihead(head, batches, epochs=epochs, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, milestones=milestones, progress=progress)
    test = extract_features(backbone, test_source, image_size=image_size, mean=mean, std=std,
                            names=names, device=dev, precision=precision, progress=progress,
                            pool=pool, num_workers=num_workers)
    with torch.no_grad():
        out = head({n: test[n].to(dev) for n in names})
    return {n: topk_accuracy(out[n], yte) for n in names}
