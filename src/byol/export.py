"""``byol export`` / ``byol import``: move pretrained backbones between byol and other toolkits.

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

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import FORMAT, CheckpointError, atomic_save, atomic_write, load_state_reporting

log = logging.getLogger(__name__)

FORMATS = ("torchvision", "timm", "mmpretrain", "mmdet", "mmseg", "detectron2", "safetensors")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "wide_resnet50_2", "wide_resnet101_2")
DEFAULT_SUFFIX = {"torchvision": ".pth", "timm": ".pth", "mmpretrain": ".pth", "mmdet": ".pth",
                  "mmseg": ".pth", "detectron2": ".pkl", "safetensors": ".safetensors"}


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

        return dict(load_file(str(p)))
    if p.suffix == ".pkl":
        raise CheckpointError(f"'{p}': detectron2 .pkl files are an export format only; import "
                              "the original .pth instead")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if not trust:
            raise CheckpointError(
                f"'{p}' holds Python objects besides tensors ({type(e).__name__}), as mmengine "
                "checkpoints' meta often does; if you trust the file, re-run with --trust"
            ) from None
        obj = torch.load(p, map_location="cpu", weights_only=False)  # noqa: S614 - user opted in
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{p}' holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _tensors(d: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)} if isinstance(d, dict) else {}


def flat_state(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The model state dict inside a checkpoint and the layout it uses: ``byol``,
    ``mmselfsup-1.x``, ``mmselfsup-0.x``, ``mmpretrain`` or ``torchvision``."""
    if obj.get("format") == FORMAT and isinstance(obj.get("model"), dict):
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


def _fill_bn_counters(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    """arch / in_chans / small_stem / width of a torchvision-layout ResNet state dict."""
    from .models.backbones import _RESNETS

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
            return {"arch": name, "in_chans": in_chans, "small_stem": ksize == 3, "width": width}
    raise CheckpointError(f"no known ResNet has {'Bottleneck' if bottleneck else 'BasicBlock'} "
                          f"stages {layers} (width multiplier {wide})")


def _model_info(obj: dict[str, Any], layout: str, backbone: dict[str, torch.Tensor]) -> dict:
    if layout == "byol" and isinstance(obj.get("config"), dict):
        m = obj["config"].get("model", {})
        return {"arch": m.get("arch", "resnet50"), "in_chans": int(m.get("in_chans", 3)),
                "small_stem": bool(m.get("small_stem", False)), "width": int(m.get("width", 64))}
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
    bb = _fill_bn_counters(groups[key])
    info = _model_info(obj, layout, bb)
    info.update(layout=layout, unexpected=unexpected, source=str(path), which=which)
    return bb, info


def backbone_from_any(path: str | os.PathLike, which: str = "online", trust: bool = False):
    """(backbone module, Config, info) from any supported checkpoint; for evaluating foreign
    weights without a ``byol import`` step. Missing and unexpected keys are logged."""
    from .config import Config
    from .models import build_backbone

    sd, info = backbone_state_from_any(path, which, trust)
    cfg = _config_for(info)
    bb = build_backbone(info["arch"], info["in_chans"], info["small_stem"], info["width"])
    missing, unexpected = load_state_reporting(bb, sd, str(path), strict=False)
    _report_keys(str(path), missing, unexpected + info["unexpected"])
    if missing:
        raise CheckpointError(f"'{path}': {len(missing)} backbone weights missing, e.g. "
                              f"{missing[:3]}")
    assert isinstance(cfg, Config)
    return bb, cfg, info


def _report_keys(source: str, missing: list[str], unexpected: list[str]) -> None:
    if missing:
        log.warning("%s: %d missing keys: %s", source, len(missing), ", ".join(missing[:20]))
    if unexpected:
        log.warning("%s: %d unexpected keys (ignored): %s", source, len(unexpected),
                    ", ".join(unexpected[:20]))
    if not missing and not unexpected:
        log.info("%s: all keys matched", source)


def _config_for(info: dict[str, Any], **aug: Any):
    from .config import Config, config_from_dict

    cfg = Config()
    cfg.name = f"imported:{Path(info.get('source', 'weights')).name}"
    cfg.model.arch = info["arch"]
    cfg.model.in_chans = info["in_chans"]
    cfg.model.small_stem = info["small_stem"]
    cfg.model.width = info["width"]
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
        why.append("it uses the small-image stem (3x3 stride-1 conv1, no max-pool)")
    if info["width"] != 64:
        why.append(f"its width is {info['width']} (torchvision: 64)")
    if info["in_chans"] not in (1, 3):
        why.append(f"it has {info['in_chans']} input channels")
    if why and not force:
        raise CheckpointError(
            f"cannot export to {fmt}: {'; '.join(why)}. Export as safetensors instead, or pass "
            "--force to write the state dict anyway (it will only load into the same variant)"
        )
    return why


def to_torchvision(sd: dict[str, torch.Tensor], num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """torchvision key layout with a zero-initialised ``fc`` (strict loading needs one; it is
    not a trained classifier) and conv1 expanded to RGB for 1-channel backbones."""
    out = expand_gray_conv1(_fill_bn_counters(sd))
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
    from . import __version__

    return {"byol_version": __version__, "format": fmt, "arch": info["arch"],
            "in_chans": info["in_chans"], "small_stem": info["small_stem"],
            "width": info["width"], "source": info.get("source", ""),
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
        _report_keys(str(src), [], info["unexpected"])
    notes: list[str] = []
    if fmt != "safetensors":
        notes += check_torchvision_compatible(info, fmt, force)
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
    from .models import build_byol

    obj = read_any(src, trust)
    state, layout = flat_state(obj)
    groups, unexpected = split_groups(state, layout)
    if "backbone" not in groups:
        raise CheckpointError(f"'{src}' ({layout}) has no backbone weights")
    groups["backbone"] = _fill_bn_counters(groups["backbone"])
    if "target_backbone" in groups:
        groups["target_backbone"] = _fill_bn_counters(groups["target_backbone"])
    info = _model_info(obj, layout, groups["backbone"])
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
    cfg = _config_for(info, image_size=image_size, mean=mean, std=std)
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
    _report_keys(str(src), missing, all_unexpected)
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
