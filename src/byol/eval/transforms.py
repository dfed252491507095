"""The evaluation and probe-training image transforms (batched, on the tensor's device).

:func:`eval_transform` is the standard evaluation crop (resize the short side, center crop,
normalise); :func:`train_transform` is mmselfsup's linear / fine-tune augmentation
(RandomResizedCrop + flip, drawn by :func:`byol.augment.random_resized_crop_flip`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..augment import match_channels, random_resized_crop_flip
from ..errors import EvalError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _channels(x: torch.Tensor, in_chans: int | None) -> torch.Tensor:
    out = match_channels(x, in_chans)
    if in_chans is not None and out.shape[1] != in_chans:
        raise EvalError(f"images have {x.shape[1]} channels but the backbone expects {in_chans}")
    return out


def _norm_consts(mean: Sequence[float], std: Sequence[float], c: int, device, dtype):
    m = torch.as_tensor(tuple(mean), dtype=dtype, device=device)
    s = torch.as_tensor(tuple(std), dtype=dtype, device=device)
    if m.numel() not in (1, c) or s.numel() not in (1, c):
        raise EvalError(f"mean/std have {m.numel()}/{s.numel()} values for {c}-channel images; "
                        f"give 1 or {c} values (--mean/--std)")
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel; a single mean/std value is broadcast over channels."""
    m, s = _norm_consts(mean, std, x.shape[1], x.device, x.dtype)
    return (x - m) / s


def eval_transform(
    images_uint8: torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize_ratio: float = 256 / 224,
    in_chans: int | None = None,
) -> torch.Tensor:
    """The evaluation crop, batched: resize the short side to round(image_size * resize_ratio)
    (bilinear, antialiased like torchvision's tensor Resize), center crop image_size, scale to
    [0, 1], normalise. ``resize_ratio=1`` with square input of the right size is the identity
    geometry (VOC07's squashed 224x224 images)."""
    if images_uint8.dim() != 4:
        raise EvalError(f"images must be [B, C, H, W], got shape {tuple(images_uint8.shape)}")
    x = images_uint8.float() / 255.0 if not images_uint8.is_floating_point() else images_uint8
    x = _channels(x, in_chans)
    h, w = x.shape[-2:]
    short = round(image_size * resize_ratio)
    if min(h, w) != short:
        if h <= w:
            nh, nw = short, max(short, round(w * short / h))
        else:
            nh, nw = max(short, round(h * short / w)), short
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=(nh < h or nw < w))
        h, w = nh, nw
    if h < image_size or w < image_size:
        raise EvalError(f"resize_ratio={resize_ratio} gives {h}x{w}, smaller than the "
                        f"{image_size}-px crop; use resize_ratio >= 1")
    top, left = (h - image_size) // 2, (w - image_size) // 2
    x = x[..., top : top + image_size, left : left + image_size]
    return normalize(x, mean, std)


def train_transform(
    images_uint8: torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None = None,
    in_chans: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
) -> torch.Tensor:
    """mmselfsup's linear / fine-tune training augmentation: RandomResizedCrop + horizontal flip
    (per sample, batched on the tensor's device), then normalise."""
    x = images_uint8.float() / 255.0
    x = _channels(x, in_chans).contiguous()
    x = random_resized_crop_flip(x, image_size, scale=scale, generator=generator,
                                 interpolation="bilinear")
    return normalize(x.clamp_(0.0, 1.0), mean, std)

