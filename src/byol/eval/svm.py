"""Linear SVMs on frozen features: the VOC07 classification protocol and its low-shot variant.

This follows the FAIR self-supervision benchmark that mmselfsup runs (Goyal et al., 2019):

* features per layer, each sample L2-normalised;
* one ``LinearSVC`` per class (squared hinge, L2 penalty, dual, ``class_weight {1: 2, -1: 1}``,
  ``max_iter`` 2000), cost grid {1, 10, 100} + {0.5**k, k = 4..19};
* per class the cost with the best 3-fold cross-validated average precision on trainval
  (sklearn's AP, folds not shuffled, as the original's ``cross_val_score``), then a fit on all of
  trainval; test AP is VOC's all-points interpolated AP; the score is the mean over classes;
* VOC targets use the -1/0/1 encoding: 0 (difficult) counts as a negative in training and is
  excluded at test.

Low-shot: for each k in 1, 2, 4, ..., 96, each class's SVM is trained on k positives and
(C-1)*k negatives drawn at random (VOC: 19k negatives), 5 independent seeded draws, and tested on
the full test set; as in the original, every cost of the grid is evaluated and the reported
number is the mean (and std) over draws of the mAP at the cost with the best mean.

Single-label datasets (Fashion-MNIST, CIFAR, ...) run the same code one-vs-rest: targets are +1
for the sample's class and -1 elsewhere. Classes are independent, so they run in parallel with
joblib (``n_jobs``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EvalError

log = logging.getLogger(__name__)

DEFAULT_COSTS: tuple[float, ...] = (1.0, 10.0, 100.0) + tuple(0.5**k for k in range(4, 20))
FAST_COSTS: tuple[float, ...] = (0.5**6, 0.5**2, 1.0, 10.0)
LOWSHOT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


# ---------------------------------------------------------------------------------------------
# metrics and data preparation


def voc_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """VOC all-points interpolated average precision (in [0, 1]; NaN without positives):
    precision made monotone from the right, summed over the recall steps."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives).astype(bool)
    npos = int(pos.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(pos[order])
    fp = np.cumsum(~pos[order])
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, 1)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def labels_to_targets(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Single-label classes -> one-vs-rest targets [N, C] in {-1, +1} (int8)."""
    y = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
    c = int(num_classes or int(y.max()) + 1)
    t = -np.ones((len(y), c), dtype=np.int8)
    t[np.arange(len(y)), y] = 1
    return t


def prepare_features(x: Any, normalize: bool = True) -> np.ndarray:
    """float64, C-contiguous (what liblinear uses, converted once, not per fit), rows
    L2-normalised as the protocol requires."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.ascontiguousarray(a, dtype=np.float64)
    if normalize:
        a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return a


def _targets(t: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(t.cpu().numpy() if isinstance(t, torch.Tensor) else t)
    if a.ndim != 2 or len(a) != n:
        raise EvalError(f"{what} targets must be [N={n}, C] in {{-1, 0, 1}}, got {a.shape}")
    if not np.isin(a, (-1, 0, 1)).all():
        raise EvalError(f"{what} targets must use VOC's -1/0/1 encoding")
    return a.astype(np.int8)


def _inputs(train_feats: Any, train_targets: Any, test_feats: Any, test_targets: Any,
            normalize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train features and targets, test features and targets, prepared and checked."""
    x = prepare_features(train_feats, normalize)
    xt = prepare_features(test_feats, normalize)
    if x.shape[1] != xt.shape[1]:
        raise EvalError(f"train features have {x.shape[1]} dims, test {xt.shape[1]}")
    return x, _targets(train_targets, len(x), "train"), xt, _targets(test_targets, len(xt), "test")


def _one_vs_rest(protocol, train_feats: Any, train_labels: Any, test_feats: Any,
                 test_labels: Any, num_classes: int | None, **kw: Any) -> dict[str, Any]:
    """``protocol`` (a function of features and -1/0/1 targets) on single-label classes."""
    c = num_classes or int(max(torch.as_tensor(train_labels).max(),
                               torch.as_tensor(test_labels).max())) + 1
    return protocol(train_feats, labels_to_targets(train_labels, c), test_feats,
                    labels_to_targets(test_labels, c), **kw)


def _svc(cost: float, max_iter: int):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, loss="squared_hinge", penalty="l2", dual=True,
                     class_weight={1: 2, -1: 1}, max_iter=max_iter, tol=1e-4, random_state=0)


def _fit(clf, x: np.ndarray, y: np.ndarray) -> int:
    """Fit, returning 1 if liblinear hit max_iter (reported, as the original just warns)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    return int(any(issubclass(w.category, ConvergenceWarning) for w in caught))


def _parallel(n_jobs: int):
    from joblib import Parallel

    return Parallel(n_jobs=n_jobs, backend="loky" if n_jobs != 1 else "sequential")


# ---------------------------------------------------------------------------------------------
# the VOC07 protocol


def _class_task(x: np.ndarray, t_train: np.ndarray, x_test: np.ndarray, t_test: np.ndarray,
                costs: Sequence[float], folds: int, max_iter: int) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold

    y = np.where(t_train == 1, 1, -1)  # difficult (0) are negatives in training
    npos, nneg = int((y == 1).sum()), int((y == -1).sum())
    if npos == 0 or nneg == 0:  # e.g. a --limit subset: report the class as NaN, not a crash
        log.warning("SVM: a class has %d positives and %d negatives in train; skipped", npos,
                    nneg)
        return {"cost": float("nan"), "cv_ap": [float("nan")] * len(costs), "ap": float("nan"),
                "nonconverged": 0}
    splits = min(folds, npos, nneg)
    cv_ap = np.full(len(costs), np.nan)
    nonconv = 0
    if splits >= 2:
        skf = StratifiedKFold(n_splits=splits)
        for ci, cost in enumerate(costs):
            aps = []
            for tr, va in skf.split(x, y):
                clf = _svc(cost, max_iter)
                nonconv += _fit(clf, x[tr], y[tr])
                aps.append(average_precision_score(y[va] == 1, clf.decision_function(x[va])))
            cv_ap[ci] = float(np.mean(aps))
        best = int(np.nanargmax(cv_ap))
    else:
        best = list(costs).index(1.0) if 1.0 in costs else 0
    clf = _svc(costs[best], max_iter)
    nonconv += _fit(clf, x, y)
    keep = t_test != 0  # difficult test examples are ignored
    ap = voc_ap(clf.decision_function(x_test[keep]), t_test[keep] == 1)
    return {"cost": float(costs[best]), "cv_ap": cv_ap.tolist(), "ap": ap,
            "nonconverged": nonconv}


def svm_voc07(
    train_feats: Any,
    train_targets: Any,
    test_feats: Any,
    test_targets: Any,
    *,
    costs: Sequence[float] = DEFAULT_COSTS,
    folds: int = 3,
    n_jobs: int = 1,
    normalize: bool = True,
    max_iter: int = 2000,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """VOC07 SVM protocol on multi-label targets [N, C] in {-1, 0, 1}.

    Returns {"map" (%), "ap" {class: %}, "cost" {class: chosen C}, "cv_ap" {class: best CV AP %},
    "costs", "nonconverged" (fits that hit max_iter)}.
    """
    if not costs:
        raise EvalError("the cost grid is empty")
    x, t, xt, tt = _inputs(train_feats, train_targets, test_feats, test_targets, normalize)
    c = t.shape[1]
    names = list(classes) if classes is not None else [str(i) for i in range(c)]
    from joblib import delayed

    out = _parallel(n_jobs)(
        delayed(_class_task)(x, t[:, j], xt, tt[:, j], tuple(costs), folds, max_iter)
        for j in range(c)
    )
    aps = np.array([o["ap"] for o in out], dtype=np.float64)
    if np.all(np.isnan(aps)):
        raise EvalError("no class has both positives and negatives in train and positives in "
                        "test: the SVM protocol cannot score this data")
    return {
        "map": 100.0 * float(np.nanmean(aps)),
        "ap": {n: 100.0 * o["ap"] for n, o in zip(names, out)},
        "cost": {n: o["cost"] for n, o in zip(names, out)},
        "cv_ap": {n: 100.0 * float(np.nanmax(o["cv_ap"])) if not np.all(np.isnan(o["cv_ap"]))
                  else float("nan") for n, o in zip(names, out)},
        "costs": list(costs),
        "nonconverged": int(sum(o["nonconverged"] for o in out)),
    }


def svm_single_label(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any,
                     num_classes: int | None = None, **kw: Any) -> dict[str, Any]:
    """One-vs-rest VOC07 protocol for a single-label dataset."""
    return _one_vs_rest(svm_voc07, train_feats, train_labels, test_feats, test_labels,
                        num_classes, **kw)


# ---------------------------------------------------------------------------------------------
# low-shot


def lowshot_sample(
    targets: Any, k: int, seed: int, negatives: str | int = "protocol"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class (positive indices, negative indices) of one low-shot draw.

    Exactly ``k`` positives per class (all of them if a class has fewer), drawn without
    replacement; negatives: ``"protocol"`` = (C-1)*k (VOC: 19k), ``"all"``, or an int cap. Only
    samples labelled -1 are negatives (difficult ones are never drawn). Deterministic in
    (seed, k): the same call gives the same indices.
    """
    t = np.asarray(targets)
    c = t.shape[1]
    if k < 1:
        raise EvalError(f"low-shot k={k}: must be >= 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(k)]))
    out = []
    for j in range(c):
        pos = np.flatnonzero(t[:, j] == 1)
        neg = np.flatnonzero(t[:, j] == -1)
        if negatives == "protocol":
            n_neg = (c - 1) * k
        elif negatives == "all":
            n_neg = len(neg)
        elif isinstance(negatives, int) and negatives > 0:
            n_neg = negatives
        else:
            raise EvalError(f"negatives={negatives!r}: use 'protocol', 'all' or a positive int")
        p = np.sort(rng.choice(pos, size=min(k, len(pos)), replace=False))
        q = np.sort(rng.choice(neg, size=min(n_neg, len(neg)), replace=False))
        out.append((p, q))
    return out


def _lowshot_task(x: np.ndarray, pos: np.ndarray, neg: np.ndarray, x_test: np.ndarray,
                  t_test: np.ndarray, costs: Sequence[float], max_iter: int) -> tuple[list, int]:
    idx = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos), np.int64), -np.ones(len(neg), np.int64)])
    keep = t_test != 0
    xt, positives = x_test[keep], t_test[keep] == 1
    aps, nonconv = [], 0
    for cost in costs:
        clf = _svc(cost, max_iter)
        if len(neg) == 0:
            aps.append(float("nan"))
            continue
        nonconv += _fit(clf, x[idx], y)
        aps.append(voc_ap(clf.decision_function(xt), positives))
    return aps, nonconv


def lowshot_svm(
    train_feats: Any,
    train_targets: Any,
    test_feats: Any,
    test_targets: Any,
    *,
    ks: Sequence[int] = LOWSHOT_KS,
    num_draws: int = 5,
    seed: int = 0,
    costs: Sequence[float] = DEFAULT_COSTS,
    negatives: str | int = "protocol",
    n_jobs: int = 1,
    normalize: bool = True,
    max_iter: int = 2000,
) -> dict[str, Any]:
    """Low-shot SVM: {"k=1": {"map", "std" (over draws, %), "cost", "per_draw"}, ...}.

    Draw d of k uses seed ``seed + d``; every (k, draw, class) fit is independent and they all run
    in one joblib pool.
    """
    x, t, xt, tt = _inputs(train_feats, train_targets, test_feats, test_targets, normalize)
    c = t.shape[1]
    jobs = []
    for k in ks:
        for d in range(num_draws):
            for j, (p, q) in enumerate(lowshot_sample(t, int(k), seed + d, negatives)):
                jobs.append((int(k), d, j, p, q))
    from joblib import delayed

    res = _parallel(n_jobs)(
        delayed(_lowshot_task)(x, p, q, xt, tt[:, j], tuple(costs), max_iter)
        for (_, _, j, p, q) in jobs
    )
    ap = {}
    nonconv = 0
    for (k, d, j, _, _), (aps, nc) in zip(jobs, res):
        ap.setdefault(k, np.full((num_draws, c, len(costs)), np.nan))[d, j] = aps
        nonconv += nc
    out: dict[str, Any] = {}
    for k, a in ap.items():
        maps = np.nanmean(a, axis=1) * 100.0  # [draws, costs]
        best = int(np.nanargmax(maps.mean(0)))
        out[f"k={k}"] = {"map": float(maps[:, best].mean()), "std": float(maps[:, best].std()),
                         "cost": float(costs[best]), "per_draw": maps[:, best].tolist()}
    out["nonconverged"] = nonconv
    return out


def lowshot_single_label(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any,
                         num_classes: int | None = None, **kw: Any) -> dict[str, Any]:
    """Low-shot SVM, one-vs-rest on a single-label dataset."""
    return _one_vs_rest(lowshot_svm, train_feats, train_labels, test_feats, test_labels,
                        num_classes, **kw)


# ---------------------------------------------------------------------------------------------
# VOC2007 devkit


@dataclass
class VOC07Split:
    """Image ids, JPEG paths and targets [N, 20] (1 present, -1 absent, 0 difficult)."""

    ids: list[str]
    files: list[Path]
    targets: np.ndarray
    classes: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return len(self.ids)


def _voc_root(root: str | Path) -> Path:
    r = Path(root)
    for cand in (r, r / "VOC2007", r / "VOCdevkit" / "VOC2007"):
        if (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise EvalError(f"'{root}' is not a VOC2007 devkit folder (expected ImageSets/Main and "
                    "JPEGImages under it, or under VOC2007/ or VOCdevkit/VOC2007/)")


def read_voc07(root: str | Path, split: str = "trainval") -> VOC07Split:
    """Parse ImageSets/Main/<class>_<split>.txt for the 20 classes into -1/0/1 targets."""
    base = _voc_root(root)
    main = base / "ImageSets" / "Main"
    ids: list[str] | None = None
    cols = []
    for cls in VOC_CLASSES:
        f = main / f"{cls}_{split}.txt"
        if not f.is_file():
            raise EvalError(f"{f} is missing: is '{split}' a VOC2007 split (trainval, test)?")
        rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
        try:
            these = [r[0] for r in rows]
            vals = np.array([int(r[1]) for r in rows], dtype=np.int8)
        except (IndexError, ValueError):
            raise EvalError(f"{f}: lines must read '<image id> <-1|0|1>'") from None
        if ids is None:
            ids = these
        elif these != ids:
            order = {i: n for n, i in enumerate(these)}
            if set(order) != set(ids):
                raise EvalError(f"{f} lists other images than {VOC_CLASSES[0]}_{split}.txt")
            vals = vals[[order[i] for i in ids]]
        cols.append(vals)
    assert ids is not None
    files = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    return VOC07Split(ids, files, np.stack(cols, 1), VOC_CLASSES, f"voc07/{split}")


def load_voc_images(split: VOC07Split, size: int = 224, threads: int = 8) -> torch.Tensor:
    """All images of a split squashed to size x size (no aspect preservation, as mmselfsup's VOC
    pipeline), uint8 [N, 3, size, size]."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def load(path: Path) -> np.ndarray:
        if not path.is_file():
            raise EvalError(f"{path} is missing from the VOC JPEGImages folder")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        arrays = list(pool.map(load, split.files))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
