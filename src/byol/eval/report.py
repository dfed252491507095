"""Evaluation records (the JSON every ``byol eval`` command writes) and the Markdown report.

One record per (model, protocol) run::

    {"byol_eval": 1, "protocol": "knn", "model": "byol", "checkpoint": "...", "arch": "...",
     "data": {...}, "settings": {...}, "results": {...}, "wall_s": 12.3, "time": "..."}

``results`` by protocol:

* ``knn``: {"k=10": {"top1", "top5"}, ...}
* ``linear`` (cached features, lr sweep) and ``linear_aug`` (mmselfsup's augmented probe):
  {"top1", "top5", "lr", ...}
* ``mhead``: {"feature1": {"top1", "top5"}, ...}
* ``svm``: {"layers": {"feature5": {"map", ...}, ...}, "best_layer", "map"}
* ``lowshot``: {"layer": "feature5", "k=1": {"map", "std", "cost"}, ...}
* ``finetune``: {"1%": {"top1", "top5", ...}, "10%": ..., "100%": ...}

:func:`render_markdown` lays the records out like mmselfsup's BYOL model-zoo page (kNN, linear,
multi-head, SVM + low-shot, fine-tuning), one row per model (the BYOL checkpoint, the random-init
and raw-pixel baselines computed the same way, ...), with the published ImageNet numbers as a
reference row where they exist.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("byol")

PROTOCOLS = ("knn", "linear", "linear_aug", "mhead", "svm", "lowshot", "finetune", "detection",
             "segmentation")
KNN_KS = ("k=10", "k=20", "k=100", "k=200")
FEATURES = ("feature1", "feature2", "feature3", "feature4", "feature5")
LOWSHOT_COLS = ("k=1", "k=2", "k=4", "k=8", "k=16", "k=32", "k=64", "k=96")
FINETUNE_COLS = ("1%", "10%", "100%")
MODEL_ORDER = ("byol", "random-init", "pixels", "supervised", "torchvision-supervised")

# mmselfsup's BYOL page (ResNet-50, ImageNet, 200 epochs) and the paper's semi-supervised table
REFERENCE_LABELS = {
    "knn": "published: mmselfsup BYOL R50 200e, ImageNet",
    "linear": "published: mmselfsup BYOL R50 200e, ImageNet",
    "mhead": "published: mmselfsup BYOL R50 200e, ImageNet",
    "svm": "published: mmselfsup BYOL R50 200e, VOC07",
    "finetune": "published: BYOL paper R50 1000e, ImageNet",
}
REFERENCE = {
    "knn": {"k=10": 63.9, "k=20": 64.2, "k=100": 62.9, "k=200": 61.9},
    "linear_aug": 71.8,
    "mhead": {"feature1": 15.16, "feature2": 35.26, "feature3": 47.77, "feature4": 63.10,
              "feature5": 71.21},
    "svm": {"layer": "feature5", "map": 86.31},
    "lowshot": dict(zip(LOWSHOT_COLS, (45.37, 56.83, 68.47, 74.12, 78.30, 81.53, 83.56, 84.73))),
    "finetune": {"1%": 53.2, "10%": 68.8},  # BYOL paper, ResNet-50
}


def make_record(
    protocol: str,
    model: str,
    results: dict[str, Any],
    *,
    checkpoint: str | None = None,
    arch: str | None = None,
    data: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    wall_s: float | None = None,
) -> dict[str, Any]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    return {
        "byol_eval": 1,
        "protocol": protocol,
        "model": model,
        "checkpoint": checkpoint,
        "arch": arch,
        "data": data or {},
        "settings": settings or {},
        "results": _finite(results),
        "wall_s": wall_s,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        try:
            return _finite(x.item())
        except (ValueError, RuntimeError):
            return str(x)
    return x


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Atomic JSON write (a crash never leaves a truncated results file for ``byol report``)."""
    from ..checkpoint import atomic_write

    path = Path(path)
    text = json.dumps(_finite(obj), indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def records_of(obj: Any) -> list[dict[str, Any]]:
    """The evaluation records in a loaded JSON document (a record, a list, or {"records": [...]})."""
    if isinstance(obj, dict) and obj.get("byol_eval"):
        return [obj]
    if isinstance(obj, dict) and isinstance(obj.get("records"), list):
        return [r for r in obj["records"] if isinstance(r, dict) and r.get("byol_eval")]
    if isinstance(obj, list):
        return [r for r in obj if isinstance(r, dict) and r.get("byol_eval")]
    return []


def load_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        try:
            out += records_of(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: not a readable JSON results file ({e})") from None
    return out


def find_result_files(run_dir: str | os.PathLike) -> list[Path]:
    """RUN_DIR/eval/**/*.json (what ``byol eval ... --out-dir RUN_DIR/eval`` writes)."""
    d = Path(run_dir) / "eval"
    return sorted(d.rglob("*.json")) if d.is_dir() else []


# ---------------------------------------------------------------------------------------------
# table rendering


def _fmt(v: Any, std: Any = None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, float)):
        s = f"{v:.2f}"
        if isinstance(std, (int, float)) and math.isfinite(std):
            s += f" ± {std:.1f}"
        return s
    return str(v)


def _latest(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest record per (model, protocol); later files win ties."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        key = (str(r.get("model")), str(r.get("protocol")))
        if key not in best or str(r.get("time", "")) >= str(best[key].get("time", "")):
            best[key] = r
    return best


def _models(records: Sequence[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(str(r.get("model")) for r in records))
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), names.index(m)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def render_markdown(records: Sequence[dict[str, Any]], *, title: str = "BYOL evaluation",
                    reference: bool = True, images: Sequence[str] = ()) -> str:
    """The mmselfsup-style Markdown report of a set of evaluation records."""
    latest = _latest(records)
    models = _models(records)
    out = [f"# {title}", ""]
    data = {json.dumps(r.get("data", {}), sort_keys=True) for r in records if r.get("data")}
    if data:
        out.append("Data: " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in json.loads(d).items()) for d in sorted(data)))
        out.append("")
    arches: dict[str, str] = {}
    for (m, _), r in latest.items():
        if r.get("arch") and m not in arches:
            arches[m] = str(r["arch"])

    def name(m: str) -> str:
        return f"{m} ({arches[m]})" if m in arches and arches[m] != m else m

    def table(title_: str, protocols: Sequence[str], cols: Sequence[str], cells,
              ref_cells=None):
        """A row per model with a record of any of ``protocols`` (``cells`` gets one record or
        None per protocol), then the reference row of the first protocol."""
        rows = []
        for m in models:
            recs = [latest.get((m, p)) for p in protocols]
            if any(r is not None for r in recs):
                rows.append([name(m)] + cells(*recs))
        if not rows:
            return
        if reference and ref_cells is not None:
            rows.append([f"*{REFERENCE_LABELS[protocols[0]]}*"] + ref_cells)
        out.extend([f"## {title_}", "", _table(["model", *cols], rows), ""])

    def section(title_: str, protocol: str, cols: Sequence[str], cells, ref_cells=None):
        table(title_, (protocol,), cols, lambda r: cells(r["results"]), ref_cells)

    section("kNN classification (top-1 %, weighted vote, T = 0.07)", "knn", KNN_KS,
            lambda res: [_fmt(_get(res, k, "top1")) for k in KNN_KS],
            [_fmt(REFERENCE["knn"][k]) for k in KNN_KS])
    table("Linear evaluation (GAP features)", ("linear", "linear_aug"),
          ("features + lr sweep top-1", "top-5", "augmented (mmselfsup) top-1", "top-5"),
          lambda a, b: [_fmt(_get(r, "results", k)) for r in (a, b) for k in ("top1", "top5")],
          ["–", "–", _fmt(REFERENCE["linear_aug"]), "–"])
    section("Multi-head linear evaluation (top-1 %)", "mhead", FEATURES,
            lambda res: [_fmt(_get(res, f, "top1")) for f in FEATURES],
            [_fmt(REFERENCE["mhead"][f]) for f in FEATURES])
    def svm_cells(s, lo) -> list[str]:
        sres, lres = (s or {}).get("results", {}), (lo or {}).get("results", {})
        layer = sres.get("best_layer") or lres.get("layer") or "–"
        return [str(layer), _fmt(sres.get("map"))] + [
            _fmt(_get(lres, k, "map"), _get(lres, k, "std")) for k in LOWSHOT_COLS]

    table("SVM and low-shot SVM (mAP %, mean ± std over draws)", ("svm", "lowshot"),
          ("best layer", "SVM", *LOWSHOT_COLS), svm_cells,
          [REFERENCE["svm"]["layer"], _fmt(REFERENCE["svm"]["map"])] +
          [_fmt(REFERENCE["lowshot"][k]) for k in LOWSHOT_COLS])
    section("Fine-tuning with 1% / 10% / 100% of the labels (top-1 %)", "finetune", FINETUNE_COLS,
            lambda res: [_fmt(_get(res, c, "top1")) for c in FINETUNE_COLS],
            [_fmt(REFERENCE["finetune"].get(c)) for c in FINETUNE_COLS])
    section("Detection transfer (%)", "detection", ("COCO box AP", "AP50", "AP75", "VOC AP50"),
            lambda res: [_fmt(_get(res, "bbox", "AP")), _fmt(_get(res, "bbox", "AP50")),
                         _fmt(_get(res, "bbox", "AP75")), _fmt(_get(res, "voc", "AP50"))])
    section("Segmentation transfer (%)", "segmentation", ("mIoU", "mAcc", "aAcc"),
            lambda res: [_fmt(res.get("mIoU")), _fmt(res.get("mAcc")), _fmt(res.get("aAcc"))])
    times = []
    for m in models:
        row = [name(m)]
        any_t = False
        for p in PROTOCOLS:
            r = latest.get((m, p))
            w = r.get("wall_s") if r else None
            any_t |= w is not None
            row.append(f"{w:.1f}" if isinstance(w, (int, float)) else "–")
        if any_t:
            times.append(row)
    if times:
        out.extend(["## Wall time (s)", "", _table(["model", *PROTOCOLS], times), ""])
    if images:
        out.extend(["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""])
    return "\n".join(out)


def write_report(run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 plots: bool = True, reference: bool = True,
                 extra: Sequence[str | os.PathLike] = (), neighbours: int = 6,
                 data: str | None = None, test_data: str | None = None,
                 device: str = "auto") -> tuple[Path, str]:
    """Gather RUN_DIR/eval/*.json (+ ``extra`` files), draw the training plots from
    RUN_DIR/metrics.jsonl and, when RUN_DIR/last.pt exists, the nearest-neighbour picture of
    ``neighbours`` held-out queries (0: none; ``data`` / ``test_data`` replace the data paths
    the run recorded); write the Markdown (default RUN_DIR/report.md); returns its path and
    text."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"run folder '{run}' does not exist")
    files = find_result_files(run) + [Path(e) for e in extra]
    records = load_records(files)
    images: list[str] = []
    out_path = Path(out) if out else run / "report.md"
    if plots:
        from .plots import plot_training

        metrics = run / "metrics.jsonl"
        if metrics.is_file():
            images += [os.path.relpath(p, out_path.parent)
                       for p in plot_training(metrics, run / "plots")]
        images += [os.path.relpath(p, out_path.parent)
                   for p in sorted((run / "eval").glob("*.png"))] if (run / "eval").is_dir() else []
        last = run / "last.pt"
        if neighbours and last.is_file():
            from ..errors import ByolError
            from .neighbours import neighbour_picture

            try:
                pic = neighbour_picture(last, run / "plots" / "neighbours.png", queries=neighbours,
                                        data=data, test_data=test_data, device=device)
                images.append(os.path.relpath(pic["png"], out_path.parent))
            except (ByolError, OSError) as e:
                log.warning("nearest-neighbour picture skipped: %s (byol report --data PATH "
                            "names the images; --neighbours 0 turns it off)", e)
    if not records and not images:
        raise ValueError(f"no evaluation results in '{run / 'eval'}' and no metrics.jsonl in "
                         f"'{run}': run `byol eval all --checkpoint ... --out-dir {run / 'eval'}`")
    text = render_markdown(records, title=f"BYOL evaluation: {run.name}", reference=reference,
                           images=images)
    from ..checkpoint import atomic_write

    atomic_write(out_path, lambda tmp: Path(tmp).write_text(text))
    return out_path, text


def summary_line(rec: dict[str, Any]) -> str:
    """One human-readable line per record."""
    r, p = rec["results"], rec["protocol"]

    def f(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) else "–"

    if p == "knn":
        body = "  ".join(f"{k} {f(v.get('top1'))}" for k, v in r.items() if isinstance(v, dict))
    elif p in ("linear", "linear_aug"):
        body = f"top-1 {f(r.get('top1'))}  top-5 {f(r.get('top5'))}  lr {r.get('lr')}"
    elif p == "mhead":
        body = "  ".join(f"{k} {f(v.get('top1'))}" for k, v in r.items())
    elif p == "svm":
        body = "  ".join(f"{k} {f(v.get('map'))}" for k, v in r["layers"].items())
        body += f"  (best {r['best_layer']})"
    elif p == "lowshot":
        body = "  ".join(f"{k} {f(v.get('map'))}" for k, v in r.items()
                         if k.startswith("k=")) + f"  [{r.get('layer')}]"
    elif p == "finetune":
        body = "  ".join(f"{k} {f(v.get('top1'))}" for k, v in r.items())
    else:
        body = str(r)
    return f"{rec['model']:>14s} {p:<10s} {body}   ({rec.get('wall_s') or 0:.1f} s)"
