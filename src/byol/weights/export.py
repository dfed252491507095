"""Writing backbones for other toolkits (``byol export``) and foreign weights as byol
checkpoints (``byol import``).

Transfer benchmarks (detection, segmentation) run in other frameworks, so the pretrained backbone
has to load there without surgery, and published mmselfsup BYOL weights have to load here so
that our evaluation suite can be checked against their numbers. Our ResNet keeps torchvision's
module names, so every format is a key rename:

* ``torchvision`` / ``timm``: a plain state dict with torchvision's keys plus a zero-initialised
  1000-class ``fc`` (so ``resnet50().load_state_dict(sd, strict=True)`` works; the classifier
  carries no information and must be retrained). timm's ResNets use the same key names.
* ``mmpretrain`` / ``mmdet`` / ``mmseg``: ``{"state_dict": {"backbone." + key: tensor},
  "meta": {...}}``, the layout OpenMMLab's ``init_cfg=dict(type="Pretrained", ...)`` reads.
* ``detectron2``: a pickle of ``{"model": {name: numpy array}, "__author__": "byol",
  "matching_heuristics": True}`` with detectron2's ResNet names (stem.conv1, res2..res5,
  convK.norm, shortcut, shortcut.norm), as MoCo's converter writes. Use it with
  ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and ``INPUT.FORMAT RGB`` (torchvision-style weights).
* ``safetensors``: the backbone state dict as is (any variant), with the architecture in the
  metadata.

A 1-channel backbone is exported for RGB frameworks by repeating conv1 over 3 channels divided
by 3: a grayscale image replicated to RGB then gives exactly the same features (normalise every
channel with the model's single mean/std). Narrow widths and the small-image stem have no
torchvision counterpart and are refused for those formats unless ``force=True``.

All files are written atomically (temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..checkpoint import FORMAT, atomic_save, atomic_write, load_state_reporting
from ..errors import CheckpointError
from ..models import build_byol
from .foreign import (
    backbone_state_from_any,
    config_for,
    fill_bn_counters,
    flat_state,
    mlp_from_neck,
    model_info,
    read_any,
    report_keys,
    split_groups,
)

FORMATS = ("torchvision", "timm", "mmpretrain", "mmdet", "mmseg", "detectron2", "safetensors")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "wide_resnet50_2", "wide_resnet101_2")
DEFAULT_SUFFIX = {"torchvision": ".pth", "timm": ".pth", "mmpretrain": ".pth", "mmdet": ".pth",
                  "mmseg": ".pth", "detectron2": ".pkl", "safetensors": ".safetensors"}


# ---------------------------------------------------------------------------------------------
# conversions


def expand_gray_conv1(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """conv1 weights [C, 1, k, k] -> [C, 3, k, k] / 3: RGB input made of three copies of a
    gray image gives the same response as the original 1-channel network."""
    out = dict(sd)
    w = sd["conv1.weight"]
    if w.shape[1] == 1:
        out["conv1.weight"] = w.repeat(1, 3, 1, 1) / 3.0
    return out


def check_torchvision_compatible(info: dict[str, Any], fmt: str, force: bool) -> list[str]:
    """Reasons the backbone does not match a stock torchvision ResNet (empty if it does);
    raises unless ``force``."""
    why = []
    if info["arch"] not in TORCHVISION_ARCHS:
        why.append(f"arch {info['arch']} is not a torchvision ResNet")
    if info["small_stem"]:
        why.append(f"it uses the small-image stem (3x3 stride-{info.get('stem_stride', 1)} "
                   "conv1, no max-pool)")
    if info["width"] != 64:
        why.append(f"its width is {info['width']} (torchvision: 64)")
    if info.get("last_stage_width", 0) not in (0, 8 * info["width"]):
        why.append(f"its last stage has {info['last_stage_width']} planes (torchvision: 8 x width)")
    if info["in_chans"] not in (1, 3):
        why.append(f"it has {info['in_chans']} input channels")
    if why and not force:
        raise CheckpointError(
            f"cannot export to {fmt}: {'; '.join(why)}. Export as safetensors instead, or pass "
            "--force to write the state dict anyway (it will only load into the same variant)"
        )
    return why


FEATURE_LAYERS_NOTE = (
    "the BatchNorm / whitening of the pooled features (model.feature_bn / model.feature_whiten) "
    "is left out: a stock ResNet has no place for it, so its pooled features are those before "
    "it (an affine map that a linear layer on top absorbs; stage features are unchanged); "
    "export as safetensors to keep it")


def drop_feature_layers(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict without byol's layers on the pooled features (``feat_norm.*``,
    ``feat_whiten.*``), and whether it had any."""
    kept = {k: v for k, v in sd.items() if not k.startswith(("feat_norm.", "feat_whiten."))}
    return kept, len(kept) != len(sd)


