"""Detection and segmentation metrics: COCO mAP, VOC AP and mIoU.

Every function returns fractions in [0, 1] (NaN where a metric is undefined, e.g. no ground
truth of any class in an area range); the CLI records report percentages like the rest of byol.

Inputs are per-image dicts of numpy arrays:

* ground truth: ``boxes`` float [N, 4] xyxy, ``labels`` int [N] (0-based), and optionally
  ``iscrowd`` / ``difficult`` bool [N] (both are *ignored* objects: matching one is neither a
  true nor a false positive), ``areas`` [N] (COCO's area ranges; default: box area), ``masks``
  (list of :class:`CroppedMask`, for ``iou_type="segm"``) and ``size`` (H, W).
* predictions: ``boxes``, ``scores`` [M], ``labels`` and optionally ``masks``.

:func:`coco_map` reproduces ``pycocotools.cocoeval.COCOeval`` (101-point interpolated
precision, IoU 0.50:0.05:0.95, 100 detections per image and category, crowd regions matched by
intersection over detection area) and uses pycocotools itself when it is installed
(``backend="auto"``). VOC 'difficult' objects are handed to COCO-style evaluation as crowd
(ignored) regions, since COCOeval knows no other kind of ignored object.

:func:`voc_map` follows mmdet's ``eval_map`` (VOCMetric): per class, detections sorted by score
are matched to the unmatched ground truth of highest IoU (>= threshold); matching a difficult
object counts as neither TP nor FP; AP from the 11-point interpolation (VOC2007,
``mode="11points"``) or the area under the monotone PR curve (``mode="area"``). mmdet's VOC
IoU adds 1 to widths on VOC's inclusive 1-based pixel coordinates; our boxes are the same boxes
in continuous 0-based coordinates (``xmin - 1, ymin - 1, xmax, ymax``), where the plain IoU gives
the same value.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
               "large": (96.0**2, 1e10)}
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ---------------------------------------------------------------------------------------------
# masks


@dataclass
class CroppedMask:
    """A binary mask stored as its tight bounding crop (full masks of 100 detections per image
    would not fit in memory for COCO val)."""

    y0: int
    x0: int
    m: np.ndarray  # bool [h, w]
    height: int  # full image size
    width: int

    @property
    def area(self) -> int:
        return int(self.m.sum())

    def full(self) -> np.ndarray:
        out = np.zeros((self.height, self.width), np.uint8)
        h, w = self.m.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.m
        return out


def crop_mask(mask: np.ndarray) -> CroppedMask:
    m = np.asarray(mask).astype(bool)
    H, W = m.shape
    ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    if not len(ys):
        return CroppedMask(0, 0, np.zeros((0, 0), bool), H, W)
    return CroppedMask(int(ys[0]), int(xs[0]), m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].copy(), H, W)


def _mask_inter(a: CroppedMask, b: CroppedMask) -> int:
    y0, x0 = max(a.y0, b.y0), max(a.x0, b.x0)
    y1 = min(a.y0 + a.m.shape[0], b.y0 + b.m.shape[0])
    x1 = min(a.x0 + a.m.shape[1], b.x0 + b.m.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    pa = a.m[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
    pb = b.m[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
    return int(np.count_nonzero(pa & pb))


def mask_iou(dets: Sequence[CroppedMask], gts: Sequence[CroppedMask],
             crowd: np.ndarray | None = None) -> np.ndarray:
    """[D, G] IoU; against crowd ground truth: intersection over the detection's area."""
    out = np.zeros((len(dets), len(gts)))
    da = [d.area for d in dets]
    ga = [g.area for g in gts]
    for i, d in enumerate(dets):
        for j, g in enumerate(gts):
            inter = _mask_inter(d, g)
            union = da[i] if crowd is not None and crowd[j] else da[i] + ga[j] - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# boxes


