"""Frozen-backbone feature extraction shared by every evaluation protocol.

Every protocol of mmselfsup's suite (kNN, linear, multi-head, SVM) starts from the same step: run
the pretrained backbone in eval mode (BN running statistics, no gradients) over a labelled split
with the standard evaluation crop and keep either the global-average-pooled output ("pooled") or
pooled stage outputs ("feature1".."feature5"). Doing it in one place guarantees the protocols see
identical features, and :func:`cached_features` lets several protocols (and baselines) reuse them.

Multi-head pooling rule (:func:`mhead_pool`)
--------------------------------------------
mmselfsup's ``MultiPooling`` has two modes for ResNet-50: ``specified`` AvgPool2d with (kernel,
stride, padding) = (10,10,4), (16,8,0), (13,5,0), (8,3,0), (6,1,0) for feature1..5, which the
benchmark configs use at 224 px, and ``adaptive`` AdaptiveAvgPool2d to grids 12, 6, 4, 3, 2, which
gives the same output grid at 224 px. Our rule (``pool="auto"``) is keyed on the feature map's
spatial size, not the input size, so it also covers small-image stems:

* a map of exactly the 224-px ResNet size (112, 56, 28, 14, 7) gets the ``specified`` AvgPool2d
  (count_include_pad as nn.AvgPool2d) -> 9216, 9216, 8192, 9216, 8192 dims for ResNet-50;
* any other size gets mmselfsup's ``adaptive`` pooling to the same grid, clipped to the map size
  (min(grid, H)) so tiny maps are never up-sampled into duplicated features.

So dims are ``channels * grid**2`` whatever the input size (for maps at least grid-sized), which
keeps heads comparable across resolutions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import runtime
from ..checkpoint import atomic_save
from ..errors import EvalError
from ..precision import autocast
from .transforms import eval_transform

log = logging.getLogger(__name__)

FEATURE_NAMES = ("feature1", "feature2", "feature3", "feature4", "feature5")
ALL_NAMES = ("pooled",) + FEATURE_NAMES

# feature name -> (map side at a 224-px ResNet input, (kernel, stride, padding))
MHEAD_SPECIFIED = {
    "feature1": (112, (10, 10, 4)),
    "feature2": (56, (16, 8, 0)),
    "feature3": (28, (13, 5, 0)),
    "feature4": (14, (8, 3, 0)),
    "feature5": (7, (6, 1, 0)),
}
MHEAD_GRID = {"feature1": 12, "feature2": 6, "feature3": 4, "feature4": 3, "feature5": 2}
RESNET50_MHEAD_DIMS = {"feature1": 9216, "feature2": 9216, "feature3": 8192, "feature4": 9216,
                       "feature5": 8192}


def mhead_pool(x: torch.Tensor, name: str, pool: str = "auto") -> torch.Tensor:
    """Pool one stage map [B, C, H, W] with the multi-head rule (module docstring); returns the
    pooled map [B, C, g, g] (flatten it for a Linear head)."""
    if name not in MHEAD_GRID:
        raise EvalError(f"unknown feature '{name}'; use one of {', '.join(FEATURE_NAMES)}")
    side, (k, s, p) = MHEAD_SPECIFIED[name]
    h, w = x.shape[-2:]
    if pool == "specified" or (pool == "auto" and h == side and w == side):
        return F.avg_pool2d(x, k, s, p)
    if pool not in ("auto", "adaptive"):
        raise EvalError(f"pool={pool!r}: choose auto, specified or adaptive")
    g = MHEAD_GRID[name]
    return F.adaptive_avg_pool2d(x, (min(g, h), min(g, w)))



# ---------------------------------------------------------------------------------------------
# sources and batches


def source_len(source: Any) -> int:
    if isinstance(source, torch.Tensor):
        return int(source.shape[0])
    if hasattr(source, "images"):
        return int(source.images.shape[0])
    if hasattr(source, "files"):
        return len(source.files)
    raise EvalError(f"cannot read images from a {type(source).__name__}; "
                    "pass an ArraySource, FileSource or uint8 tensor [N, C, H, W]")


def source_labels(source: Any) -> torch.Tensor:
    """int64 [N] labels of a labelled source, or an error naming the source."""
    labels = getattr(source, "labels", None)
    if labels is None:
        name = getattr(source, "name", type(source).__name__)
        raise EvalError(f"{name} has no labels; evaluations need a labelled split "
                        "(e.g. --train-split train --test-split test)")
    return torch.as_tensor(labels, dtype=torch.int64)


def source_name(source: Any) -> str:
    if isinstance(source, torch.Tensor):
        return f"tensor{tuple(source.shape)}"
    return str(getattr(source, "name", type(source).__name__))


def num_workers_default() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def iter_image_batches(
    source: Any,
    batch_size: int,
    *,
    indices: torch.Tensor | None = None,
    out_size: int | None = None,
    num_workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(uint8 images [b, C, H, W], labels [b] (-1 if unlabelled), number of samples) batches in
    ``indices`` order. In-memory sources are sliced directly (no DataLoader, no copies beyond
    the batch); file sources are decoded in DataLoader workers with the eval crop at
    ``out_size`` (FolderEvalDataset), so their images arrive already at the crop size."""
    n = source_len(source)
    idx = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    if isinstance(source, torch.Tensor) or hasattr(source, "images"):
        images = source if isinstance(source, torch.Tensor) else source.images
        labels = None if isinstance(source, torch.Tensor) else source.labels
        for start in range(0, len(idx), batch_size):
            b = idx[start : start + batch_size]
            # in order: a view, no gather copy
            x = images[start : start + len(b)] if indices is None else images[b]
            y = labels[b] if labels is not None else torch.full((len(b),), -1, dtype=torch.int64)
            yield x, y, len(b)
        return
    if not hasattr(source, "files"):
        source_len(source)  # raises the explanatory error
    from ..data import FolderEvalDataset

    if out_size is None:
        raise EvalError("file sources need out_size (the crop size) to decode images")
    in_chans = 3
    ds = FolderEvalDataset(source, out_size, in_chans=in_chans)
    subset = torch.utils.data.Subset(ds, idx.tolist())
    workers = num_workers_default() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                         num_workers=workers, persistent_workers=False)
    for x, y in loader:
        yield x, torch.as_tensor(y, dtype=torch.int64), len(y)



