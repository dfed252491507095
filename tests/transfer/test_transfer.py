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


def _tiny_spec(in_chans: int = 3, seed: int = 0):
    from byol.eval.loading import load_eval_model

    return load_eval_model(None, "random", arch="resnet18", width=8, small_stem=True,
                           in_chans=in_chans, seed=seed)


def _tiny_checkpoint(path):
    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.models import build_byol

    torch.manual_seed(123)
    cfg = Config()
    cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = (
        "resnet18", 3, True, 8)
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = 32
    cfg.model.proj_dim = 16
    cfg.data.source = "synthetic"
    cfg.augment.image_size = 16
    atomic_save({"format": FORMAT, "config": cfg.to_dict(),
                 "model": build_byol(cfg.model).state_dict()}, path)
    return path


TINY_DET = {"iterations": 2, "batch_size": 2, "min_size": [64], "test_size": 64,
            "fpn_channels": 16, "box_head_dim": 32, "roi_batch": 32}


# ---------------------------------------------------------------------------------------------
# readers


def test_voc_and_coco_readers_give_the_same_boxes_and_masks(data):
    voc = read_voc_detection(data["voc"], "train")
    coco = read_coco(data["coco_train"], data["voc"] / "JPEGImages", split="train")
    auto_voc = read_detection(data["voc"], "train")
    auto_coco = read_detection(data["coco_train"], "train", images=data["voc"] / "JPEGImages")
    assert voc.classes == coco.classes == CLASSES
    assert len(voc) == len(coco) == len(auto_voc) == len(auto_coco) == 4
    assert voc.has_masks and coco.has_masks
    for i, (a, b) in enumerate(zip(voc.records, coco.records)):
        truth = data["truth"][a.image.stem]
        expect = np.array([_box(m) for _, m in truth], np.float32)
        np.testing.assert_array_equal(a.boxes, expect)
        np.testing.assert_array_equal(b.boxes, expect)
        np.testing.assert_array_equal(a.labels, [c for c, _ in truth])
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(voc.masks(i), coco.masks(i))
        np.testing.assert_array_equal(voc.masks(i), np.stack([m for _, m in truth]))
        assert a.image == b.image and (a.width, a.height) == (b.width, b.height) == (SIZE, SIZE)
    # the torch dataset: 1-based labels, flipped boxes stay inside the image and on the object
    ds = DetectionDataset(voc, 3, train=True, flip=1.0, with_masks=True)
    img, t = ds[0]
    assert img.shape == (3, SIZE, SIZE) and t["labels"].min() >= 1
    m = t["masks"][0].numpy().astype(bool)
    np.testing.assert_array_equal(t["boxes"][0].numpy(), _box(m))


