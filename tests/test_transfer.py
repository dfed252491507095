"""Transfer to detection and segmentation: readers, metrics, models and the CLI, on a tiny
generated set (coloured rectangles and discs on noise) written by this file in COCO json and
VOC (xml + palette PNG) layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from byol.transfer import TransferError
from byol.transfer.datasets import (
    DetectionDataset,
    mask_to_rle,
    read_coco,
    read_detection,
    read_voc_detection,
    read_voc_segmentation,
    rle_counts_to_mask,
    rle_string_to_counts,
    voc_palette,
)
from byol.transfer.metrics import (
    coco_map,
    confusion_matrix,
    crop_mask,
    segmentation_scores,
    voc_detection_scores,
    voc_map,
)

torch.set_num_threads(1)

CLASSES = ["disc", "rect"]  # sorted, so VOC's default class order matches COCO's category ids
SIZE = 64
try:
    import pycocotools  # noqa: F401

    HAVE_COCO = True
except ImportError:
    HAVE_COCO = False


# ---------------------------------------------------------------------------------------------
# the generated data set


def _scene(rng: np.random.Generator, size: int = SIZE):
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    objects = []  # (class index, mask)
    taken = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 3))):
        for _attempt in range(20):
            c = int(rng.integers(0, 2))
            w, h = (int(v) for v in rng.integers(12, 26, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            m = np.zeros((size, size), bool)
            if c == 1:
                m[y0:y0 + h, x0:x0 + w] = True
            else:
                yy, xx = np.mgrid[:size, :size]
                r = min(w, h) / 2
                m = (yy - (y0 + r)) ** 2 + (xx - (x0 + r)) ** 2 <= r * r
            if not (m & taken).any():
                break
        taken |= m
        img[m] = (200, 60, 60) if c == 0 else (60, 200, 200)
        objects.append((c, m))
    return img, objects


def _box(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _palette_png(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def make_dataset(root, n_train: int = 4, n_test: int = 2, seed: int = 0) -> dict:
    """VOC folder root/voc and COCO files root/coco_{train,test}.json over the same images."""
    rng = np.random.default_rng(seed)
    voc = root / "voc"
    for d in ("Annotations", "JPEGImages", "SegmentationClass", "SegmentationObject",
              "ImageSets/Main", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids, coco = [], {"images": [], "annotations": [],
                         "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "rect"}]}
        for k in range(n):
            name = f"{split}_{k:03d}"
            img, objs = _scene(rng)
            Image.fromarray(img).save(voc / "JPEGImages" / f"{name}.png")
            cls = np.zeros((SIZE, SIZE), np.uint8)
            inst = np.zeros((SIZE, SIZE), np.uint8)
            xml = []
            for j, (c, m) in enumerate(objs):
                cls[m], inst[m] = c + 1, j + 1
                b = _box(m)
                xml.append(f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox>"
                           f"<xmin>{int(b[0]) + 1}</xmin><ymin>{int(b[1]) + 1}</ymin>"
                           f"<xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>")
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": k + 1, "category_id": c + 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float(m.sum()),
                    "iscrowd": 0, "segmentation": mask_to_rle(m)})
            cls[0, :] = 255  # a row of 'void' pixels: ignored by mIoU
            _palette_png(voc / "SegmentationClass" / f"{name}.png", cls)
            _palette_png(voc / "SegmentationObject" / f"{name}.png", inst)
            (voc / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.png</filename><size><width>{SIZE}</width>"
                f"<height>{SIZE}</height><depth>3</depth></size>{''.join(xml)}</annotation>")
            coco["images"].append({"id": k + 1, "file_name": f"{name}.png", "width": SIZE,
                                   "height": SIZE})
            ids.append(name)
            truth[name] = objs
        for sub in ("Main", "Segmentation"):
            (voc / "ImageSets" / sub / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (root / f"coco_{split}.json").write_text(json.dumps(coco))
    return {"voc": voc, "coco_train": root / "coco_train.json",
            "coco_test": root / "coco_test.json", "truth": truth}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("transfer"))
