"""PNG plots for reports: training curves from ``metrics.jsonl`` and a t-SNE of features.

matplotlib runs with the Agg backend (no display on servers and CI), imported lazily so the
rest of the package never pays for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; unreadable lines (a run killed mid-write) are skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _knn_key(rows: Sequence[dict[str, Any]]) -> str | None:
    """The kNN top-1 column: ``knn_top1`` or the monitor's ``knn_top1_k<k>``."""
    for row in rows:
        for k in row:
            if k == "knn_top1" or k.startswith("knn_top1_k"):
                return k
    return None


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _curve(plt: Any, pts: Sequence[tuple[float, float]], xlabel: str, ylabel: str,
           path: Path) -> Path:
    """One line of points with markers (a kNN curve), saved to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*pts), marker="o", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_training(metrics_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """loss.png (loss against optimizer step, with lr and tau on a second axis when logged),
    knn.png (kNN top-1 against epoch) and knn_minutes.png (against wall-clock minutes, when the
    rows carry ``elapsed_s``) from a run's metrics.jsonl. Returns the files written."""
    rows = read_metrics(metrics_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    written = []
    loss = [(r.get("step", i), r["loss"]) for i, r in enumerate(rows)
            if isinstance(r.get("loss"), (int, float))]
    if loss:
        extra = [(k, [(r.get("step", i), r[k]) for i, r in enumerate(rows)
                      if isinstance(r.get(k), (int, float))]) for k in ("lr", "tau")]
        extra = [(k, pts) for k, pts in extra if pts]
        # one panel each: tau ~ 0.99 and lr ~ 1e-1 would flatten each other on a shared axis
        fig, axes = plt.subplots(1 + len(extra), 1, sharex=True, squeeze=False,
                                 figsize=(7, 3.5 + 1.6 * len(extra)),
                                 gridspec_kw={"height_ratios": [3] + [1] * len(extra)})
        ax = axes[0, 0]
        ax.plot(*zip(*loss), lw=1)
        ax.set_ylabel("BYOL loss (in [0, 8])")
        ax.grid(alpha=0.3)
        for i, (k, pts) in enumerate(extra, start=1):
            axes[i, 0].plot(*zip(*pts), lw=1, color=f"C{i}")
            axes[i, 0].set_ylabel(k)
            axes[i, 0].grid(alpha=0.3)
        axes[-1, 0].set_xlabel("optimizer step")
        written.append(_save(plt, fig, out / "loss.png"))
    key = _knn_key(rows)
    if key:
        knn_rows = [r for r in rows if isinstance(r.get(key), (int, float))]
        pts = [(r.get("epoch", i), r[key]) for i, r in enumerate(knn_rows)]
        written.append(_curve(plt, pts, "epoch", f"kNN top-1 % ({key})", out / "knn.png"))
        timed = [(r["elapsed_s"] / 60, r[key]) for r in knn_rows
                 if isinstance(r.get("elapsed_s"), (int, float))]
        if timed:  # the monitor's rows carry the run's wall time: kNN against minutes
            written.append(_curve(plt, timed, "wall-clock minutes of pretraining",
                                  f"kNN top-1 % ({key}, monitor subset)",
                                  out / "knn_minutes.png"))
    return written


def plot_tsne(
    features: Any,
    labels: Any,
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
    title: str = "t-SNE of test features",
) -> Path:
    """2-D t-SNE (sklearn) of up to ``max_points`` features (a seeded, class-stratified
    subsample: t-SNE is quadratic), coloured by class."""
    from sklearn.manifold import TSNE

    x = np.asarray(features.cpu().numpy() if hasattr(features, "cpu") else features, np.float32)
    y = np.asarray(labels.cpu().numpy() if hasattr(labels, "cpu") else labels)
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        idx = np.sort(rng.choice(len(x), size=max_points, replace=False))
        x, y = x[idx], y[idx]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
               learning_rate="auto").fit_transform(x)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 7))
    cmap = plt.get_cmap("tab10" if len(np.unique(y)) <= 10 else "tab20")
    for i, c in enumerate(np.unique(y)):
        m = y == c
        name = classes[int(c)] if classes is not None and int(c) < len(classes) else str(c)
        ax.scatter(emb[m, 0], emb[m, 1], s=4, color=cmap(i % cmap.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=4, fontsize=8, loc="best")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, p)