def test_coco_root_layout(tmp_path, data):
    import shutil

    (tmp_path / "annotations").mkdir()
    shutil.copy(data["coco_test"], tmp_path / "annotations" / "instances_val.json")
    shutil.copytree(data["voc"] / "JPEGImages", tmp_path / "val")
    ds = read_detection(tmp_path, "val")
    assert ds.format == "coco" and len(ds) == 2 and ds.cat_ids == [1, 2]
    ref = read_voc_detection(data["voc"], "test")
    for a, b in zip(ds.records, ref.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_layout_errors_name_the_expected_layout(tmp_path, data):
    with pytest.raises(TransferError, match="neither a VOC folder.*COCO"):
        read_detection(tmp_path, "train")
    with pytest.raises(TransferError, match=r"ImageSets/Main/val\.txt; splits there: test, train"):
        read_voc_detection(data["voc"], "val")
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(TransferError, match="no JPEGImages folder"):
        read_detection(tmp_path, "train")
    with pytest.raises(TransferError, match="SegmentationClassAug.*ImageSets/Segmentation"):
        read_voc_segmentation(data["voc"], "train", mask_dir="SegmentationClassAug")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(TransferError, match="'categories'"):
        read_coco(bad)
    with pytest.raises(TransferError, match="--images DIR"):
        read_coco(data["coco_train"], tmp_path)
    seg = read_voc_segmentation(data["voc"], "test")
    assert len(seg) == 2 and seg.masks[0].parent.name == "SegmentationClass"


def test_mask_rcnn_refuses_data_without_masks(data):
    import copy

    from byol.transfer.common import resolve_settings
    from byol.transfer.detection import DETECTION_PRESETS, run_detection

    voc = copy.deepcopy(read_voc_detection(data["voc"], "train"))
    voc.records[0].instance_png = None
    s = resolve_settings(DETECTION_PRESETS, "cpu_small", {**TINY_DET, "model": "mask_rcnn_fpn"})
    with pytest.raises(TransferError, match="SegmentationObject"):
        run_detection(_tiny_spec(), voc, voc, s, device=torch.device("cpu"))


def test_rle_round_trip_and_compressed_strings():
    rng = np.random.default_rng(1)
    m = rng.random((13, 17)) > 0.6
    m[0, 0] = True
    rle = mask_to_rle(m)
    np.testing.assert_array_equal(rle_counts_to_mask(rle["counts"], 13, 17), m)
    m[0, 0] = False
    np.testing.assert_array_equal(rle_counts_to_mask(mask_to_rle(m)["counts"], 13, 17), m)
    if HAVE_COCO:
        from pycocotools import mask as mask_util

        enc = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        np.testing.assert_array_equal(rle_counts_to_mask(rle_string_to_counts(enc["counts"]),
                                                         13, 17), m)


# ---------------------------------------------------------------------------------------------
# metrics


def _gt(boxes, labels, **kw):
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels),
            "size": (100, 100), **kw}


def _pred(boxes, labels, scores=None, **kw):
    n = len(labels)
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels),
            "scores": np.array(scores if scores is not None else [0.9] * n), **kw}