def to_torchvision(sd: dict[str, torch.Tensor], num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """torchvision key layout with a zero-initialised ``fc`` (strict loading needs one; it is
    not a trained classifier) and conv1 expanded to RGB for 1-channel backbones."""
    out = expand_gray_conv1(fill_bn_counters(sd))
    feat = _num_features(out)
    out["fc.weight"] = torch.zeros(num_classes, feat)
    out["fc.bias"] = torch.zeros(num_classes)
    return {k: v.contiguous() for k, v in out.items()}


def _num_features(sd: dict[str, torch.Tensor]) -> int:
    last = max(int(m[1]) for k in sd if (m := re.match(r"^layer4\.(\d+)\.", k)))
    for conv in ("conv3", "conv2"):
        w = sd.get(f"layer4.{last}.{conv}.weight")
        if w is not None:
            return int(w.shape[0])
    raise CheckpointError("cannot find layer4's last conv to size the fc layer")


def to_detectron2(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """torchvision keys -> detectron2 ResNet keys (numpy arrays), MoCo converter style."""
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked") or k.startswith("fc."):
            continue
        if k.startswith("conv1."):
            name = "stem." + k
        elif k.startswith("bn1."):
            name = "stem.conv1.norm." + k[len("bn1.") :]
        else:
            m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", k)
            if not m:
                raise CheckpointError(f"unexpected ResNet key '{k}' for detectron2 export")
            rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", m[3])
            rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.",
                                                                    "shortcut.norm.")
            name = f"res{int(m[1]) + 1}.{m[2]}.{rest}"
        out[name] = v.detach().cpu().numpy()
    return out


def _meta(info: dict[str, Any], fmt: str, notes: list[str]) -> dict[str, Any]:
    return {"byol_version": __version__, "format": fmt, "arch": info["arch"],
            "in_chans": info["in_chans"], "small_stem": info["small_stem"],
            "stem_stride": int(info.get("stem_stride", 1)),
            "width": info["width"], "last_stage_width": int(info.get("last_stage_width", 0)),
            "feature_bn": bool(info.get("feature_bn", False)),
            "feature_whiten": float(info.get("feature_whiten", 0.0)),
            "source": info.get("source", ""),
            "which": info.get("which", "online"), "notes": notes}


def export_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "torchvision",
    *,
    which: str = "online",
    force: bool = False,
    trust: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Write the backbone of ``src`` (any supported checkpoint) to ``out`` in ``fmt``.

    Returns a report: {format, out, arch, notes, keys}. With ``verify`` the torchvision/timm
    file is loaded back strictly into the stock model.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    sd, info = backbone_state_from_any(src, which, trust)
    if info["unexpected"]:
        report_keys(str(src), [], info["unexpected"])
    notes: list[str] = []
    if fmt != "safetensors":
        notes += check_torchvision_compatible(info, fmt, force)
        sd, dropped = drop_feature_layers(sd)
        if dropped:
            notes.append(FEATURE_LAYERS_NOTE)
        if info["in_chans"] == 1:
            notes.append("1-channel conv1 repeated over RGB and divided by 3: feed gray images "
                         "replicated to 3 channels, each normalised with the model's mean/std")
    out = Path(out)
    if fmt in ("torchvision", "timm"):
        tv = to_torchvision(sd)
        notes.append("fc is zero-initialised (1000 classes): a placeholder for strict loading, "
                     "not a trained classifier")
        atomic_save(tv, out)
        n_keys = len(tv)
        if verify and not force:
            verify_torchvision(out, info["arch"], timm_model=(fmt == "timm"))
    elif fmt in ("mmpretrain", "mmdet", "mmseg"):
        sd3 = expand_gray_conv1(sd)
        blob = {"state_dict": {f"backbone.{k}": v.contiguous() for k, v in sd3.items()},
                "meta": _meta(info, fmt, notes)}
        atomic_save(blob, out)
        n_keys = len(sd3)
        notes.append("load with init_cfg=dict(type='Pretrained', checkpoint=PATH, "
                     "prefix='backbone.') or as the model's backbone weights")
    elif fmt == "detectron2":
        d2 = to_detectron2(expand_gray_conv1(sd))
        blob = {"model": d2, "__author__": "byol", "matching_heuristics": True}
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(pickle.dumps(blob, protocol=4)))
        n_keys = len(d2)
        notes.append("use MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT RGB and torchvision's "
                     "PIXEL_MEAN/PIXEL_STD (x255) with these weights")
    else:
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in sd.items()}
        meta = {k: str(v) for k, v in _meta(info, fmt, notes).items() if k != "notes"}
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=meta))
        n_keys = len(tensors)
    return {"format": fmt, "out": str(out), "arch": info["arch"], "layout": info["layout"],
            "keys": n_keys, "notes": notes}


