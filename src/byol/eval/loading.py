"""Which backbone to evaluate: a checkpoint (byol or foreign layout) or a baseline.

:func:`load_eval_model` returns an :class:`~byol.eval.features.EvalModel`: the backbone plus
the image size and normalisation it was trained with. Byol checkpoints load through
:func:`byol.checkpoint.load_backbone`; other layouts (mmselfsup, mmpretrain, torchvision) are
recognised by their keys (:func:`byol.checkpoint.is_byol_checkpoint`) and converted in memory
by :mod:`byol.weights.foreign`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    backbone_from_checkpoint,
    is_byol_checkpoint,
    load_checkpoint,
    load_state_reporting,
)
from ..errors import EvalError
from ..models import build_backbone
from ..weights.foreign import backbone_from_any, read_any
from .features import EvalModel, PixelBackbone, checkpoint_key
from .transforms import IMAGENET_MEAN, IMAGENET_STD


def _default_norm(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * in_chans, (0.25,) * in_chans


def load_eval_model(
    checkpoint: str | None = None,
    baseline: str | None = None,
    *,
    which: str = "online",
    arch: str | None = None,
    in_chans: int | None = None,
    small_stem: bool | None = None,
    width: int | None = None,
    seed: int | None = None,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust: bool = False,
) -> EvalModel:
    """The backbone to evaluate.

    * ``checkpoint`` alone: a byol checkpoint (or an mmselfsup / torchvision one, converted in
      memory), with its image size and normalisation.
    * ``baseline="random"``: a randomly initialised backbone of the checkpoint's architecture
      when a checkpoint is given too, else of ``arch``/``in_chans``/...; ``seed`` None means
      the checkpoint's ``train.seed`` (the same network before training) or 0.
    * ``baseline="pixels"``: the flattened, normalised evaluation crop.
    * ``baseline="torchvision"``: torchvision's ImageNet-supervised weights from the local
      torch hub cache (nothing is downloaded).
    Explicit ``image_size``/``mean``/``std``/``arch`` arguments override the checkpoint's.
    """
    cfg = None
    info: dict[str, Any] = {}
    if checkpoint:
        if trust or Path(checkpoint).suffix == ".safetensors":
            ckpt = read_any(checkpoint, trust)
        else:
            ckpt = load_checkpoint(checkpoint, trust_flag="--trust")
        if is_byol_checkpoint(ckpt):
            bb, cfg = backbone_from_checkpoint(ckpt, str(checkpoint), which)
        else:  # another toolkit's layout, converted in memory
            bb, cfg, info = backbone_from_any(checkpoint, trust=trust)
        m, a = cfg.model, cfg.augment
        arch_, in_, small_, width_ = m.arch, m.in_chans, m.small_stem, m.width
        stride_, last_, fbn_ = m.stem_stride, m.last_stage_width, m.feature_bn
        white_ = m.feature_whiten
        size_, mean_, std_ = a.image_size, tuple(a.mean), tuple(a.std)
        label, key = "byol", checkpoint_key(checkpoint, which)
    else:
        bb = None
        arch_, in_, small_, width_ = "resnet50", 3, False, 64
        stride_, last_, fbn_, white_ = 1, 0, False, 0.0
        size_, mean_, std_ = 224, None, None
        label, key = "", ""
    arch_ = arch or arch_
    in_ = in_chans or in_
    small_ = small_stem if small_stem is not None else small_
    stride_ = stride_ if small_ else 1
    fbn_ = fbn_ and not arch_.startswith("timm:")
    white_ = 0.0 if arch_.startswith("timm:") else white_
    if width and width != width_:
        last_ = 0  # another width: its own (doubling) last stage
    width_ = width or width_
    if baseline in (None, ""):
        if bb is None:
            raise EvalError("give --checkpoint PATH or --baseline random|pixels|torchvision")
        if arch and arch != cfg.model.arch:
            raise EvalError(f"--arch {arch} differs from the checkpoint's {cfg.model.arch}; "
                            "drop --arch (it only applies to --baseline)")
        m = cfg.model
        for flag, given, own in (("--width", width, m.width), ("--in-chans", in_chans, m.in_chans),
                                 ("--small-stem", small_stem, m.small_stem)):
            if given is not None and given != own:
                shown = ("--small-stem" if given else "--no-small-stem") if flag == "--small-stem" \
                    else f"{flag} {given}"
                raise EvalError(
                    f"{shown} differs from the checkpoint '{checkpoint}' ({flag.lstrip('-')} "
                    f"{own}): the checkpoint fixes the model; drop {flag} (it only applies to "
                    "--baseline)")
    elif baseline == "random":
        if seed is None:  # the checkpoint's own initial network
            seed = cfg.train.seed if cfg is not None else 0
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(seed)
            # an unfitted whitening is the identity: the network before training
            bb = build_backbone(arch_, in_, small_, width_, stride_, last_, fbn_, white_)
        label = "random-init"
        key = f"random-init:{arch_}:c{in_}:s{int(small_)}:w{width_}:seed{seed}"
        if stride_ != 1:
            key += f":stride{stride_}"
        if last_ and last_ != 8 * width_:
            key += f":last{last_}"
        if fbn_:  # at init its statistics are 0 / 1: the same features, kept apart all the same
            key += ":fbn"
    elif baseline == "pixels":
        bb = PixelBackbone(in_chans=in_ if checkpoint else in_chans)
        label, key, arch_ = "pixels", "pixels", "pixels"
    elif baseline == "torchvision":
        bb = _torchvision_supervised(arch_)
        label, key, in_ = "torchvision-supervised", f"torchvision:{arch_}", 3
    else:
        raise EvalError(f"--baseline {baseline!r}: choose random, pixels or torchvision")
    size = image_size or size_
    if mean is None or std is None:
        dm, ds = _default_norm(in_ if in_ else 3)
        mean_ = mean_ or dm
        std_ = std_ or ds
    return EvalModel(
        backbone=bb,
        label=label,
        key=key,
        arch=arch_,
        image_size=int(size),
        mean=tuple(mean if mean is not None else mean_),
        std=tuple(std if std is not None else std_),
        checkpoint=str(checkpoint) if checkpoint and not baseline else None,
        config=cfg,
        info=info,
    )


def _torchvision_supervised(arch: str) -> nn.Module:
    """torchvision's supervised ImageNet weights, only from the local hub cache (no download)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except Exception as e:  # noqa: BLE001
        raise EvalError(f"--baseline torchvision: torchvision has no weights for {arch}") from e
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not hub.is_file():
        raise EvalError(f"--baseline torchvision: {hub} is missing and nothing is downloaded; "
                        f"copy torchvision's {arch} weights there")
    sd = torch.load(hub, map_location="cpu", weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    bb = build_backbone(arch)
    load_state_reporting(bb, sd, str(hub))
    return bb

