"""Object detection transfer: torchvision detectors on a BYOL backbone, trained and evaluated.

Models (the byol ResNet is wrapped, never copied, so every variant works: narrow widths, the
small-image stem, 1-channel input):

* ``faster_rcnn_fpn`` / ``mask_rcnn_fpn``: torchvision's R50-FPN layout, ``BackboneWithFPN`` on
  layer1..layer4 (``IntermediateLayerGetter`` works on our ResNet because its module names are
  torchvision's) with a max-pool P6, 7x7 RoIAlign, the two-FC box head and, for Mask R-CNN, the
  4-conv mask head.
* ``faster_rcnn_c4``: the MoCo / detectron2 R50-C4 model. conv1..layer3 (output stride 16) is the
  backbone shared by the RPN and the RoI heads; RoIAlign 14x14 on it feeds ``layer4`` (res5,
  stride 2 -> 7x7) and global average pooling as the box head, then the class / box predictor.

The backbone's BatchNorm is trainable by default (``norm="bn"``; MoCo's protocol uses SyncBN,
``norm="syncbn"``, converted when the run is distributed), or ``frozen`` (torchvision's
FrozenBatchNorm2d). ``trainable_layers`` (0-5) freezes stages as torchvision does. Multi-scale
training picks the short side from ``min_size`` per image (GeneralizedRCNNTransform); testing
uses ``test_size``.

Presets (:data:`DETECTION_PRESETS`): ``voc0712_24k`` (MoCo's detectron2 VOC config),
``coco_1x`` (Mask R-CNN R50-FPN 1x) and ``cpu_small``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .common import (
    default_workers,
    list_collate,
    pct,
    save_finetuned,
    seed_all,
    stem_stride,
    summary_line,
    train_iterations,
    transfer_record,
    warmup_multistep,
)
from .datasets import DetectionDataset, DetectionSet, TransferError
from .metrics import coco_map, crop_mask, voc_detection_scores

log = logging.getLogger("byol.transfer")

DETECTION_MODELS = ("faster_rcnn_c4", "faster_rcnn_fpn", "mask_rcnn_fpn")
NORMS = ("bn", "syncbn", "frozen")
EVALS = ("voc", "coco", "both")

_COMMON = dict(
    momentum=0.9, weight_decay=1e-4, gamma=0.1, warmup_factor=0.001, flip=0.5,
    trainable_layers=5, fpn_channels=256, box_head_dim=1024, anchor_sizes="auto",
    roi_batch=512, box_score_thresh=0.05, detections_per_img=100, eval_batch_size=1,
)
DETECTION_PRESETS: dict[str, dict[str, Any]] = {
    # MoCo detectron2 configs/pascal_voc_R_50_C4_24k_moco.yaml (Base-RCNN-C4-BN, SyncBN)
    "voc0712_24k": dict(
        _COMMON, model="faster_rcnn_c4", iterations=24000, batch_size=16, lr=0.02,
        steps=[18000, 22000], warmup_iters=100, min_size=list(range(480, 801, 32)),
        max_size=1333, test_size=800, norm="syncbn", eval="voc", train_split="trainval",
        test_split="test", rpn_pre_nms_train=12000, rpn_post_nms_train=2000,
        rpn_pre_nms_test=6000, rpn_post_nms_test=1000),
    # detectron2 mask_rcnn_R_50_FPN_1x with MoCo's SyncBN backbone
    "coco_1x": dict(
        _COMMON, model="mask_rcnn_fpn", iterations=90000, batch_size=16, lr=0.02,
        steps=[60000, 80000], warmup_iters=1000, min_size=list(range(640, 801, 32)),
        max_size=1333, test_size=800, norm="syncbn", eval="coco", train_split="train2017",
        test_split="val2017", rpn_pre_nms_train=2000, rpn_post_nms_train=1000,
        rpn_pre_nms_test=1000, rpn_post_nms_test=1000),
    # a few minutes on a laptop CPU: ~100 px images, narrow heads
    "cpu_small": dict(
        _COMMON, model="faster_rcnn_fpn", iterations=300, batch_size=4, lr=0.02, steps=[240],
        warmup_iters=30, min_size=[96], max_size=160, test_size=96, norm="bn", eval="both",
        train_split="train", test_split="test", fpn_channels=64, box_head_dim=256,
        roi_batch=128, rpn_pre_nms_train=600, rpn_post_nms_train=300, rpn_pre_nms_test=300,
        rpn_post_nms_test=100),
}


# ---------------------------------------------------------------------------------------------
# model construction


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """``bn``: unchanged (trainable BatchNorm); ``frozen``: BatchNorm2d -> FrozenBatchNorm2d with
    the same statistics; ``syncbn``: SyncBatchNorm when a process group is initialised (else
    plain BatchNorm, which is what SyncBN computes on one process)."""
    if norm not in NORMS:
        raise TransferError(f"--norm {norm!r}: choose {', '.join(NORMS)}")
    if norm == "frozen":
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                f = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                with torch.no_grad():
                    f.weight.copy_(child.weight.detach())
                    f.bias.copy_(child.bias.detach())
                    f.running_mean.copy_(child.running_mean)
                    f.running_var.copy_(child.running_var)
                setattr(module, name, f)
            else:
                convert_norm(child, norm)
        return module
    if norm == "syncbn" and torch.distributed.is_available() and torch.distributed.is_initialized():
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def freeze_stages(backbone: nn.Module, trainable_layers: int) -> None:
    """torchvision's ``trainable_layers``: 5 trains everything, 0 nothing; counts from layer4."""
    if not 0 <= trainable_layers <= 5:
        raise TransferError(f"trainable_layers={trainable_layers}: choose 0..5")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for name, p in backbone.named_parameters():
        if all(not name.startswith(t) for t in train):
            p.requires_grad_(False)


