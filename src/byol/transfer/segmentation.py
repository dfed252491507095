"""Semantic segmentation transfer: FCN on a dilated byol ResNet, mIoU on a VOC-style folder.

The backbone's layer3 / layer4 strides become dilations (torchvision's
``replace_stride_with_dilation=[False, True, True]``: the first block of a dilated stage keeps
the previous dilation, the others use the new one), so a ResNet with the usual stem has output
stride 8 (the small-image stem: 2) with unchanged weights. torchvision's ``FCNHead`` classifies
layer4's features, an auxiliary FCNHead on layer3 adds ``aux_weight`` x its loss in training
(mmseg's FCN-D8 recipe), and the logits are upsampled bilinearly to the input size.

Training follows mmseg's ``fcn_r50-d8_512x512_20k_voc12aug``: random rescale of the short side
to ``base_size`` x U(ratio_range), random ``crop_size`` crop (re-drawn up to 10 times while one
class covers more than ``cat_max_ratio`` of it), horizontal flip, SGD (momentum 0.9, weight
decay 5e-4) with a poly schedule (power 0.9, min lr 1e-4). Testing resizes the short side to
``test_size`` (None: native size), predicts the whole image and scores at the original
resolution; pixels labelled 255 are ignored.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.segmentation.fcn import FCNHead

from .common import (
    default_workers,
    pct,
    poly,
    save_finetuned,
    seed_all,
    summary_line,
    train_iterations,
    transfer_record,
)
from .datasets import IGNORE_INDEX, SegmentationSet, TransferError, load_image, read_index_png
from .metrics import confusion_matrix, segmentation_scores

log = logging.getLogger("byol.transfer")

_COMMON = dict(momentum=0.9, weight_decay=5e-4, power=0.9, min_lr=1e-4, cat_max_ratio=0.75,
               aux_weight=0.4, flip=0.5, output_stride=8, trainable_layers=5)
SEGMENTATION_PRESETS: dict[str, dict[str, Any]] = {
    # mmseg fcn_r50-d8_4xb4-20k_voc12aug-512x512 (the mmselfsup segmentation benchmark)
    "voc12aug_20k": dict(
        _COMMON, iterations=20000, batch_size=16, lr=0.01, crop_size=512, base_size=512,
        ratio_range=[0.5, 2.0], test_size=512, norm="syncbn", num_classes=21,
        train_split="trainaug", test_split="val", mask_dir="SegmentationClassAug"),
    "cpu_small": dict(
        _COMMON, iterations=300, batch_size=8, lr=0.01, crop_size=64, base_size=96,
        ratio_range=[0.75, 1.5], test_size=None, norm="bn", num_classes=None,
        train_split="train", test_split="test", mask_dir="SegmentationClass"),
}


# ---------------------------------------------------------------------------------------------
# model


def dilate_resnet(backbone: nn.Module, output_stride: int = 8) -> nn.Module:
    """Turn layer3/layer4 strides into dilations in place (output stride 8 or 16; 32 keeps the
    network as is). Bottlenecks dilate conv2; BasicBlocks dilate conv1 (mmseg's rule)."""
    plan = {8: {"layer3": 2, "layer4": 4}, 16: {"layer4": 2}, 32: {}}
    if output_stride not in plan:
        raise TransferError(f"output_stride={output_stride}: choose 8, 16 or 32")
    prev = 1
    for name in ("layer3", "layer4"):
        if name not in plan[output_stride]:
            continue
        d = plan[output_stride][name]
        for i, block in enumerate(getattr(backbone, name)):
            dil = prev if i == 0 else d
            conv = block.conv2 if isinstance(block, tv_resnet.Bottleneck) else block.conv1
            conv.stride, conv.dilation, conv.padding = (1, 1), (dil, dil), (dil, dil)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1
        prev = d
    backbone.output_stride = output_stride
    return backbone


class FCN(nn.Module):
    """FCN head (and auxiliary head) on a dilated byol ResNet."""

    def __init__(self, backbone: nn.Module, num_classes: int, aux: bool = True) -> None:
        super().__init__()
        ch = [int(c) for c in backbone.stage_channels]
        self.backbone = backbone
        self.classifier = FCNHead(ch[4], num_classes)
        self.aux_classifier = FCNHead(ch[3], num_classes) if aux else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        f = self.backbone.forward_stages(x, ("feature4", "feature5"))
        out = {"out": F.interpolate(self.classifier(f["feature5"]), size=size, mode="bilinear",
                                    align_corners=False)}
        if self.aux_classifier is not None:
            out["aux"] = F.interpolate(self.aux_classifier(f["feature4"]), size=size,
                                       mode="bilinear", align_corners=False)
        return out


def build_segmenter(backbone: nn.Module, num_classes: int, settings: dict[str, Any]) -> FCN:
    from .detection import convert_norm, freeze_stages

    if not hasattr(backbone, "forward_stages") or not hasattr(backbone, "layer4"):
        raise TransferError("segmentation needs a byol ResNet backbone (conv1, layer1..layer4)")
    backbone = dilate_resnet(backbone, int(settings["output_stride"]))
    freeze_stages(backbone, int(settings["trainable_layers"]))
    model = FCN(backbone, num_classes, aux=float(settings["aux_weight"]) > 0)
    return convert_norm(model, settings["norm"])


# ---------------------------------------------------------------------------------------------
# data


def _resize(img: torch.Tensor, size: tuple[int, int], label: bool = False) -> torch.Tensor:
    if label:
        return F.interpolate(img[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]


class SegmentationDataset(torch.utils.data.Dataset):
    """Normalised image [C, h, w] and label int64 [h, w] (255 = ignore). Training samples are
    rescaled, cropped (padded with 0 / 255 when smaller than the crop) and flipped; test
    samples are resized to ``test_size`` with their label kept at full resolution."""

    def __init__(self, data: SegmentationSet, *, in_chans: int, mean, std, num_classes: int,
                 train: bool, settings: dict[str, Any]) -> None:
        self.data, self.in_chans, self.train, self.s = data, in_chans, train, settings
        self.num_classes = num_classes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def _label(self, i: int, shape: tuple[int, int]) -> torch.Tensor:
        lab = read_index_png(self.data.masks[i])
        if lab.shape != shape:
            raise TransferError(f"{self.data.masks[i]}: size {lab.shape[::-1]} differs from its "
                                f"image's {shape[::-1]}")
        bad = (lab != IGNORE_INDEX) & (lab >= self.num_classes)
        if bad.any():
            raise TransferError(f"{self.data.masks[i]}: label {int(lab[bad].max())} >= "
                                f"num_classes {self.num_classes}; pass --num-classes (255 is "
                                "the ignore label)")
        return torch.from_numpy(lab.astype(np.int64))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_image(self.data.images[i], self.in_chans)
        lab = self._label(i, tuple(img.shape[1:]))
        if not self.train:
            ts = self.s.get("test_size")
            if ts:
                h, w = img.shape[1:]
                r = ts / min(h, w)
                img = _resize(img, (max(1, round(h * r)), max(1, round(w * r))))
            return (img - self.mean) / self.std, lab
        s = self.s
        h, w = img.shape[1:]
        lo, hi = s["ratio_range"]
        r = s["base_size"] * random.uniform(lo, hi) / min(h, w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        img, lab = _resize(img, (nh, nw)), _resize(lab, (nh, nw), label=True)
        c = int(s["crop_size"])
        for _ in range(10):
            y0 = random.randint(0, max(0, nh - c))
            x0 = random.randint(0, max(0, nw - c))
            crop = lab[y0:y0 + c, x0:x0 + c]
            vals, counts = torch.unique(crop[crop != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < s["cat_max_ratio"]:
                break
        img, lab = img[:, y0:y0 + c, x0:x0 + c], lab[y0:y0 + c, x0:x0 + c]
        if random.random() < s["flip"]:
            img, lab = img.flip(-1), lab.flip(-1)
        img = (img - self.mean) / self.std
        ph, pw = c - img.shape[1], c - img.shape[2]
        if ph > 0 or pw > 0:
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE_INDEX)
        return img.contiguous(), lab.contiguous()


def infer_num_classes(data: SegmentationSet, limit: int = 2000) -> int:
    """1 + the largest label (255 excluded) in up to ``limit`` masks."""
    top = 0
    for m in data.masks[:limit]:
        lab = read_index_png(m)
        v = lab[lab != IGNORE_INDEX]
        if v.size:
            top = max(top, int(v.max()))
    return top + 1


# ---------------------------------------------------------------------------------------------
# training and evaluation


def train_segmenter(model: FCN, train: SegmentationDataset, settings: dict[str, Any], *,
                    device: torch.device, seed: int = 0, workers: int | None = None,
                    log_every: int = 20, rank: int = 0, world: int = 1,
                    progress: bool = True) -> dict[str, Any]:
    base = float(settings["lr"])
    aux_w = float(settings["aux_weight"])

    def optimizer(m: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in m.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=base, momentum=float(settings["momentum"]),
                               weight_decay=float(settings["weight_decay"]))

    def lr_at(it: int) -> float:
        return poly(it, int(settings["iterations"]), float(settings["power"]), base,
                    float(settings["min_lr"]))

    def losses_of(net: nn.Module, batch: Any, it: int):
        img, lab = batch
        img, lab = img.to(device, non_blocking=True), lab.to(device, non_blocking=True)
        out = net(img)
        parts = {"loss_seg": F.cross_entropy(out["out"], lab, ignore_index=IGNORE_INDEX)}
        if "aux" in out:
            parts["loss_aux"] = aux_w * F.cross_entropy(out["aux"], lab,
                                                        ignore_index=IGNORE_INDEX)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            if bool((lab != IGNORE_INDEX).any()):
                raise TransferError(f"segmentation loss is {loss.item()} at iteration {it + 1}; "
                                    "lower --lr")
            loss = loss.nan_to_num(0.0)  # an all-ignore crop: nothing to learn from
        return loss, parts

    return train_iterations(model, train, settings, optimizer=optimizer, lr_at=lr_at,
                            losses_of=losses_of, label="segmentation", device=device, seed=seed,
                            workers=workers, log_every=log_every, rank=rank, world=world,
                            progress=progress)


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, data: SegmentationDataset, *, device: torch.device,
                       num_classes: int, workers: int = 0) -> dict[str, Any]:
    """Confusion matrix over the split at the labels' resolution -> mIoU, mAcc, aAcc."""
    net = model.module if hasattr(model, "module") else model
    net.to(device).eval()
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=False, num_workers=workers)
    cm = np.zeros((num_classes, num_classes), np.int64)
    for img, lab in loader:
        logits = net(img.to(device))["out"]
        if logits.shape[-2:] != lab.shape[-2:]:
            logits = F.interpolate(logits, size=lab.shape[-2:], mode="bilinear",
                                   align_corners=False)
        pred = logits.argmax(1).cpu().numpy()
        cm += confusion_matrix(pred, lab.numpy(), num_classes)
    scores = segmentation_scores(cm)
    scores["confusion"] = cm.tolist()
    return scores


def run_segmentation(model_spec: Any, train_set: SegmentationSet, test_set: SegmentationSet,
                     settings: dict[str, Any], *, device: torch.device, seed: int = 0,
                     workers: int | None = None, log_every: int = 20,
                     data_info: dict | None = None, class_names: list[str] | None = None,
                     save: str | None = None, rank: int = 0, world: int = 1,
                     progress: bool = True) -> dict[str, Any] | None:
    """Fine-tune an FCN on ``model_spec.backbone``; the evaluation record (rank 0)."""
    t0 = time.perf_counter()
    num_classes = settings.get("num_classes")
    if not num_classes:
        num_classes = len(class_names) if class_names else infer_num_classes(train_set)
        settings = {**settings, "num_classes": int(num_classes)}
        log.info("segmentation: %d classes", num_classes)
    num_classes = int(num_classes)
    if settings["norm"] == "syncbn" and not (world > 1 and device.type == "cuda"):
        settings = {**settings, "norm": "bn"}
    in_chans = int(getattr(model_spec.backbone, "in_chans", 3))
    seed_all(seed)
    model = build_segmenter(model_spec.backbone, num_classes, settings)
    common = dict(in_chans=in_chans, mean=model_spec.mean, std=model_spec.std,
                  num_classes=num_classes, settings=settings)
    train_ds = SegmentationDataset(train_set, train=True, **common)
    hist = train_segmenter(model, train_ds, settings, device=device, seed=seed, workers=workers,
                           log_every=log_every, rank=rank, world=world, progress=progress)
    if rank != 0:
        return None
    if save:
        save_finetuned(save, "byol-segmenter/1", settings, model, num_classes=num_classes)
    t1 = time.perf_counter()
    test_ds = SegmentationDataset(test_set, train=False, **common)
    sc = evaluate_segmenter(model, test_ds, device=device, num_classes=num_classes,
                            workers=default_workers(device) if workers is None else workers)
    cm = sc.pop("confusion")
    results: dict[str, Any] = pct(sc)
    if class_names and len(class_names) == num_classes:
        results["IoU"] = dict(zip(class_names, results["IoU"]))
    keep = dict(settings)
    keep.update(world_size=world, image_size=settings["crop_size"])
    return transfer_record("segmentation", model_spec, results, hist, settings=keep,
                           data_info=data_info, t0=t0, t1=t1,
                           confusion=cm if num_classes <= 32 else None)


def summary(rec: dict[str, Any]) -> str:
    return summary_line(rec, "segmentation", ("mIoU", "mAcc", "aAcc"))
