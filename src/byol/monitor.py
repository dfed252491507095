"""The kNN monitor of a pretraining run: how well the backbone's pooled features classify a fixed
set of held-out queries against a fixed bank of training images, measured during training.

The bank and the queries are subsets drawn once from ``train.seed`` (:func:`monitor_subsets`);
when the validation split holds the training images, the queries are held out of the bank. The
first point (step 0) is the network at its random initialisation, so the last point against it
says whether pretraining helped (:func:`monitor_verdict`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn

from .config import Config
from .data import open_source
from .data import same_images as _same_images
from .data.base import subset
from .data.feeders import mix_seed
from .errors import TrainingError

log = logging.getLogger("byol")

HELPED_MARGIN = 1.0  # kNN points over random init below which a run is said not to have helped


def monitor_subsets(n_bank_src: int, n_query_src: int, bank: int, queries: int, seed: int,
                    same_images: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of the kNN monitor's bank (into the training split) and queries (into the
    validation split), a pure function of ``seed``. When both splits are the same images the
    queries are held out: no query is ever in the bank. 0 means all (what is left)."""
    g = torch.Generator().manual_seed(mix_seed(seed, 17))
    if same_images:
        perm = torch.randperm(n_bank_src, generator=g)
        nq = queries or max(1, n_bank_src // 5)
        nq = min(nq, n_bank_src - 1)
        q, rest = perm[:nq], perm[nq:]
        b = rest[:bank] if bank else rest
        return b.sort().values, q.sort().values
    b = torch.randperm(n_bank_src, generator=g)
    q = torch.randperm(n_query_src, generator=g)
    b = b[:bank] if bank else b
    q = q[:queries] if queries else q
    return b.sort().values, q.sort().values


def monitor_verdict(history: list[dict[str, Any]], k: int) -> dict[str, float] | None:
    """The kNN monitor's first point at step 0 (the network at its random initialisation) and
    its last point, from a run's metric rows; None without both."""
    key = f"knn_top1_k{k}"
    rows = [r for r in history if key in r]
    init = next((r for r in rows if r["step"] == 0), None)
    if init is None or rows[-1]["step"] == 0:
        return None
    last = rows[-1]
    return {"init": init[key], "final": last[key], "gain": round(last[key] - init[key], 2),
            "step": last["step"]}


def verdict_noise(init: float, final: float, queries: int) -> float:
    """One standard error (in points) of the difference of two top-1 accuracies ``init`` and
    ``final`` (%) measured on ``queries`` images each, as if independent (the same queries make
    it smaller, by an amount the summaries do not tell): a gain under it is within the monitor's
    noise. 500 queries near 12% give about 2 points; 1,000 near 75% about 2."""
    p, q = init / 100, final / 100
    return round(100 * math.sqrt((p * (1 - p) + q * (1 - q)) / max(queries, 1)), 2)


class KnnMonitor:
    """The monitor of one run (``log.knn_every`` / ``log.knn_every_steps``): opens its bank and
    queries on first use, measures a backbone, and keeps what it cost."""

    def __init__(self, cfg: Config, device: torch.device, is_main: bool) -> None:
        self.cfg, self.device, self.is_main = cfg, device, is_main
        self.subsets = None  # (bank source, query source), opened on the first measure
        self.indices: dict[str, Any] | None = None  # the subsets: bank, queries, same_images
        self.cost = 0.0  # seconds of the last measure
        self.total = 0.0  # seconds this session spent in the monitor
        self.last: float | None = None  # the last top-1 accuracy

    def sources(self):
        """The monitor's bank and queries: fixed subsets drawn from train.seed (see
        :func:`monitor_subsets`), opened once; the queries never include a bank image."""
        d, a, lg = self.cfg.data, self.cfg.augment, self.cfg.log
        kw = dict(image_size=a.image_size, in_memory=d.in_memory, max_memory_gb=d.max_memory_gb,
                  load_size=d.load_size, strict=d.strict, synthetic_size=d.synthetic_size,
                  seed=self.cfg.train.seed)
        train_src = open_source(d.source, d.path, d.split, **kw)
        same = d.val_split == d.split and not d.val_path
        val_src = train_src if same else open_source(d.source, d.val_path or d.path, d.val_split,
                                                     split_option="data.val_split", **kw)
        if train_src.labels is None or val_src.labels is None:
            raise TrainingError(
                f"the kNN monitor (log.knn_every / log.knn_every_steps) needs labels: data.split="
                f"{d.split!r} and data.val_split={d.val_split!r} of {d.source} must both be "
                "labeled (or set log.knn_every=0 and log.knn_every_steps=0)"
            )
        if not same and _same_images(train_src, val_src):
            same = True
        if same and self.is_main:
            log.warning("kNN monitor: data.val_split=%r holds the training images; its queries "
                        "are held out of the bank (set data.val_split to a separate split for "
                        "an honest monitor)", d.val_split)
        bank, queries = lg.knn_bank, lg.knn_queries
        if lg.knn_limit:
            bank = min(bank or lg.knn_limit, lg.knn_limit)
            queries = min(queries or lg.knn_limit, lg.knn_limit)
        bi, qi = monitor_subsets(len(train_src), len(val_src), bank, queries,
                                 self.cfg.train.seed, same)
        self.indices = {"bank": bi, "queries": qi, "same_images": same}
        return subset(train_src, bi, "bank"), subset(val_src, qi, "queries")

    def measure(self, backbone: nn.Module) -> dict[str, float]:
        """kNN top-1 and top-5 of ``backbone``'s pooled features (its train/eval mode is kept)."""
        from .eval.features import extract_features
        from .eval.knn import knn_classify

        a = self.cfg.augment
        if self.subsets is None:
            self.subsets = self.sources()
        train_src, val_src = self.subsets
        was_training = backbone.training
        kw = dict(image_size=a.image_size, mean=a.mean, std=a.std, device=self.device,
                  progress=False, batch_size=512)
        t0 = time.perf_counter()
        try:
            ftr = extract_features(backbone, train_src, **kw)["pooled"]
            fte = extract_features(backbone, val_src, **kw)["pooled"]
        finally:
            backbone.train(was_training)
        k = self.cfg.log.knn_k
        res = knn_classify(ftr, train_src.labels, fte, val_src.labels, ks=(k,))
        self.cost = time.perf_counter() - t0
        self.total += self.cost
        out = {f"knn_top1_k{k}": res[f"k={k}"]["top1"], f"knn_top5_k{k}": res[f"k={k}"]["top5"]}
        self.last = out[f"knn_top1_k{k}"]
        return out

    def what(self) -> str:
        idx = self.indices
        if idx is None:
            return "monitor subsets"
        return f"bank {len(idx['bank'])} train images, {len(idx['queries'])} held-out queries"

    def _colour_hint(self) -> str:
        """On colour images whose views are mostly in colour: the colours the two views share can
        be all a short run learns (generated shapes and textures in docs/RESULTS.md: at or below
        the random init after 7 epochs, far above it after 28 or with 80% grayscale views; the
        grayscale costs where colour is part of the class, so it is a hint, not a default)."""
        a = self.cfg.augment
        if self.cfg.model.in_chans != 3 or min(a.view1.grayscale_p, a.view2.grayscale_p) >= 0.8:
            return ""
        return (", or the colours both views share, if colour is not what tells your classes "
                "apart (try augment.view1.grayscale_p=0.8 and the same for view2)")

    def noise(self, v: dict[str, float]) -> float | None:
        """:func:`verdict_noise` of a verdict on this monitor's queries (None before any)."""
        if self.indices is None:
            return None
        return verdict_noise(v["init"], v["final"], len(self.indices["queries"]))

    def say_verdict(self, v: dict[str, float]) -> None:
        """Did pretraining help? The monitor's last kNN next to its first (the same network at
        its random initialisation, on the same bank and queries), and what to try when not."""
        k, a = self.cfg.log.knn_k, self.cfg.augment
        log.info("kNN monitor (k=%d, %s): BYOL %.2f%% after %d steps vs the same network at random "
                 "init %.2f%% (%+.2f points)", k, self.what(), v["final"], v["step"],
                 v["init"], v["gain"])
        noise = v.get("noise", 0.0)
        if HELPED_MARGIN <= v["gain"] < noise:
            log.warning(
                "pretraining is not clearly ahead of the random init: %+.2f points is within this "
                "monitor's noise (one standard error: %.1f points with %s); score the whole test set with "
                "`byol eval knn --checkpoint %s/last.pt` and the same with `--baseline random`",
                v["gain"], noise, self.what(), self.cfg.log.out_dir)
        elif v["gain"] < HELPED_MARGIN:
            log.warning(
                "pretraining has not (yet) improved the features: kNN %.2f%% vs %.2f%% at random "
                "init. Likely causes: too few optimiser steps (%d; raise train.epochs or "
                "train.time_budget), augmentation too strong for %d px images (try "
                "augment.view1.crop_scale=[0.5,1.0], the same for view2, and blur_p=0), or steps "
                "too small (raise optim.eta with LARS, or optim.base_lr)%s",
                v["final"], v["init"], v["step"], a.image_size, self._colour_hint())