def autocast_context(device: torch.device, precision: str):
    """Autocast per :func:`byol.precision.autocast` for a ``--precision`` name."""
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise EvalError(f"precision={precision!r}: choose auto, bf16, fp16 or fp32")
    return autocast(device, precision)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """:func:`byol.runtime.resolve_device` for the ``--device`` flag."""
    try:
        return runtime.resolve_device(None if device is None else str(device))
    except RuntimeError as e:
        raise EvalError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# baselines


class PixelBackbone(nn.Module):
    """The raw-pixels baseline: the normalised evaluation crop, flattened. Has no stages, so the
    multi-head and per-layer protocols report it as not applicable."""

    arch = "pixels"

    def __init__(self, in_chans: int | None = None) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.num_features = 0  # known after the first batch (depends on image size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_stages(self, x, names=FEATURE_NAMES):  # noqa: ARG002
        raise EvalError("the raw-pixels baseline has no stages: use --layers pooled")


# ---------------------------------------------------------------------------------------------
# extraction


@dataclass
class _ModelState:
    training: bool
    device: torch.device | None
    channels_last: bool


def _first_param(m: nn.Module) -> torch.Tensor | None:
    return next(iter(m.parameters()), None)


def _prepare(backbone: nn.Module, device: torch.device, channels_last: bool) -> _ModelState:
    p = _first_param(backbone)
    state = _ModelState(backbone.training, p.device if p is not None else None, False)
    backbone.eval()
    if p is not None and p.device != device:
        backbone.to(device)
    # A model in training (the kNN monitor) keeps its memory format: re-laying out parameters
    # under a live optimiser / DDP is not worth the speed-up.
    if channels_last and p is not None and not state.training:
        w = next((m.weight for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        if w is not None and not w.is_contiguous(memory_format=torch.channels_last):
            backbone.to(memory_format=torch.channels_last)
            state.channels_last = True
    return state


def _restore(backbone: nn.Module, state: _ModelState) -> None:
    """Undo what extraction changed, so a model being trained (the kNN monitor) is untouched."""
    if state.channels_last:
        backbone.to(memory_format=torch.contiguous_format)
    p = _first_param(backbone)
    if state.device is not None and p is not None and p.device != state.device:
        backbone.to(state.device)
    backbone.train(state.training)


def features_from_batch(
    backbone: nn.Module, x: torch.Tensor, names: Sequence[str], pool: str = "auto"
) -> dict[str, torch.Tensor]:
    """Forward one normalised batch; returns {name: [B, D]} for "pooled" and/or featureK."""
    from ..models.backbones import ResNet

    out: dict[str, torch.Tensor] = {}
    stage_names = [n for n in names if n != "pooled"]
    # Our ResNet's pooled output is the GAP of feature5: one forward serves both.
    share = "pooled" in names and bool(stage_names) and isinstance(backbone, ResNet)
    if "pooled" in names and not share:
        out["pooled"] = backbone(x).flatten(1)
    if stage_names:
        wanted = stage_names + (["feature5"] if share and "feature5" not in stage_names else [])
        stages = backbone.forward_stages(x, wanted)
        if share:
            out["pooled"] = F.adaptive_avg_pool2d(stages["feature5"], 1).flatten(1)
        for n in stage_names:
            out[n] = mhead_pool(stages[n], n, pool).flatten(1)
    return out


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    source: Any,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    names: Sequence[str] = ("pooled",),
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    channels_last: bool = True,
    progress: bool = True,
    resize_ratio: float = 256 / 224,
    pool: str = "auto",
    num_workers: int | None = None,
    flip: bool = False,
) -> dict[str, torch.Tensor]:
    """Frozen features of every sample of ``source``: {name: float32 [N, D]} on the CPU.

    ``flip``: read each evaluation crop mirrored left-right (the flip of the linear probe's
    training augmentation, :class:`~byol.eval.settings.LinearSettings` ``flip``).

    ``names``: "pooled" (global average pool) and/or "feature1".."feature5" (multi-head
    pooling). The backbone runs in eval mode without gradients; its mode, device and memory
    format are restored afterwards, so the training loop can call this for its kNN monitor.
    """
    names = tuple(dict.fromkeys(names))
    bad = [n for n in names if n not in ALL_NAMES]
    if bad:
        raise EvalError(f"unknown feature names {bad}; use pooled or {', '.join(FEATURE_NAMES)}")
    dev = resolve_device(device)
    n = source_len(source)
    if n == 0:
        raise EvalError(f"{source_name(source)} is empty")
    in_chans = getattr(backbone, "in_chans", None)
    file_source = not (isinstance(source, torch.Tensor) or hasattr(source, "images"))
    state = _prepare(backbone, dev, channels_last and dev.type in ("cpu", "cuda"))
    out: dict[str, torch.Tensor] = {}
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"features {source_name(source)}", unit="img", leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    t0 = time.perf_counter()
    try:
        pos = 0
        for xb, _, m in iter_image_batches(source, batch_size, out_size=image_size,
                                           num_workers=num_workers):
            xb = xb.to(dev, non_blocking=True)
            ratio = 1.0 if file_source else resize_ratio  # files arrive cropped already
            x = eval_transform(xb, image_size, mean, std, ratio, in_chans)
            if flip:
                x = x.flip(-1)
            if channels_last and dev.type in ("cpu", "cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(dev, precision):
                feats = features_from_batch(backbone, x, names, pool)
            for k, v in feats.items():
                if k not in out:
                    out[k] = torch.empty((n, v.shape[1]), dtype=torch.float32)
                out[k][pos : pos + m] = v.float().cpu()
            pos += m
            if bar is not None:
                bar.update(m)
        if pos != n:  # pragma: no cover - a loader that drops samples is a bug
            raise EvalError(f"{source_name(source)}: read {pos} of {n} samples")
    finally:
        _restore(backbone, state)
        if bar is not None:
            bar.close()
    if isinstance(backbone, PixelBackbone) and "pooled" in out:
        backbone.num_features = out["pooled"].shape[1]
    log.debug("features of %d samples in %.1f s", n, time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------
# model resolution (checkpoint or baseline) and the feature cache


@dataclass
class EvalModel:
    """A backbone to evaluate plus the preprocessing it was trained with.

    ``label`` names the row in reports ("byol", "random-init", "pixels", ...); ``key`` identifies
    the weights for the feature cache.
    """

    backbone: nn.Module
    label: str
    key: str
    arch: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checkpoint: str | None = None
    config: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int | None:
        return getattr(self.backbone, "in_chans", None)


def checkpoint_key(path: str | os.PathLike, which: str = "online") -> str:
    """Identity of a checkpoint file for caching: its resolved path, mtime and size (a retrained
    file at the same path gets a new key)."""
    p = Path(path).resolve()
    st = p.stat()
    return f"ckpt:{p}:{st.st_mtime_ns}:{st.st_size}:{which}"



def feature_cache_key(
    model_key: str,
    source: Any,
    *,
    image_size: int,
    names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    resize_ratio: float = 256 / 224,
    pool: str = "auto",
    flip: bool = False,
) -> str:
    """Hash of everything that determines the features: weights identity, data identity and
    size, preprocessing (``flip``: the mirrored crops) and the feature names."""
    ident = {
        "model": model_key,
        "data": source_name(source),
        "n": source_len(source),
        "image_size": int(image_size),
        "names": sorted(names),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "resize_ratio": round(float(resize_ratio), 6),
        "pool": pool,
        "v": 1,
    }
    if flip:  # only then, so the keys of unflipped features stay as they were
        ident["flip"] = True
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def cached_features(
    ckpt_or_key: str | EvalModel,
    source: Any,
    *,
    backbone: nn.Module | None = None,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    names: Sequence[str] = ("pooled",),
    cache_dir: str | os.PathLike | None = None,
    **extract_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """:func:`extract_features`, memoised on disk under ``cache_dir``.

    ``ckpt_or_key``: an :class:`EvalModel`, or with ``backbone`` a checkpoint path (identified
    by path + mtime + size) or a baseline name such as ``"random-init:resnet18:seed0"``.
    Files are written atomically and read with ``weights_only=True``. Without ``cache_dir``
    this is a plain :func:`extract_features`.
    """
    if isinstance(ckpt_or_key, EvalModel):
        em = ckpt_or_key
        backbone = backbone or em.backbone
        key = em.key
        image_size = image_size or em.image_size
        mean = mean if mean is not None else em.mean
        std = std if std is not None else em.std
    else:
        key = str(ckpt_or_key)
        if backbone is None:
            raise EvalError(f"'{key}': give the backbone too, or an EvalModel "
                            "(byol.eval.loading.load_eval_model)")
        if Path(key).is_file():
            key = checkpoint_key(key)
    if image_size is None or mean is None or std is None:
        raise EvalError("cached_features needs image_size, mean and std for a baseline key")
    names = tuple(dict.fromkeys(names))
    if cache_dir is None:
        return extract_features(backbone, source, image_size=image_size, mean=mean, std=std,
                                names=names, **extract_kwargs)
    # One file per (weights, data, preprocessing); it accumulates layers as protocols ask for
    # them, so `eval knn` after `eval all` (or the reverse) reuses what is there.
    h = feature_cache_key(key, source, image_size=image_size, names=(), mean=mean, std=std,
                          resize_ratio=extract_kwargs.get("resize_ratio", 256 / 224),
                          pool=extract_kwargs.get("pool", "auto"),
                          flip=bool(extract_kwargs.get("flip", False)))
    path = Path(cache_dir) / f"feats_{h}.pt"
    have: dict[str, torch.Tensor] = {}
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            have = {n: v for n, v in blob["features"].items() if len(v) == source_len(source)}
        except Exception as e:  # noqa: BLE001 - a damaged cache file is recomputed
            log.warning("ignoring unreadable feature cache %s (%s)", path, e)
    missing = [n for n in names if n not in have]
    if not missing:
        log.info("features from cache %s", path)
        return {n: have[n] for n in names}
    have.update(extract_features(backbone, source, image_size=image_size, mean=mean, std=std,
                                 names=missing, **extract_kwargs))
    meta = {"key": key, "data": source_name(source), "n": source_len(source)}
    if extract_kwargs.get("flip"):
        meta["flip"] = True
    atomic_save({"features": have, "meta": meta}, path)
    return {n: have[n] for n in names}


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)