class C4Trunk(nn.Sequential):
    """conv1 .. layer3 of a byol ResNet under their own names (so the state dict loads as is)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(OrderedDict(
            (n, getattr(backbone, n))
            for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
        self.out_channels = int(backbone.stage_channels[3])


class Res5BoxHead(nn.Module):
    """detectron2's Res5ROIHeads box head: layer4 on the 14x14 RoI features, then average
    pooling -> [R, C5]."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.layer4 = backbone.layer4
        self.out_channels = int(backbone.stage_channels[4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer4(x), 1), 1)


def _anchor_sizes(setting: Any, strides: list[int]) -> list[int]:
    if setting in (None, "auto"):
        return [8 * s for s in strides]
    sizes = [int(v) for v in setting]
    if len(sizes) != len(strides):
        raise TransferError(f"anchor_sizes {sizes}: give {len(strides)} sizes (one per level) "
                            "or 'auto'")
    return sizes


def build_detector(backbone: nn.Module, num_classes: int, settings: dict[str, Any], *,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    """A torchvision detector (``settings["model"]``) around ``backbone`` (a byol ResNet whose
    weights are already loaded). ``num_classes`` excludes the background."""
    kind = settings["model"]
    if kind not in DETECTION_MODELS:
        raise TransferError(f"--model {kind!r}: choose {', '.join(DETECTION_MODELS)}")
    if not hasattr(backbone, "layer4"):
        raise TransferError("detection needs a byol ResNet backbone (conv1, layer1..layer4)")
    backbone = convert_norm(backbone, settings["norm"])
    freeze_stages(backbone, int(settings["trainable_layers"]))
    ch = [int(c) for c in backbone.stage_channels]
    s0 = stem_stride(backbone)
    common = dict(
        min_size=tuple(int(v) for v in settings["min_size"]), max_size=int(settings["max_size"]),
        image_mean=list(mean), image_std=list(std),
        rpn_pre_nms_top_n_train=int(settings["rpn_pre_nms_train"]),
        rpn_post_nms_top_n_train=int(settings["rpn_post_nms_train"]),
        rpn_pre_nms_top_n_test=int(settings["rpn_pre_nms_test"]),
        rpn_post_nms_top_n_test=int(settings["rpn_post_nms_test"]),
        box_batch_size_per_image=int(settings["roi_batch"]),
        box_score_thresh=float(settings["box_score_thresh"]),
        box_detections_per_img=int(settings["detections_per_img"]),
    )
    if kind == "faster_rcnn_c4":
        trunk = C4Trunk(backbone)
        stride = s0 * 4  # output stride of layer3
        if settings["anchor_sizes"] in (None, "auto"):
            sizes = tuple(stride * m for m in (2, 4, 8, 16, 32))  # 32..512 for the usual stem
        else:
            sizes = tuple(int(v) for v in settings["anchor_sizes"])
        anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),))
        model = FasterRCNN(
            trunk, num_classes=None, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
            box_head=Res5BoxHead(backbone),
            box_predictor=FastRCNNPredictor(ch[4], num_classes + 1), **common)
        return model
    fpn_ch = int(settings["fpn_channels"])
    body = BackboneWithFPN(backbone, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           in_channels_list=ch[1:], out_channels=fpn_ch,
                           extra_blocks=LastLevelMaxPool())
    strides = [s0 * 2**i for i in range(5)]
    sizes = _anchor_sizes(settings["anchor_sizes"], strides)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in sizes),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    dim = int(settings["box_head_dim"])
    box_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    kw = dict(rpn_anchor_generator=anchors, box_roi_pool=box_pool,
              box_head=TwoMLPHead(fpn_ch * 7 * 7, dim),
              box_predictor=FastRCNNPredictor(dim, num_classes + 1), **common)
    if kind == "faster_rcnn_fpn":
        return FasterRCNN(body, num_classes=None, **kw)
    return MaskRCNN(
        body, num_classes=None,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(fpn_ch, [fpn_ch] * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_ch, fpn_ch, num_classes + 1), **kw)


