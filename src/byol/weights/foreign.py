"""Reading other toolkits' checkpoints: mmselfsup (1.x and 0.x), mmpretrain, torchvision.

The layout of a file is decided by its keys (:func:`flat_state`); :func:`split_groups` cuts the
state dict into backbone / projector / predictor / target groups with our key names, and
:func:`backbone_from_any` builds the backbone they describe (:func:`infer_resnet`). Byol's own
checkpoints are recognised by :func:`byol.checkpoint.is_byol_checkpoint` and read there.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import diagnose, is_byol_checkpoint, load_state_reporting, unreadable_message
from ..config import Config, config_from_dict
from ..errors import CheckpointError
from ..models import build_backbone
from ..models.backbones import _RESNETS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# reading


def read_any(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint-like file as a dict: byol/mmselfsup/torchvision ``.pt``/``.pth``
    (``weights_only=True`` unless ``trust``) or ``.safetensors``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"'{p}' does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except Exception as e:  # noqa: BLE001 - safetensors' own error types
            raise CheckpointError(
                f"'{p}' cannot be read as safetensors: it is corrupt or not a safetensors file "
                f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); use an intact copy"
            ) from None
    if p.suffix == ".pkl":
        raise CheckpointError(f"'{p}': detectron2 .pkl files are an export format only; import "
                              "the original .pth instead")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        kind, detail = diagnose(p, e)
        if kind != "objects" or not trust:  # a corrupt file is corrupt, trusted or not
            raise CheckpointError(unreadable_message(p, kind, detail, "--trust")) from None
        log.warning("%s: full unpickling (--trust) of a file that names %s", p, detail)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)  # noqa: S614 - opted in
        except Exception as e2:  # noqa: BLE001 - the objects' own code failed
            raise CheckpointError(
                f"'{p}' could not be unpickled even with --trust ({type(e2).__name__}: "
                f"{' '.join(str(e2).split())[:200]}): it needs code that is not installed here"
            ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{p}' holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _tensors(d: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)} if isinstance(d, dict) else {}


def flat_state(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The model state dict inside a checkpoint and the layout it uses: ``byol``,
    ``mmselfsup-1.x``, ``mmselfsup-0.x``, ``mmpretrain`` or ``torchvision``."""
    if is_byol_checkpoint(obj):
        return _tensors(obj["model"]), "byol"
    state: dict[str, torch.Tensor] = {}
    for key in ("state_dict", "model", "module", "net"):
        if isinstance(obj.get(key), dict) and _tensors(obj[key]):
            state = _tensors(obj[key])
            break
    else:
        state = _tensors(obj)
    if not state:
        raise CheckpointError(f"no tensors found (top-level keys: {sorted(obj)[:8]})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    keys = list(state)
    if any(k.startswith("online.backbone.") for k in keys):
        return state, "byol"
    if any(k.startswith("online_net.0.") for k in keys):
        return state, "mmselfsup-0.x"
    if any(k.startswith("target_net.") for k in keys):
        return state, "mmselfsup-1.x"
    if any(k.startswith("backbone.") for k in keys):
        return state, "mmpretrain"
    if "conv1.weight" in state:
        return state, "torchvision"
    raise CheckpointError(
        f"unrecognised key layout (first keys: {keys[:5]}); expected byol, mmselfsup "
        "(backbone./neck./target_net.), or torchvision (conv1.weight, layer1...) keys"
    )


# our name -> (prefixes to try, in order) per layout
_GROUPS = {
    "byol": {
        "backbone": ("online.backbone.",),
        "projector": ("online.projector.",),
        "predictor": ("predictor.",),
        "target_backbone": ("target.backbone.",),
        "target_projector": ("target.projector.",),
    },
    "mmselfsup-1.x": {
        "backbone": ("backbone.",),
        "projector": ("neck.",),
        "predictor": ("head.predictor.",),
        "target_backbone": ("target_net.0.",),
        "target_projector": ("target_net.1.",),
    },
    "mmselfsup-0.x": {
        "backbone": ("online_net.0.", "backbone."),
        "projector": ("online_net.1.", "neck."),
        "predictor": ("head.predictor.",),
        "target_backbone": ("target_net.0.",),
        "target_projector": ("target_net.1.",),
    },
    "mmpretrain": {"backbone": ("backbone.",)},
    "torchvision": {"backbone": ("",)},
}

# keys that carry no weights we need and are expected in foreign checkpoints
_IGNORABLE = re.compile(r"^(data_preprocessor\.|fc\.|head\.fc\.|head\.layers\.)")


def split_groups(state: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, dict], list[str]]:
    """{group: {key without prefix: tensor}} and the keys no group consumed (unexpected).

    mmselfsup 0.x registers the online network twice (``online_net.0`` and ``backbone``); the
    first prefix found wins and the duplicate copy is consumed silently.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    used: set[str] = set()
    for name, prefixes in _GROUPS[layout].items():
        for pre in prefixes:
            part = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
            if layout == "torchvision":
                part = {k: v for k, v in part.items() if not _IGNORABLE.match(k)}
            if part:
                if name not in groups:
                    groups[name] = part
                used.update(pre + k for k in part)
    unexpected = [k for k in state if k not in used]
    return groups, unexpected


def mlp_from_neck(neck: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """mmselfsup NonLinearNeck (``fc0``, ``bn0``, ``fc1``) or 0.x ``mlp.{0,1,3}`` keys -> our
    MLP's ``nn.Sequential`` indices (0 = Linear, 1 = BN, 3 = Linear). Returns unmapped keys."""
    out: dict[str, torch.Tensor] = {}
    left: list[str] = []
    for k, v in neck.items():
        m = re.match(r"^(fc|bn)(\d+)\.(.+)$", k)
        if m:
            i = int(m[2])
            out[f"{3 * i + (1 if m[1] == 'bn' else 0)}.{m[3]}"] = v
            continue
        m = re.match(r"^(?:mlp\.)?(\d+)\.(.+)$", k)
        if m:
            out[f"{m[1]}.{m[2]}"] = v
            continue
        left.append(k)
    return out, left


