"""Sweep settings for the Fashion-MNIST quick preset at a fixed number of optimiser steps.

kNN quality after N steps does not depend on the machine, so the sweep can run anywhere (a
GPU makes it fast); the winner's CPU wall time is then measured separately on the 2-core
machine. Prints one JSON line per setting: kNN top-1 (k=20) of BYOL and of the same network
at its random initialisation.

    python benchmarks/quick_sweep.py --steps 468 --out runs/sweep \
        --variant base= --variant lr2=optim.base_lr=2.0 ...
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from byol.config import load_config
from byol.data import open_source
from byol.engine import pretrain
from byol.eval.features import extract_features
from byol.eval.knn import knn_classify
from byol.models import build_byol


def knn20(backbone, cfg, train, test, device) -> float:
    kw = dict(image_size=cfg.augment.image_size, mean=cfg.augment.mean, std=cfg.augment.std,
              progress=False, batch_size=1024, device=device)
    a = extract_features(backbone, train, **kw)["pooled"]
    b = extract_features(backbone, test, **kw)["pooled"]
    return knn_classify(a, train.labels, b, test.labels, ks=(20,))["k=20"]["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="fmnist_quick")
    ap.add_argument("--steps", type=int, default=0, help="optimiser steps (0: the preset's)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=key=value,key=value (empty after NAME= for the preset as is)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    train = open_source("fashion_mnist", args.data, split="train")
    test = open_source("fashion_mnist", args.data, split="test")
    for spec in args.variant or ["base="]:
        name, _, sets = spec.partition("=")
        overrides = [s for s in sets.split(",") if s] + [
            f"log.out_dir={args.out}/{name}", "log.progress=false", "log.tensorboard=false",
            f"train.device={args.device}", f"data.path={args.data}",
        ]
        if args.steps:
            overrides.append(f"train.max_steps={args.steps}")
        cfg = load_config(args.config, overrides)
        torch.manual_seed(cfg.train.seed)
        init = build_byol(cfg.model).backbone  # the run's own initial weights (same seed)
        t = time.perf_counter()
        res = pretrain(cfg)
        wall = time.perf_counter() - t
        from byol.checkpoint import load_backbone

        trained, _ = load_backbone(res["last"])
        dev = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        row = {"variant": name, "overrides": sets, "steps": res["steps"], "train_s": round(wall, 1),
               "final_loss": res["final_loss"], "knn20_byol": knn20(trained, cfg, train, test, dev),
               "knn20_random": knn20(init, cfg, train, test, dev)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