def backbone_parts(detector: nn.Module) -> dict[str, nn.Module]:
    """The modules holding the byol backbone's weights, by which keys they take: FPN models hold
    all of them in ``backbone.body``; C4 splits conv1..layer3 (trunk) and layer4 (box head)."""
    det = detector.module if hasattr(detector, "module") else detector
    if isinstance(det.backbone, C4Trunk):
        return {"trunk": det.backbone, "layer4": det.roi_heads.box_head}
    return {"body": det.backbone.body}


def load_backbone_state(detector: nn.Module, state: dict[str, torch.Tensor],
                        strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a byol / torchvision-layout ResNet state dict (``fc`` dropped) into a detector.
    Returns (missing, unexpected); ``strict`` raises on either."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    parts = backbone_parts(detector)
    missing: list[str] = []
    unexpected: list[str] = []
    if "trunk" in parts:
        groups = {"trunk": {k: v for k, v in state.items() if not k.startswith("layer4.")},
                  "layer4": {k: v for k, v in state.items() if k.startswith("layer4.")}}
    else:
        groups = {"body": state}
    for name, mod in parts.items():
        own = mod.state_dict()
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in groups[name].items()
               if k in own and own[k].shape != v.shape]
        if bad:
            raise TransferError(f"the backbone state dict does not fit the detector: {len(bad)} "
                                f"shapes differ, e.g. {'; '.join(bad[:3])}")
        r = mod.load_state_dict(groups[name], strict=False)
        missing += list(r.missing_keys)
        unexpected += list(r.unexpected_keys)
    if strict and (missing or unexpected):
        raise TransferError(f"the backbone state dict does not fit the detector: missing "
                            f"{missing[:5]}, unexpected {unexpected[:5]}")
    return missing, unexpected


# ---------------------------------------------------------------------------------------------
# training


def _param_groups(model: nn.Module, lr: float, wd: float) -> list[dict[str, Any]]:
    """detectron2's defaults: weight decay on everything but normalisation parameters."""
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
    decay, no_decay = [], []
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if p.requires_grad:
                (no_decay if isinstance(m, norm_types) else decay).append(p)
    return [{"params": decay, "weight_decay": wd, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr}]


def train_detector(model: nn.Module, train: DetectionDataset, settings: dict[str, Any], *,
                   device: torch.device, seed: int = 0, workers: int | None = None,
                   log_every: int = 20, rank: int = 0, world: int = 1,
                   progress: bool = True) -> dict[str, Any]:
    """SGD with detectron2's warmup + multi-step schedule for ``settings["iterations"]``
    iterations of ``settings["batch_size"]`` images (split over ``world`` processes)."""
    base = float(settings["lr"])

    def optimizer(m: nn.Module) -> torch.optim.Optimizer:
        groups = _param_groups(m, base, float(settings["weight_decay"]))
        return torch.optim.SGD(groups, lr=base, momentum=float(settings["momentum"]))

    def lr_at(it: int) -> float:
        return base * warmup_multistep(it, settings["steps"], float(settings["gamma"]),
                                       int(settings["warmup_iters"]),
                                       float(settings["warmup_factor"]))

    def losses_of(net: nn.Module, batch: Any, it: int):
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        parts = net(images, targets)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise TransferError(
                f"detection loss is {loss.item()} at iteration {it + 1} "
                f"({ {k: round(float(v), 4) for k, v in parts.items()} }); lower --lr or check "
                "the boxes in the data")
        return loss, parts

    return train_iterations(model, train, settings, optimizer=optimizer, lr_at=lr_at,
                            losses_of=losses_of, label="detection", device=device, seed=seed,
                            workers=workers, collate_fn=list_collate, log_every=log_every,
                            rank=rank, world=world, progress=progress)


@torch.no_grad()
def predict(model: nn.Module, data: DetectionDataset, *, device: torch.device,
            batch_size: int = 1, test_size: int | None = None,
            workers: int = 0) -> list[dict[str, Any]]:
    """Per-image predictions (numpy; 0-based labels; masks as cropped binary masks)."""
    net = model.module if hasattr(model, "module") else model
    net.to(device).eval()
    if test_size:
        net.transform.min_size = (int(test_size),)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                         collate_fn=list_collate, num_workers=workers)
    out: list[dict[str, Any]] = []
    for images, _ in loader:
        for o in net([im.to(device) for im in images]):
            p = {"boxes": o["boxes"].float().cpu().numpy(),
                 "scores": o["scores"].float().cpu().numpy(),
                 "labels": o["labels"].cpu().numpy().astype(np.int64) - 1}
            if "masks" in o:
                p["masks"] = [crop_mask(m[0] > 0.5) for m in o["masks"].cpu().numpy()]
            out.append(p)
    return out


