"""Transfer benchmarks: fine-tune a BYOL backbone for detection and segmentation.

* :mod:`byol.transfer.detection`: Faster R-CNN R50-C4 / R50-FPN and Mask R-CNN R50-FPN
  (torchvision) on a COCO json or Pascal VOC folder, COCO mAP and VOC AP50.
* :mod:`byol.transfer.segmentation`: FCN on a dilated ResNet (output stride 8), mIoU on a
  VOC-style folder.
* :mod:`byol.transfer.datasets`: the COCO / VOC readers and the layout errors.
* :mod:`byol.transfer.metrics`: COCO mAP, VOC AP (11-point) and mIoU, without torch.
* ``byol transfer detection|segmentation|presets`` (:mod:`byol.transfer.cli`).

Names are imported lazily so that ``from byol.transfer import TransferError`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from .datasets import TransferError

_LAZY = {
    "DETECTION_PRESETS": "detection", "DETECTION_MODELS": "detection",
    "build_detector": "detection", "load_backbone_state": "detection",
    "run_detection": "detection", "train_detector": "detection", "predict": "detection",
    "SEGMENTATION_PRESETS": "segmentation", "build_segmenter": "segmentation",
    "dilate_resnet": "segmentation", "run_segmentation": "segmentation", "FCN": "segmentation",
    "read_detection": "datasets", "read_voc_detection": "datasets", "read_coco": "datasets",
    "read_voc_segmentation": "datasets", "DetectionSet": "datasets",
    "DetectionDataset": "datasets", "SegmentationSet": "datasets", "VOC_CLASSES": "datasets",
    "coco_map": "metrics", "voc_map": "metrics", "voc_detection_scores": "metrics",
    "confusion_matrix": "metrics", "segmentation_scores": "metrics",
    "resolve_settings": "common", "load_transfer_backbone": "common",
}

__all__ = ["TransferError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