def verify_torchvision(path: str | os.PathLike, arch: str, timm_model: bool = False) -> None:
    """Strictly load an exported file into torchvision's (or timm's) model of that arch."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if timm_model:
        try:
            import timm
        except ImportError:
            timm_model = False
    if timm_model:
        model: nn.Module = timm.create_model(arch, pretrained=False)
    else:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------
# import


def import_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    trust: bool = False,
    image_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Convert an mmselfsup (1.x ``backbone./neck./head.predictor./target_net.0/1`` or 0.x
    ``online_net.0/1``), mmpretrain or torchvision checkpoint into a byol checkpoint that
    :func:`byol.checkpoint.load_backbone` reads. Projector / predictor / target weights are kept
    when present; a missing target is a copy of the online network. Returns a report with the
    missing and unexpected keys (also logged)."""
    obj = read_any(src, trust)
    state, layout = flat_state(obj)
    groups, unexpected = split_groups(state, layout)
    if "backbone" not in groups:
        raise CheckpointError(f"'{src}' ({layout}) has no backbone weights")
    groups["backbone"] = fill_bn_counters(groups["backbone"])
    if "target_backbone" in groups:
        groups["target_backbone"] = fill_bn_counters(groups["target_backbone"])
    info = model_info(obj, layout, groups["backbone"])
    info["source"] = str(src)
    notes: list[str] = []
    for g in ("projector", "predictor", "target_projector"):
        if g in groups and layout != "byol":
            mapped, left = mlp_from_neck(groups[g])
            groups[g] = mapped
            unexpected += [f"{g}:{k}" for k in left]
    proj = groups.get("projector")
    if proj is not None and "0.weight" in proj and "3.weight" in proj:
        info["proj_hidden_dim"] = proj["0.weight"].shape[0]
        info["proj_dim"] = proj["3.weight"].shape[0]
    pred = groups.get("predictor")
    if pred is not None and "0.weight" in pred:
        info["pred_hidden_dim"] = pred["0.weight"].shape[0]
    cfg = config_for(info, image_size=image_size, mean=mean, std=std)
    model_state: dict[str, torch.Tensor] = {}
    prefix = {"backbone": "online.backbone.", "projector": "online.projector.",
              "predictor": "predictor.", "target_backbone": "target.backbone.",
              "target_projector": "target.projector."}
    for g, pre in prefix.items():
        for k, v in groups.get(g, {}).items():
            model_state[pre + k] = v.clone()
    for online, target in (("backbone", "target_backbone"), ("projector", "target_projector")):
        if target not in groups and online in groups:
            notes.append(f"no {target.replace('_', ' ')} weights: copied the online ones")
            for k, v in groups[online].items():
                model_state[prefix[target] + k] = v.clone()
    model = build_byol(cfg.model)
    missing, unexpected_model = load_state_reporting(model, model_state, str(src), strict=False)
    bb_missing = [k for k in missing if k.startswith("online.backbone.")]
    if bb_missing:
        raise CheckpointError(f"'{src}': {len(bb_missing)} backbone weights missing, e.g. "
                              f"{bb_missing[:3]}; is it a ResNet checkpoint?")
    if missing:
        notes.append(f"{len(missing)} projector/predictor keys missing (kept at random init): "
                     "fine for evaluation, not for resuming pretraining")
    all_unexpected = unexpected + unexpected_model
    report_keys(str(src), missing, all_unexpected)
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "model": {k: v.contiguous() for k, v in model.state_dict().items()},
        "step": int(obj.get("meta", {}).get("iter", 0)) if isinstance(obj.get("meta"), dict) else 0,
        "epoch": int(obj.get("meta", {}).get("epoch", 0)) if isinstance(obj.get("meta"), dict)
        else 0,
        "metrics": {},
        "imported_from": str(src),
        "imported_layout": layout,
    }
    atomic_save(ckpt, out)
    return {"out": str(out), "layout": layout, "arch": info["arch"], "missing": missing,
            "unexpected": all_unexpected, "notes": notes}