BACKENDS = ["builtin"] + (["pycocotools"] if HAVE_COCO else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_map_on_hand_built_predictions(backend):
    gts = [_gt([[10, 10, 40, 40], [50, 50, 90, 80]], [0, 1]), _gt([[5, 5, 25, 35]], [0])]
    perfect = [_pred(g["boxes"], g["labels"]) for g in gts]
    r = coco_map(gts, perfect, backend=backend)
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    # one box shifted to IoU 2/3: a hit at IoU 0.50, 0.55, 0.60, 0.65 only -> AP 4/10
    g = [_gt([[0, 0, 10, 10]], [0])]
    shifted = [_pred([[2, 0, 12, 10]], [0])]
    r = coco_map(g, shifted, backend=backend)
    assert r["AP50"] == pytest.approx(1.0) and r["AP75"] == 0.0
    assert r["AP"] == pytest.approx(0.4)
    assert coco_map(g, [_pred([[0, 0, 10, 10]], [1])], backend=backend)["AP"] == 0.0
    # masks: identical masks -> 1, the masks of the IoU-2/3 boxes -> 0.4
    m = np.zeros((100, 100), bool)
    m[0:10, 0:10] = True
    m2 = np.roll(m, 2, axis=1)
    gm = [dict(g[0], masks=[crop_mask(m)])]
    assert coco_map(gm, [_pred([[0, 0, 10, 10]], [0], masks=[crop_mask(m)])], iou_type="segm",
                    backend=backend)["AP"] == pytest.approx(1.0)
    assert coco_map(gm, [_pred([[2, 0, 12, 10]], [0], masks=[crop_mask(m2)])], iou_type="segm",
                    backend=backend)["AP"] == pytest.approx(0.4)


def test_voc_ap_on_hand_built_predictions():
    gts = [_gt([[10, 10, 40, 40], [50, 50, 90, 80]], [0, 1]), _gt([[5, 5, 25, 35]], [0])]
    perfect = [_pred(g["boxes"], g["labels"]) for g in gts]
    r = voc_detection_scores(gts, perfect)
    assert r["AP50"] == pytest.approx(1.0) and r["AP"] == pytest.approx(1.0)
    g = [_gt([[0, 0, 10, 10]], [0])]
    r = voc_detection_scores(g, [_pred([[2, 0, 12, 10]], [0])])
    assert r["AP50"] == pytest.approx(1.0) and r["AP75"] == 0.0 and r["AP"] == pytest.approx(0.4)
    assert voc_detection_scores(g, [_pred([[0, 0, 10, 10]], [1])])["AP50"] == 0.0
    # 2 objects; detections TP (0.9), duplicate FP (0.8), TP (0.7):
    # recall .5 .5 1, precision 1 .5 .667 -> 11-point (6 * 1 + 5 * 2/3) / 11, area .5 + .5 * 2/3
    g2 = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    p2 = [_pred([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7])]
    assert voc_map(g2, p2)["mAP@50"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_map(g2, p2, mode="area")["mAP@50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a detection of a 'difficult' object is neither a TP nor a FP; the object is not counted
    g3 = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=np.array([False, True]))]
    p3 = [_pred([[20, 20, 30, 30], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    assert voc_map(g3, p3)["mAP@50"] == pytest.approx(1.0)


@pytest.mark.skipif(not HAVE_COCO, reason="pycocotools not installed")
def test_builtin_coco_map_matches_pycocotools():
    rng = np.random.default_rng(0)

    def boxes(n):
        xy = rng.uniform(0, 80, (n, 2))
        return np.concatenate([xy, np.minimum(xy + rng.uniform(2, 60, (n, 2)), 100)], 1)

    def mask(b):
        m = np.zeros((100, 100), bool)
        m[int(b[1]):math.ceil(b[3]), int(b[0]):math.ceil(b[2])] = True
        return crop_mask(m)

    gts, preds = [], []
    for _ in range(10):
        ng, nd = int(rng.integers(0, 6)), int(rng.integers(0, 10))
        gb, gl = boxes(ng), rng.integers(0, 3, ng)
        gts.append(_gt(gb, gl, iscrowd=rng.random(ng) < 0.15, masks=[mask(b) for b in gb],
                       areas=(gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1]) * rng.uniform(.5, 1, ng)))
        pb = np.concatenate([gb + rng.normal(0, 4, gb.shape), boxes(nd)]).clip(0, 100)
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        pl = np.concatenate([gl, rng.integers(0, 3, nd)])
        preds.append(_pred(pb, pl, rng.random(len(pl)), masks=[mask(b) for b in pb]))
    for iou_type in ("bbox", "segm"):
        a = coco_map(gts, preds, iou_type=iou_type, backend="builtin")
        b = coco_map(gts, preds, iou_type=iou_type, backend="pycocotools")
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-9, nan_ok=True), (iou_type, k)


def test_miou_confusion_matrix():
    t = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    assert segmentation_scores(confusion_matrix(t.copy(), t, 3))["mIoU"] == pytest.approx(1.0)
    p = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])  # last two pixels ignored
    cm = confusion_matrix(p, t, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = segmentation_scores(cm)
    np.testing.assert_allclose(s["IoU"], [1 / 3, 2 / 3, 1 / 2])
    assert s["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["aAcc"] == pytest.approx(4 / 6)
    # a class absent from both prediction and ground truth does not count
    assert segmentation_scores(confusion_matrix(t.copy(), t, 5))["mIoU"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(t.copy(), t, 2)


# ---------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize("kind", ["faster_rcnn_c4", "faster_rcnn_fpn", "mask_rcnn_fpn"])
def test_detector_trains_and_evaluates_on_cpu(kind, data):
    from byol.models import build_backbone
    from byol.transfer.common import resolve_settings
    from byol.transfer.detection import (
        DETECTION_PRESETS,
        build_detector,
        evaluate_predictions,
        predict,
        train_detector,
    )

    torch.manual_seed(0)
    train = read_voc_detection(data["voc"], "train")
    test = read_voc_detection(data["voc"], "test", classes=train.classes)
    s = resolve_settings(DETECTION_PRESETS, "cpu_small", {**TINY_DET, "model": kind})
    model = build_detector(build_backbone("resnet18", 3, True, 8), 2, s, mean=(0.4,) * 3,
                           std=(0.25,) * 3)
    masks = kind == "mask_rcnn_fpn"
    hist = train_detector(model, DetectionDataset(train, 3, with_masks=masks), s,
                          device=torch.device("cpu"), progress=False)
    assert len(hist["losses"]) == 2 and all(math.isfinite(v) for v in hist["losses"])
    preds = predict(model, DetectionDataset(test, 3, train=False), device=torch.device("cpu"),
                    test_size=64)
    res = evaluate_predictions(test, preds, "both", masks)
    assert 0.0 <= res["voc"]["AP50"] <= 100.0 and 0.0 <= res["bbox"]["AP"] <= 100.0
    assert ("segm" in res) == masks


def test_r50_detectors_accept_a_byol_resnet50_state_dict_strictly():
    from byol.models import build_backbone
    from byol.transfer.common import resolve_settings
    from byol.transfer.detection import (
        DETECTION_PRESETS,
        backbone_parts,
        build_detector,
        load_backbone_state,
    )

    torch.manual_seed(0)
    sd = build_backbone("resnet50").state_dict()
    for kind in ("faster_rcnn_c4", "faster_rcnn_fpn", "mask_rcnn_fpn"):
        s = resolve_settings(DETECTION_PRESETS, "voc0712_24k", {"model": kind})
        det = build_detector(build_backbone("resnet50"), 20, s, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225))
        missing, unexpected = load_backbone_state(det, sd, strict=True)
        assert not missing and not unexpected
        parts = backbone_parts(det)
        got = {k: v for p in parts.values() for k, v in p.state_dict().items()}
        assert set(got) == set(sd)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        if kind == "faster_rcnn_c4":
            assert det.backbone.out_channels == 1024 and det.roi_heads.box_head.out_channels == 2048
            assert det.roi_heads.box_predictor.cls_score.out_features == 21
    with pytest.raises(TransferError, match="does not fit the detector"):
        load_backbone_state(det, build_backbone("resnet18").state_dict())


def test_frozen_bn_and_trainable_layers():
    from torchvision.ops import FrozenBatchNorm2d

    from byol.models import build_backbone
    from byol.transfer.common import resolve_settings
    from byol.transfer.detection import DETECTION_PRESETS, build_detector

    s = resolve_settings(DETECTION_PRESETS, "cpu_small",
                         {**TINY_DET, "norm": "frozen", "trainable_layers": 3})
    det = build_detector(build_backbone("resnet18", 3, True, 8), 2, s, mean=(0.5,) * 3,
                         std=(0.25,) * 3)
    body = det.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert not body.conv1.weight.requires_grad
    assert all(p.requires_grad for p in body.layer2.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dilated_resnet_has_output_stride_8_and_keeps_weights(arch):
    from byol.models import build_backbone
    from byol.transfer.segmentation import dilate_resnet

    bb = build_backbone(arch, 3, False, 8)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    dilate_resnet(bb, 8).eval()
    f = bb.forward_stages(torch.randn(1, 3, 64, 64), ("feature4", "feature5"))
    assert f["feature4"].shape[-1] == f["feature5"].shape[-1] == 8
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    conv = bb.layer4[1].conv2 if arch == "resnet50" else bb.layer4[1].conv1
    assert conv.dilation == (4, 4) and bb.layer4[0].downsample[0].stride == (1, 1)


def test_fcn_trains_and_scores_miou(data):
    from byol.transfer.common import resolve_settings
    from byol.transfer.segmentation import SEGMENTATION_PRESETS, run_segmentation

    s = resolve_settings(SEGMENTATION_PRESETS, "cpu_small",
                         {"iterations": 2, "batch_size": 2, "crop_size": 48, "base_size": 64})
    train = read_voc_segmentation(data["voc"], "train")
    test = read_voc_segmentation(data["voc"], "test")
    rec = run_segmentation(_tiny_spec(), train, test, s, device=torch.device("cpu"),
                           class_names=["background", *CLASSES], progress=False)
    r = rec["results"]
    assert rec["protocol"] == "segmentation" and rec["settings"]["num_classes"] == 3
    assert math.isfinite(r["final_loss"]) and 0 <= r["mIoU"] <= 100
    assert set(r["IoU"]) == {"background", "disc", "rect"}
    assert np.asarray(r["confusion"]).sum() == 2 * (SIZE * SIZE - SIZE)  # the void row ignored


# ---------------------------------------------------------------------------------------------
# presets and command line


def test_presets_match_the_protocols(tmp_path):
    from byol.transfer.common import resolve_settings
    from byol.transfer.detection import DETECTION_PRESETS
    from byol.transfer.segmentation import SEGMENTATION_PRESETS

    v = DETECTION_PRESETS["voc0712_24k"]
    assert (v["model"], v["iterations"], v["batch_size"], v["lr"], v["steps"]) == (
        "faster_rcnn_c4", 24000, 16, 0.02, [18000, 22000])
    assert v["min_size"][0] == 480 and v["min_size"][-1] == 800 and v["test_size"] == 800
    c = DETECTION_PRESETS["coco_1x"]
    assert (c["model"], c["iterations"], c["steps"], c["lr"]) == (
        "mask_rcnn_fpn", 90000, [60000, 80000], 0.02)
    g = SEGMENTATION_PRESETS["voc12aug_20k"]
    assert (g["iterations"], g["batch_size"], g["crop_size"], g["lr"], g["momentum"],
            g["weight_decay"], g["output_stride"]) == (20000, 16, 512, 0.01, 0.9, 5e-4, 8)
    # overriding the batch scales the lr; overriding the iterations scales the steps
    s = resolve_settings(DETECTION_PRESETS, "voc0712_24k", {"batch_size": 8, "iterations": 12000})
    assert s["lr"] == pytest.approx(0.01) and s["steps"] == [9000, 11000]
    y = tmp_path / "mine.yaml"
    y.write_text("base: coco_1x\nmodel: faster_rcnn_fpn\niterations: 10\n")
    s = resolve_settings(DETECTION_PRESETS, str(y))
    assert (s["model"], s["iterations"], s["lr"], s["preset"]) == (
        "faster_rcnn_fpn", 10, 0.02, "mine")
    with pytest.raises(TransferError, match="unknown setting"):
        resolve_settings(DETECTION_PRESETS, "coco_1x", {"lrr": 1})


def test_cli_detection_and_segmentation_with_random_baseline(tmp_path, data, capsys):
    from byol.cli import main

    ckpt = str(_tiny_checkpoint(tmp_path / "ck.pt"))
    out = tmp_path / "det.json"
    rc = main(["transfer", "detection", "--checkpoint", ckpt, "--baselines", "random",
               "--data", str(data["voc"]), "--iterations", "1", "--batch-size", "2",
               "--min-size", "64", "--test-size", "64", "--fpn-channels", "16",
               "--set", "box_head_dim=32", "--json", str(out), "--quiet"])
    assert rc == 0
    recs = json.loads(out.read_text())["records"]
    assert [r["model"] for r in recs] == ["byol", "random-init"]
    for r in recs:
        assert r["byol_eval"] == 1 and r["protocol"] == "detection" and r["arch"] == "resnet18"
        assert math.isfinite(r["results"]["final_loss"])
        assert {"voc_AP50", "bbox_AP", "bbox_AP50"} <= set(r["results"])
    assert recs[0]["checkpoint"] == ckpt and recs[1]["checkpoint"] is None
    rc = main(["transfer", "segmentation", "--baseline", "random", "--arch", "resnet18",
               "--width", "8", "--small-stem", "--data", str(data["voc"]), "--iterations", "1",
               "--batch-size", "2", "--crop-size", "32", "--out-dir", str(tmp_path / "eval"),
               "--quiet"])
    assert rc == 0
    rec = json.loads((tmp_path / "eval" / "segmentation_random-init.json").read_text())
    assert rec["protocol"] == "segmentation" and rec["settings"]["num_classes"] == 3
    capsys.readouterr()
    assert main(["transfer", "detection", "--checkpoint", ckpt, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "byol transfer detection: error:" in err and "Annotations" in err
    assert "Traceback" not in err


def test_benchmark_tiny(tmp_path):
    import importlib.util
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer_fmnist.py"
    spec = importlib.util.spec_from_file_location("transfer_fmnist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny", "--out", str(tmp_path), "--tasks", "detection", "segmentation",
                     "--threads", "1"]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "| detection | faster_rcnn_fpn | byol |" in text
    assert "| segmentation | fcn_d8 | random-init |" in text
    assert "byol transfer detection --checkpoint" in text
    # scenes: grayscale images, boxes within the canvas, class masks in 0..10 or 255
    voc = read_voc_detection(tmp_path / "data", "train",
                             classes=(tmp_path / "data" / "class_names.txt").read_text().split())
    assert len(voc.classes) == 10 and all((r.boxes >= 0).all() and (r.boxes <= 64).all()
                                          for r in voc.records)


def test_cli_choices_match_the_modules():
    from byol.cli import transfer as cli
    from byol.transfer.detection import DETECTION_MODELS, DETECTION_PRESETS, EVALS
    from byol.transfer.segmentation import SEGMENTATION_PRESETS

    assert cli.DETECTION_MODELS == DETECTION_MODELS and cli.EVALS == EVALS
    assert cli.DETECTION_PRESET_NAMES == tuple(DETECTION_PRESETS)
    assert cli.SEGMENTATION_PRESET_NAMES == tuple(SEGMENTATION_PRESETS)


def test_report_renders_transfer_sections():
    from byol.eval.report import make_record, render_markdown

    det = make_record("detection", "byol", {"bbox": {"AP": 50.0, "AP50": 75.5, "AP75": 40.25},
                                            "voc": {"AP50": 77.0}})
    seg = make_record("segmentation", "random-init", {"mIoU": 12.5, "mAcc": 20.0, "aAcc": 90.0})
    text = render_markdown([det, seg], reference=False)
    assert "| byol | 50.00 | 75.50 | 40.25 | 77.00 |" in text
    assert "| random-init | 12.50 | 20.00 | 90.00 |" in text


def test_summary_lines_name_model_metrics_and_mark_missing_values():
    from byol.transfer.detection import summary as det_summary
    from byol.transfer.segmentation import summary as seg_summary

    det = {"model": "byol", "settings": {"model": "faster_rcnn_c4"}, "wall_s": 12.3,
           "results": {"bbox_AP": 8.2234, "voc_AP50": 18.81, "final_loss": float("nan")}}
    line = det_summary(det)
    assert line.split() == ["byol", "detection", "faster_rcnn_c4", "bbox_AP", "8.22", "voc_AP50",
                            "18.81", "loss", "–", "(12.3", "s)"]
    seg = {"model": "random", "settings": {}, "wall_s": None,
           "results": {"mIoU": 8.2, "mAcc": 12.0, "final_loss": 0.5}}
    assert seg_summary(seg).split() == ["random", "segmentation", "mIoU", "8.20", "mAcc", "12.00",
                                        "aAcc", "–", "loss", "0.50", "(0.0", "s)"]