def mlp_to_neck(mlp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MLP keys -> mmselfsup 1.x NonLinearNeck keys (inverse of :func:`mlp_from_neck`)."""
    out = {}
    for k, v in mlp.items():
        i, rest = k.split(".", 1)
        j = int(i)
        out[f"{'bn' if j % 3 == 1 else 'fc'}{j // 3}.{rest}"] = v
    return out


def fill_bn_counters(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``num_batches_tracked`` where a checkpoint lacks it (old mmcv files), so strict
    torchvision loading does not fail on a counter nobody uses at momentum != None."""
    out = dict(sd)
    for k in sd:
        if k.endswith(".running_mean"):
            c = k[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(c, torch.tensor(0, dtype=torch.long))
    return out


# ---------------------------------------------------------------------------------------------
# architecture


def infer_resnet(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """arch / in_chans / small_stem / width / last_stage_width / feature_bn of a
    torchvision-layout ResNet state dict (last_stage_width 0: the last stage has the standard
    8 x width; feature_bn / feature_whiten: byol's BatchNorm / whitening of the pooled
    features, ``feat_norm.*`` / ``feat_whiten.*``)."""
    if "conv1.weight" not in sd:
        raise CheckpointError(f"not a ResNet state dict (no conv1.weight; keys {list(sd)[:5]})")
    w = sd["conv1.weight"]
    width, in_chans, ksize = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    bottleneck = "layer1.0.conv3.weight" in sd
    layers = []
    for stage in range(1, 5):
        idx = {int(m[1]) for k in sd if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))}
        layers.append(len(idx))
    wide = 1
    if bottleneck:
        wide = max(1, int(sd["layer1.0.conv1.weight"].shape[0]) // width)
    for name, (block, lay, mult) in _RESNETS.items():
        is_bottle = block.__name__ == "Bottleneck"
        if is_bottle == bottleneck and list(lay) == layers and mult == wide:
            last = int(sd["layer4.0.conv1.weight"].shape[0]) // wide if "layer4.0.conv1.weight" \
                in sd else 8 * width
            return {"arch": name, "in_chans": in_chans, "small_stem": ksize == 3, "width": width,
                    "last_stage_width": 0 if last == 8 * width else last,
                    "feature_bn": "feat_norm.running_mean" in sd,
                    "feature_whiten": float(sd["feat_whiten.shrink"])
                    if "feat_whiten.shrink" in sd else 0.0}
    raise CheckpointError(f"no known ResNet has {'Bottleneck' if bottleneck else 'BasicBlock'} "
                          f"stages {layers} (width multiplier {wide})")


def model_info(obj: dict[str, Any], layout: str, backbone: dict[str, torch.Tensor]) -> dict:
    if layout == "byol" and isinstance(obj.get("config"), dict):
        m = obj["config"].get("model", {})
        return {"arch": m.get("arch", "resnet50"), "in_chans": int(m.get("in_chans", 3)),
                "small_stem": bool(m.get("small_stem", False)), "width": int(m.get("width", 64)),
                "stem_stride": int(m.get("stem_stride", 1)) if m.get("small_stem") else 1,
                "last_stage_width": int(m.get("last_stage_width", 0)),
                "feature_bn": bool(m.get("feature_bn", False)),
                "feature_whiten": float(m.get("feature_whiten", 0.0))}
    return infer_resnet(backbone)


def backbone_state_from_any(
    path: str | os.PathLike, which: str = "online", trust: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The backbone state dict (torchvision key names, no prefix) of a byol, mmselfsup,
    mmpretrain or torchvision checkpoint, and {arch, in_chans, small_stem, width, layout,
    unexpected}. ``which``: ``online`` or ``target`` (EMA) network where both exist."""
    if which not in ("online", "target"):
        raise CheckpointError(f"which={which!r}: choose online or target")
    obj = read_any(path, trust)
    state, layout = flat_state(obj)
    groups, unexpected = split_groups(state, layout)
    key = "target_backbone" if which == "target" else "backbone"
    if key not in groups:
        raise CheckpointError(f"'{path}' ({layout}) has no {which} backbone weights")
    bb = fill_bn_counters(groups[key])
    info = model_info(obj, layout, bb)
    if Path(path).suffix == ".safetensors" and info.get("small_stem"):
        # the stem's stride is not in the weights' shapes: byol's export writes it as metadata
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            info["stem_stride"] = int((f.metadata() or {}).get("stem_stride", 1))
    info.update(layout=layout, unexpected=unexpected, source=str(path), which=which)
    return bb, info


def backbone_from_any(path: str | os.PathLike, which: str = "online", trust: bool = False):
    """(backbone module, Config, info) from any supported checkpoint; for evaluating foreign
    weights without a ``byol import`` step. Missing and unexpected keys are logged."""
    sd, info = backbone_state_from_any(path, which, trust)
    cfg = config_for(info)
    bb = build_backbone(info["arch"], info["in_chans"], info["small_stem"], info["width"],
                        info.get("stem_stride", 1), info.get("last_stage_width", 0),
                        bool(info.get("feature_bn", False)),
                        float(info.get("feature_whiten", 0.0)))
    missing, unexpected = load_state_reporting(bb, sd, str(path), strict=False)
    report_keys(str(path), missing, unexpected + info["unexpected"])
    if missing:
        raise CheckpointError(f"'{path}': {len(missing)} backbone weights missing, e.g. "
                              f"{missing[:3]}")
    assert isinstance(cfg, Config)
    return bb, cfg, info


def report_keys(source: str, missing: list[str], unexpected: list[str]) -> None:
    if missing:
        log.warning("%s: %d missing keys: %s", source, len(missing), ", ".join(missing[:20]))
    if unexpected:
        log.warning("%s: %d unexpected keys (ignored): %s", source, len(unexpected),
                    ", ".join(unexpected[:20]))
    if not missing and not unexpected:
        log.info("%s: all keys matched", source)


def config_for(info: dict[str, Any], **aug: Any):
    cfg = Config()
    cfg.name = f"imported:{Path(info.get('source', 'weights')).name}"
    cfg.model.arch = info["arch"]
    cfg.model.in_chans = info["in_chans"]
    cfg.model.small_stem = info["small_stem"]
    cfg.model.stem_stride = int(info.get("stem_stride", 1))
    cfg.model.width = info["width"]
    cfg.model.last_stage_width = int(info.get("last_stage_width", 0))
    cfg.model.feature_bn = bool(info.get("feature_bn", False))
    cfg.model.feature_whiten = float(info.get("feature_whiten", 0.0))
    for k in ("proj_hidden_dim", "proj_dim", "pred_hidden_dim"):
        if info.get(k):
            setattr(cfg.model, k, int(info[k]))
    cfg.data.source = "synthetic"  # unknown: evaluations must name their data (--data)
    if info["in_chans"] != 3:
        cfg.augment.mean, cfg.augment.std = (0.5,), (0.25,)
    for k, v in aug.items():
        if v is not None:
            setattr(cfg.augment, k, tuple(v) if isinstance(v, (list, tuple)) else v)
    return config_from_dict(cfg.to_dict(), where=cfg.name)
