"""The Python API of a whole workflow: :func:`pretrain`, :func:`load_backbone`, and
:func:`byol.embedding.embed`, re-exported as ``byol.pretrain``, ``byol.load_backbone`` and
``byol.embed``.

Each is what the matching command does (``byol pretrain``, ``byol export``, ``byol embed``),
called with Python values instead of flags.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from .errors import CheckpointError, ConfigError

log = logging.getLogger("byol")

BACKBONE_FORMATS = ("torchvision", "timm", "byol")


def _set_items(overrides: dict[str, Any]) -> list[str]:
    """``train__epochs=3`` / ``train={"epochs": 3}`` / ``{"train.epochs": 3}`` -> ``--set`` items."""
    import yaml

    items = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            items += [f"{key}.{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                      .replace("\n...", "") for k, v in value.items()]
        else:
            text = yaml.safe_dump(value, default_flow_style=True).strip().replace("\n...", "")
            items.append(f"{key.replace('__', '.')}={text}")
    return items


def pretrain(data: str | None = None, out: str | None = None, *, config: str | None = None,
             test_data: str | None = None, device: str = "auto", resume: str | None = None,
             quiet: bool = False, **overrides: Any) -> dict[str, Any]:
    """Pretrain with BYOL, as ``byol pretrain``; returns the run's summary (``last``: the
    checkpoint path, ``steps``, ``final_loss``, ``knn_monitor`` when labels exist).

    Without ``config``, everything is chosen from ``data`` (reader, image size, statistics,
    recipe) and the choices are printed unless ``quiet``. ``overrides`` are config settings:
    ``train__epochs=3`` (``__`` for the dot), ``train={"epochs": 3}``, or
    ``**{"train.epochs": 3}``.

    Example::

        import byol
        result = byol.pretrain(data="my_images/", out="runs/mine", train__time_budget="5m")
        net = byol.load_backbone(result["last"], format="byol")
    """
    from .autoconfig import as_comment, auto_config, choice_block
    from .config import load_config
    from .engine import pretrain as run

    sets = _set_items(overrides)
    if out:
        sets.append(f"log.out_dir={out}")
    header = ""
    if config is None:
        if data is None:
            raise ConfigError("byol.pretrain: give data=PATH (or config=PRESET_OR_YAML)")
        choice = auto_config(data, test_data=test_data, device=device, overrides=sets,
                             out_dir=out)
        block = choice_block(choice)
        if not quiet:
            print(block, flush=True)
        cfg, header = choice.config, as_comment(block)
    else:
        if data is not None:
            sets.append(f"data.path={data}")
        if test_data is not None:
            sets.append(f"data.val_path={test_data}")
        sets.append(f"train.device={device}")
        cfg = load_config(config, sets)
    return run(cfg, resume=resume, config_header=header)


def _small_stem(model: nn.Module, in_chans: int = 3, stride: int = 1) -> None:
    """Give a torchvision/timm ResNet byol's small-image stem (3x3 conv1 at ``stride``, no
    max-pool)."""
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, width, 3, stride, 1, bias=False)
    model.maxpool = nn.Identity()


def load_backbone(checkpoint: str, format: str = "torchvision", *,  # noqa: A002 - the API's word
                  which: str = "online", trust: bool = False) -> nn.Module:
    """The pretrained backbone of a checkpoint as a ready ``nn.Module`` in eval mode.

    ``format``: ``torchvision`` (``torchvision.models.resnet*``) or ``timm``
    (``timm.create_model``), both with the classifier removed (``fc`` is ``nn.Identity`` /
    ``num_classes=0``) so the module returns pooled features; put your own head on it to
    fine-tune. A small-stem backbone gets that stem on the stock model; a 1-channel backbone
    takes RGB (three copies of the gray image give the same features). ``byol``: byol's own
    ResNet (every variant, including narrow widths), the same keys as torchvision's.
    """
    if format not in BACKBONE_FORMATS:
        raise CheckpointError(f"format={format!r}: choose one of {', '.join(BACKBONE_FORMATS)}")
    if format == "byol":
        from .checkpoint import load_backbone as load_own

        net, _ = load_own(checkpoint, which)
        return net.eval()
    from .weights.export import (
        FEATURE_LAYERS_NOTE,
        TORCHVISION_ARCHS,
        drop_feature_layers,
        expand_gray_conv1,
    )
    from .weights.foreign import backbone_state_from_any, fill_bn_counters

    sd, info = backbone_state_from_any(checkpoint, which, trust)
    if info["arch"] not in TORCHVISION_ARCHS or info["width"] != 64 \
            or info.get("last_stage_width", 0) not in (0, 512):
        raise CheckpointError(
            f"{checkpoint}: a {info['arch']} of width {info['width']} (last stage "
            f"{info.get('last_stage_width', 0) or 8 * info['width']}) has no {format} counterpart "
            "(stock ResNets have width 64, last stage 512); use format='byol' for byol's own "
            "ResNet (same key names), or pretrain with --set model.width=64")
    sd, dropped = drop_feature_layers(sd)
    if dropped:
        log.warning("%s: %s", checkpoint, FEATURE_LAYERS_NOTE)
    sd = expand_gray_conv1(fill_bn_counters(sd))
    if format == "timm":
        try:
            import timm
        except ImportError:
            raise CheckpointError("format='timm' needs timm: pip install timm") from None
        model: nn.Module = timm.create_model(info["arch"], pretrained=False, num_classes=0)
    else:
        import torchvision

        model = torchvision.models.get_model(info["arch"], weights=None)
        model.fc = nn.Identity()
    if info["small_stem"]:
        _small_stem(model, stride=int(info.get("stem_stride", 1)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    unexpected = [k for k in unexpected if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: does not fit {format}'s {info['arch']}: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