def box_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """[A, B] IoU of xyxy boxes (continuous coordinates); against crowd boxes: intersection over
    the area of the box from ``a`` (COCOeval's rule)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    if crowd is not None:
        union = np.where(np.asarray(crowd, bool)[None, :], area_a[:, None], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _ignored(gt: dict[str, Any]) -> np.ndarray:
    n = len(gt["labels"])
    ig = np.zeros(n, bool)
    for k in ("iscrowd", "difficult"):
        if gt.get(k) is not None:
            ig |= np.asarray(gt[k], bool)
    return ig


def _gt_areas(gt: dict[str, Any]) -> np.ndarray:
    if gt.get("areas") is not None:
        return np.asarray(gt["areas"], np.float64)
    b = np.asarray(gt["boxes"], np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


# ---------------------------------------------------------------------------------------------
# COCO


def coco_map(gts: Sequence[dict[str, Any]], preds: Sequence[dict[str, Any]], *,
             iou_type: str = "bbox", backend: str = "auto",
             max_dets: int = 100) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl (fractions). ``backend``: ``auto`` (pycocotools if
    installed), ``pycocotools`` or ``builtin``."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}: bbox or segm")
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} prediction lists")
    if backend not in ("auto", "pycocotools", "builtin"):
        raise ValueError(f"backend={backend!r}: auto, pycocotools or builtin")
    if backend != "builtin":
        try:
            import pycocotools  # noqa: F401
        except ImportError:
            if backend == "pycocotools":
                raise
            backend = "builtin"
    if backend != "builtin" and sum(len(p["labels"]) for p in preds) > 0:
        return _coco_map_pycocotools(gts, preds, iou_type, max_dets)
    return _coco_map_builtin(gts, preds, iou_type, max_dets)


def _coco_eval_image(gt, pred, cls, iou_type, max_det):
    """COCOeval.evaluateImg for one image and class, for every area range: (dt scores,
    {area: (dt matched [T, D], dt ignored [T, D], gt ignored [G])}) or None."""
    gsel = np.flatnonzero(np.asarray(gt["labels"]) == cls)
    dsel = np.flatnonzero(np.asarray(pred["labels"]) == cls)
    if not len(gsel) and not len(dsel):
        return None
    scores = np.asarray(pred["scores"], np.float64)[dsel]
    order = np.argsort(-scores, kind="mergesort")[:max_det]
    dsel, scores = dsel[order], scores[order]
    crowd = (_ignored(gt))[gsel]
    g_area = _gt_areas(gt)[gsel]
    if iou_type == "bbox":
        ious = box_iou(np.asarray(pred["boxes"])[dsel], np.asarray(gt["boxes"])[gsel], crowd)
    else:
        ious = mask_iou([pred["masks"][i] for i in dsel], [gt["masks"][i] for i in gsel], crowd)
    # a detection's area (for the area ranges) is its box's, in segm evaluation too: detectron2
    # and mmdet hand COCO results with a "bbox", and pycocotools' loadRes then uses w * h
    db = np.asarray(pred["boxes"], np.float64).reshape(-1, 4)[dsel]
    d_area = (db[:, 2] - db[:, 0]) * (db[:, 3] - db[:, 1])
    out = {}
    T = len(IOU_THRS)
    for name, (lo, hi) in AREA_RANGES.items():
        g_ig = crowd | (g_area < lo) | (g_area > hi)
        gorder = np.argsort(g_ig, kind="mergesort")
        g_ig_s, crowd_s = g_ig[gorder], crowd[gorder]
        iou_s = ious[:, gorder] if ious.size else np.zeros((len(dsel), len(gsel)))
        G, D = len(gsel), len(dsel)
        gtm = np.zeros((T, G), bool)
        dtm = np.zeros((T, D), bool)
        dt_ig = np.zeros((T, D), bool)
        for t, thr in enumerate(IOU_THRS):
            for d in range(D):
                best = min(thr, 1 - 1e-10)
                m = -1
                for g in range(G):
                    if gtm[t, g] and not crowd_s[g]:
                        continue
                    if m > -1 and not g_ig_s[m] and g_ig_s[g]:
                        break
                    if iou_s[d, g] < best:
                        continue
                    best, m = iou_s[d, g], g
                if m == -1:
                    continue
                dt_ig[t, d] = g_ig_s[m]
                dtm[t, d] = True
                gtm[t, m] = True
        outside = (d_area < lo) | (d_area > hi)
        dt_ig |= ~dtm & outside[None, :]
        out[name] = (dtm, dt_ig, g_ig_s)
    return scores, out


def _coco_map_builtin(gts, preds, iou_type, max_det) -> dict[str, float]:
    classes = sorted({int(c) for g in gts for c in np.asarray(g["labels"]).tolist()})
    T, R = len(IOU_THRS), len(REC_THRS)
    prec = {a: -np.ones((T, R, len(classes))) for a in AREA_RANGES}
    for k, cls in enumerate(classes):
        evals = [e for g, p in zip(gts, preds)
                 if (e := _coco_eval_image(g, p, cls, iou_type, max_det)) is not None]
        if not evals:
            continue
        scores = np.concatenate([e[0] for e in evals])
        order = np.argsort(-scores, kind="mergesort")
        for a in AREA_RANGES:
            dtm = np.concatenate([e[1][a][0] for e in evals], axis=1)[:, order]
            dt_ig = np.concatenate([e[1][a][1] for e in evals], axis=1)[:, order]
            npig = int(np.count_nonzero(~np.concatenate([e[1][a][2] for e in evals])))
            if npig == 0:
                continue
            tps = np.cumsum(dtm & ~dt_ig, axis=1).astype(np.float64)
            fps = np.cumsum(~dtm & ~dt_ig, axis=1).astype(np.float64)
            for t in range(T):
                tp, fp = tps[t], fps[t]
                q = np.zeros(R)
                if len(tp):
                    rc = tp / npig
                    pr = tp / (fp + tp + np.spacing(1))
                    pr = np.maximum.accumulate(pr[::-1])[::-1]
                    idx = np.searchsorted(rc, REC_THRS, side="left")
                    ok = idx < len(pr)
                    # pycocotools stops filling at the first recall threshold out of reach
                    first_bad = int(np.argmin(ok)) if not ok.all() else R
                    q[:first_bad] = pr[idx[:first_bad]]
                prec[a][t, :, k] = q
    return _summarise(prec)


def _summarise(prec: dict[str, np.ndarray]) -> dict[str, float]:
    def mean(x: np.ndarray) -> float:
        v = x[x > -1]
        return float(v.mean()) if v.size else float("nan")

    return {"AP": mean(prec["all"]), "AP50": mean(prec["all"][0]), "AP75": mean(prec["all"][5]),
            "APs": mean(prec["small"]), "APm": mean(prec["medium"]),
            "APl": mean(prec["large"])}


def _coco_map_pycocotools(gts, preds, iou_type, max_det) -> dict[str, float]:
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m: CroppedMask) -> dict:
        r = mask_util.encode(np.asfortranarray(m.full()))
        return r

    images, anns, dets = [], [], []
    classes = sorted({int(c) for g in gts for c in np.asarray(g["labels"]).tolist()}
                     | {int(c) for p in preds for c in np.asarray(p["labels"]).tolist()})
    for i, (g, p) in enumerate(zip(gts, preds)):
        h, w = g.get("size", (0, 0))
        if iou_type == "segm" and not h:
            raise ValueError("segm evaluation needs each ground truth's 'size' (H, W)")
        images.append({"id": i + 1, "height": int(h or 1), "width": int(w or 1)})
        ig = _ignored(g)
        areas = _gt_areas(g)
        for j, (b, c) in enumerate(zip(np.asarray(g["boxes"]).reshape(-1, 4), g["labels"])):
            a = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                 "area": float(areas[j]), "iscrowd": int(ig[j])}
            if iou_type == "segm":
                a["segmentation"] = rle(g["masks"][j])
            anns.append(a)
        for j, (b, s, c) in enumerate(zip(np.asarray(p["boxes"]).reshape(-1, 4), p["scores"],
                                          p["labels"])):
            d = {"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            if iou_type == "segm":
                d["segmentation"] = rle(p["masks"][j])
            dets.append(d)
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": anns,
                       "categories": [{"id": c + 1, "name": str(c)} for c in classes]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, max_det]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v > -1 else float("nan")) for k, v in zip(COCO_KEYS, ev.stats[:6])}


# ---------------------------------------------------------------------------------------------
# VOC


def voc_ap_from_pr(recall: np.ndarray, precision: np.ndarray, mode: str = "11points") -> float:
    """AP from a PR curve: ``11points`` (VOC2007) or ``area`` (VOC2010+)."""
    if mode == "11points":
        ap = 0.0
        for thr in np.arange(0, 1.1, 0.1):
            p = precision[recall >= thr]
            ap += float(p.max()) if p.size else 0.0
        return ap / 11
    if mode == "area":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    raise ValueError(f"mode={mode!r}: 11points or area")


def voc_map(gts: Sequence[dict[str, Any]], preds: Sequence[dict[str, Any]], *,
            num_classes: int | None = None, iou_thrs: Sequence[float] = (0.5,),
            mode: str = "11points") -> dict[str, Any]:
    """{"mAP@<thr>": mean over classes with ground truth, "per_class": {thr: [AP per class]}}
    (thresholds as percentages in the keys: ``mAP@50``)."""
    if num_classes is None:
        num_classes = 1 + max([int(np.max(g["labels"])) for g in gts if len(g["labels"])] + [-1])
    # per class: the sorted detections of every image and their IoUs, computed once
    per_class = []
    for c in range(num_classes):
        items, num_gt = [], 0
        for g, p in zip(gts, preds):
            gsel = np.flatnonzero(np.asarray(g["labels"]) == c)
            ig = _ignored(g)[gsel]
            num_gt += int(np.count_nonzero(~ig))
            dsel = np.flatnonzero(np.asarray(p["labels"]) == c)
            if not len(dsel):
                continue
            s = np.asarray(p["scores"], np.float64)[dsel]
            order = np.argsort(-s, kind="mergesort")
            ious = box_iou(np.asarray(p["boxes"])[dsel[order]], np.asarray(g["boxes"])[gsel])
            items.append((s[order], ious, ig))
        per_class.append((items, num_gt))
    out: dict[str, Any] = {"per_class": {}}
    eps = np.finfo(np.float64).eps
    for thr in iou_thrs:
        aps: list[float] = []
        for items, num_gt in per_class:
            if num_gt == 0:
                aps.append(float("nan"))
                continue
            scores, tps, fps = [], [], []
            for s, ious, ig in items:
                tp, fp = np.zeros(len(s)), np.zeros(len(s))
                if ious.shape[1] == 0:
                    fp[:] = 1
                else:
                    best, arg = ious.max(1), ious.argmax(1)
                    covered = np.zeros(ious.shape[1], bool)
                    for d in range(len(s)):
                        if best[d] < thr:
                            fp[d] = 1
                        elif ig[arg[d]]:
                            continue  # a difficult object: neither TP nor FP
                        elif not covered[arg[d]]:
                            covered[arg[d]] = True
                            tp[d] = 1
                        else:
                            fp[d] = 1
                scores.append(s)
                tps.append(tp)
                fps.append(fp)
            if scores:
                order = np.argsort(-np.concatenate(scores), kind="mergesort")
                tp = np.cumsum(np.concatenate(tps)[order])
                fp = np.cumsum(np.concatenate(fps)[order])
            else:
                tp = fp = np.zeros(0)
            aps.append(voc_ap_from_pr(tp / max(num_gt, eps), tp / np.maximum(tp + fp, eps), mode))
        valid = [a for a in aps if not np.isnan(a)]
        key = f"{round(thr * 100)}"
        out[f"mAP@{key}"] = float(np.mean(valid)) if valid else float("nan")
        out["per_class"][key] = aps
    return out


def voc_detection_scores(gts, preds, *, num_classes: int | None = None,
                         mode: str = "11points") -> dict[str, Any]:
    """AP50, AP75 and AP (mean over IoU 0.50:0.95) the VOC way, as detectron2's Pascal VOC
    evaluator reports them for MoCo's VOC table (11-point AP for VOC2007)."""
    r = voc_map(gts, preds, num_classes=num_classes, iou_thrs=list(IOU_THRS), mode=mode)
    vals = [r[f"mAP@{round(t * 100)}"] for t in IOU_THRS]
    return {"AP50": r["mAP@50"], "AP75": r["mAP@75"], "AP": float(np.nanmean(vals))
            if not all(np.isnan(vals)) else float("nan"), "per_class_AP50": r["per_class"]["50"]}


# ---------------------------------------------------------------------------------------------
# segmentation


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """[C, C] counts, rows = ground truth, columns = prediction; ``ignore_index`` pixels skipped."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {target.size}")
    keep = target != ignore_index
    t, p = target[keep], pred[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"ground-truth label {int(t.max())} >= num_classes={num_classes} "
                         f"(and not the ignore index {ignore_index})")
    return np.bincount(num_classes * t + p, minlength=num_classes**2).reshape(num_classes,
                                                                                num_classes)


def segmentation_scores(cm: np.ndarray) -> dict[str, Any]:
    """mIoU (mean over classes present in ground truth or prediction), aAcc, mAcc, per-class IoU
    (NaN for classes absent from both), as mmseg's IoUMetric."""
    cm = np.asarray(cm, np.float64)
    inter = np.diag(cm)
    gt_area, pred_area = cm.sum(1), cm.sum(0)
    union = gt_area + pred_area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
        acc = np.where(gt_area > 0, inter / gt_area, np.nan)
    total = gt_area.sum()
    return {"mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "aAcc": float(inter.sum() / total) if total else float("nan"),
            "IoU": iou.tolist()}
