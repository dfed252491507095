"""The nearest-neighbour picture of ``byol report``: a few query images and, beside each, its
top-``k`` neighbours among a bank of training images by cosine similarity of the pooled backbone
features (the space the kNN probe votes in).

The queries are held out of the bank: they come from the run's test split when it has one, and
otherwise from training images left out of the bank, so no query ever finds itself. With labels
each neighbour's class is written above it, green when it matches the query's and red when not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..data.base import same_images, subset
from ..errors import ByolError, EvalError

log = logging.getLogger("byol")


def pick_indices(n_bank_src: int, n_query_src: int, bank: int, queries: int, seed: int,
                 same: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted bank indices (into the training split) and query indices (into the query split),
    a pure function of ``seed``; when both splits are one set of images the two never overlap."""
    g = torch.Generator().manual_seed(seed)
    if same:
        if n_bank_src < 2:
            raise EvalError("the neighbour picture needs at least 2 images")
        perm = torch.randperm(n_bank_src, generator=g)
        nq = min(queries, n_bank_src - 1)
        q, rest = perm[:nq], perm[nq:]
        return rest[:bank].sort().values, q.sort().values
    b = torch.randperm(n_bank_src, generator=g)[:bank]
    q = torch.randperm(n_query_src, generator=g)[:queries]
    return b.sort().values, q.sort().values


def _open_splits(cfg, data: str | None, test_data: str | None):
    from ..data import open_source

    d, a = cfg.data, cfg.augment
    kw = dict(image_size=a.image_size, in_memory=d.in_memory, max_memory_gb=d.max_memory_gb,
              load_size=d.load_size, strict=d.strict, synthetic_size=d.synthetic_size,
              seed=cfg.train.seed)
    path = data or d.path
    train = open_source(d.source, path, d.split, **kw)
    if test_data:
        return train, open_source(d.source, test_data, d.val_split, **kw), False
    if d.val_split == d.split and not d.val_path:
        return train, train, True
    try:
        test = open_source(d.source, d.val_path or path, d.val_split,
                           split_option="data.val_split", **kw)
    except ByolError as e:  # no test split: queries come from held-out train images
        log.info("neighbour picture: no test split (%s); queries are training images held out "
                 "of the bank", e)
        return train, train, True
    return train, test, same_images(train, test)


def _display(x: torch.Tensor):
    """uint8 [C, H, W] -> float numpy [H, W(, 3)] in [0, 1] for imshow."""
    x = x.float() / 255.0
    return (x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)).numpy()


def _images(src: Any, idx: torch.Tensor, size: int) -> list:
    from .features import iter_image_batches

    out: list[torch.Tensor] = []
    for x, _, _ in iter_image_batches(src, 64, indices=idx, out_size=size, num_workers=0):
        out += [_display(img) for img in x]
    return out


def neighbour_picture(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    queries: int = 6,
    k: int = 8,
    bank: int = 5000,
    seed: int = 0,
    data: str | None = None,
    test_data: str | None = None,
    device: str = "auto",
    trust: bool = False,
) -> dict[str, Any]:
    """Draw ``queries`` held-out images and their top-``k`` neighbours among ``bank`` training
    images (cosine similarity of the pooled features of ``checkpoint``'s online backbone) into
    the PNG ``out``. ``data`` / ``test_data`` replace the paths recorded in the checkpoint's
    config. Returns {png, bank_indices, query_indices, neighbours [queries, k] (bank
    positions), similarity, same_images, agreement (share of neighbours of the query's class,
    or None without labels)}."""
    from .features import extract_features, l2_normalize
    from .loading import load_eval_model
    from .plots import _plt

    if queries < 1 or k < 1 or bank < 1:
        raise EvalError(f"queries, k and bank must be >= 1 (got {queries}, {k}, {bank})")
    model = load_eval_model(str(checkpoint), trust=trust)
    cfg = model.config
    if cfg is None or cfg.data.source == "synthetic" and not data:
        raise EvalError(f"'{checkpoint}' records no training data to search; pass data=PATH "
                        "(byol report: --data)")
    train, test, same = _open_splits(cfg, data, test_data)
    bi, qi = pick_indices(len(train), len(test), bank, queries, seed, same)
    if len(bi) < k:
        raise EvalError(f"the bank has {len(bi)} images, fewer than k={k}")
    bank_src, query_src = subset(train, bi, "bank"), subset(test, qi, "queries")
    kw = dict(image_size=model.image_size, mean=model.mean, std=model.std, device=device,
              progress=False, batch_size=256)
    fb = l2_normalize(extract_features(model.backbone, bank_src, **kw)["pooled"])
    fq = l2_normalize(extract_features(model.backbone, query_src, **kw)["pooled"])
    sim, nn_idx = (fq @ fb.T).topk(k, dim=1)

    labels_b, labels_q = bank_src.labels, query_src.labels
    classes = train.classes or test.classes
    agreement = None
    if labels_b is not None and labels_q is not None:
        agreement = float((labels_b[nn_idx] == labels_q[:, None]).float().mean())

    def name(y: int) -> str:
        return classes[y] if classes and 0 <= y < len(classes) else str(y)

    size = model.image_size
    q_img = _images(query_src, torch.arange(len(qi)), size)
    b_img = _images(bank_src, nn_idx.flatten().unique(), size)
    pos = {int(j): i for i, j in enumerate(nn_idx.flatten().unique())}
    plt = _plt()
    rows, cols = len(qi), k + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.4), squeeze=False)
    gray = q_img[0].ndim == 2
    for r in range(rows):
        ax = axes[r][0]
        ax.imshow(q_img[r], cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_title("query" + (f"\n{name(int(labels_q[r]))}" if labels_q is not None else ""),
                     fontsize=7, fontweight="bold")
        for c in range(k):
            j = int(nn_idx[r, c])
            ax = axes[r][c + 1]
            ax.imshow(b_img[pos[j]], cmap="gray" if gray else None, vmin=0, vmax=1)
            title, color = f"{float(sim[r, c]):.3f}", "black"
            if labels_b is not None:
                title = f"{name(int(labels_b[j]))}\n{title}"
                if labels_q is not None:
                    color = "green" if int(labels_b[j]) == int(labels_q[r]) else "red"
            ax.set_title(title, fontsize=7, color=color)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    where = "held-out training images" if same else "test images"
    fig.suptitle(f"{len(qi)} {where} and their {k} nearest neighbours among {len(bi)} training "
                 "images (cosine, pooled features)"
                 + (f"; {agreement:.0%} share the query's class" if agreement is not None else ""),
                 fontsize=8)
    fig.tight_layout()
    png = Path(out)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {"png": png, "bank_indices": bi, "query_indices": qi, "neighbours": nn_idx,
            "similarity": sim, "same_images": same, "agreement": agreement}