def evaluate_predictions(data: DetectionSet, preds: list[dict[str, Any]], metric: str,
                         with_masks: bool) -> dict[str, Any]:
    """COCO mAP (bbox, and segm for masks) and/or VOC AP (11-point), in percent."""
    if metric not in EVALS:
        raise TransferError(f"--eval {metric!r}: choose {', '.join(EVALS)}")
    gts = [data.ground_truth(i, with_masks=with_masks) for i in range(len(data))]
    res: dict[str, Any] = {}
    if metric in ("voc", "both"):
        v = voc_detection_scores(gts, preds, num_classes=len(data.classes))
        per = dict(zip(data.classes, v.pop("per_class_AP50")))
        res["voc"] = pct(v)
        res["voc"]["per_class_AP50"] = {k: 100.0 * a for k, a in per.items()}
    if metric in ("coco", "both"):
        res["bbox"] = pct(coco_map(gts, preds, iou_type="bbox"))
        if with_masks:
            res["segm"] = pct(coco_map(gts, preds, iou_type="segm"))
    return res


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers a table shows: bbox AP/AP50/AP75 (COCO) or VOC AP50/AP/AP75."""
    out = {}
    if "bbox" in results:
        out.update({f"bbox_{k}": results["bbox"][k] for k in ("AP", "AP50", "AP75")})
    if "segm" in results:
        out.update({f"segm_{k}": results["segm"][k] for k in ("AP", "AP50", "AP75")})
    if "voc" in results:
        out.update({f"voc_{k}": results["voc"][k] for k in ("AP50", "AP", "AP75")})
    return out


def run_detection(model_spec: Any, train_set: DetectionSet, test_set: DetectionSet,
                  settings: dict[str, Any], *, device: torch.device, seed: int = 0,
                  workers: int | None = None, log_every: int = 20, data_info: dict | None = None,
                  save: str | None = None, rank: int = 0, world: int = 1,
                  progress: bool = True) -> dict[str, Any] | None:
    """Fine-tune ``model_spec.backbone`` (an :class:`byol.eval.features.EvalModel`) on
    ``train_set``, evaluate on ``test_set``; the evaluation record (rank 0; None elsewhere)."""
    t0 = time.perf_counter()
    with_masks = settings["model"] == "mask_rcnn_fpn"
    if with_masks and not train_set.has_masks:
        raise TransferError(f"{train_set.source}: mask_rcnn_fpn needs instance masks (COCO "
                            "segmentation, or VOC SegmentationObject/<id>.png for every image); "
                            "use --model faster_rcnn_fpn or faster_rcnn_c4")
    in_chans = int(getattr(model_spec.backbone, "in_chans", 3))
    seed_all(seed)
    if settings["norm"] == "syncbn" and not (world > 1 and device.type == "cuda"):
        log.info("norm syncbn: one process (or CPU), so plain BatchNorm computes the same")
        settings = {**settings, "norm": "bn"}
    model = build_detector(model_spec.backbone, len(train_set.classes), settings,
                           mean=model_spec.mean, std=model_spec.std)
    train_ds = DetectionDataset(train_set, in_chans, train=True, flip=float(settings["flip"]),
                                with_masks=with_masks)
    hist = train_detector(model, train_ds, settings, device=device, seed=seed, workers=workers,
                          log_every=log_every, rank=rank, world=world, progress=progress)
    if rank != 0:
        return None
    if save:
        save_finetuned(save, "byol-detector/1", settings, model, classes=list(train_set.classes))
    t1 = time.perf_counter()
    test_ds = DetectionDataset(test_set, in_chans, train=False, with_masks=False)
    preds = predict(model, test_ds, device=device, batch_size=int(settings["eval_batch_size"]),
                    test_size=int(settings["test_size"] or 0) or None,
                    workers=default_workers(device) if workers is None else workers)
    if with_masks and not test_set.has_masks:
        log.warning("%s has no instance masks: mask AP is skipped", test_set.source)
    results = evaluate_predictions(test_set, preds, settings["eval"],
                                   with_masks and test_set.has_masks)
    results.update(headline(results))
    keep = {k: v for k, v in settings.items()}
    keep.update(num_classes=len(train_set.classes), world_size=world)
    return transfer_record("detection", model_spec, results, hist, settings=keep,
                           data_info=data_info, t0=t0, t1=t1)


def summary(rec: dict[str, Any]) -> str:
    keys = [k for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "voc_AP50", "voc_AP",
                        "voc_AP75") if k in rec["results"]]
    return summary_line(rec, "detection", keys, prefix=f"{rec['settings'].get('model')}  ")
