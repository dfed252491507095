"""The whole evaluation suite on Fashion-MNIST, on a CPU, in minutes.

Given a BYOL checkpoint pretrained on Fashion-MNIST (1 channel, 28 px), run kNN, the fast linear
probe, the multi-head probe, the SVM and low-shot SVM (one-vs-rest, on a class-balanced training
subset so liblinear finishes in minutes), and fine-tuning on 1% / 10% / 100% of the labels, for
the checkpoint and for the baselines the SPEC compares against (a random-init backbone of the
same architecture, raw pixels), plus optionally a supervised reference (the same ResNet trained
on the labels for N epochs, then evaluated like the others). Writes one JSON record per
(model, protocol) under OUT/eval, OUT/results.json with all records and wall times, and the
Markdown table OUT/report.md (the layout of mmselfsup's BYOL page).

Every size is configurable; ``--tiny`` shrinks everything (synthetic data at 16 px and a random
tiny checkpoint when none is given) so CI runs the full pipeline in seconds.

examples:
  python benchmarks/fmnist_suite.py --checkpoint runs/fmnist_quick/last.pt --out runs/fmnist_suite
  python benchmarks/fmnist_suite.py --checkpoint runs/fmnist_quick/last.pt --supervised-epochs 5 \\
      --finetune-epochs 5 --svm-train-cap 10000
  python benchmarks/fmnist_suite.py --tiny --out /tmp/suite
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

PROTOCOLS = ("knn", "linear", "mhead", "svm", "lowshot", "finetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="byol checkpoint pretrained on Fashion-MNIST")
    p.add_argument("--data", default="fashion_mnist:", help="SOURCE:PATH (default fashion_mnist:)")
    p.add_argument("--out", default="runs/fmnist_suite", help="output folder")
    p.add_argument("--train-limit", type=int, default=0, help="first N train samples (0: all)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test samples (0: all)")
    p.add_argument("--baselines", nargs="*", default=["random", "pixels"],
                   choices=("random", "pixels"))
    p.add_argument("--supervised-epochs", type=int, default=0,
                   help="train a supervised reference for N epochs (0: skip)")
    p.add_argument("--skip", nargs="*", default=[], choices=PROTOCOLS)
    p.add_argument("--knn-ks", type=int, nargs="+", default=[10, 20, 100, 200])
    p.add_argument("--linear-epochs", type=int, default=30)
    p.add_argument("--mhead-epochs", type=int, default=15)
    p.add_argument("--mhead-train-cap", type=int, default=20000,
                   help="class-balanced training subset for the multi-head probe (0: all)")
    p.add_argument("--svm-layers", nargs="+", default=["feature5"])
    p.add_argument("--svm-train-cap", type=int, default=5000,
                   help="class-balanced training subset for the SVMs (0: all)")
    p.add_argument("--svm-costs", default="fast", help="full, fast or a list like 0.1,1,10")
    p.add_argument("--lowshot-ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 96])
    p.add_argument("--lowshot-draws", type=int, default=5)
    p.add_argument("--finetune-fractions", type=float, nargs="+", default=[1, 10, 100],
                   help="label percentages")
    p.add_argument("--finetune-epochs", type=int, nargs="+", default=[3],
                   help="one number or one per fraction")
    p.add_argument("--finetune-batch-size", type=int, default=256)
    p.add_argument("--finetune-min-steps", type=int, default=300,
                   help="at least N optimizer steps per fraction (1%% is 2 batches per epoch)")
    p.add_argument("--n-jobs", type=int, default=2, help="parallel SVM fits")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--batch-size", type=int, default=512, help="feature extraction batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="feature cache folder (default OUT/cache)")
    p.add_argument("--tiny", action="store_true",
                   help="CI size: synthetic 16-px data, 1 epoch, 2 draws, few costs")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.tiny:
        args.data = "synthetic:"
        args.train_limit = args.train_limit or 80
        args.test_limit = args.test_limit or 40
        args.linear_epochs, args.mhead_epochs = 2, 1
        args.mhead_train_cap = args.svm_train_cap = 0
        args.svm_costs = "0.1,1"
        args.lowshot_ks, args.lowshot_draws = [1, 2], 2
        args.finetune_fractions, args.finetune_epochs = [10, 100], [1]
        args.finetune_batch_size = 32
        args.finetune_min_steps = 0
        args.supervised_epochs = min(args.supervised_epochs, 1)
        args.n_jobs = 1
        args.precision = "fp32"
        args.quiet = True
    return args


def _tiny_checkpoint(path: Path) -> Path:
    """An untrained RGB ResNet-18 (width 8, small stem, 16 px) for the synthetic CI data."""
    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.models import build_byol

    torch.manual_seed(12345)  # not the random-init baseline's seed: the rows must differ
    cfg = Config()
    cfg.name = "tiny-suite"
    cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = (
        "resnet18", 3, True, 8)
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = 32
    cfg.model.proj_dim = 16
    cfg.data.source = "synthetic"
    cfg.augment.image_size = 16
    atomic_save({"format": FORMAT, "config": cfg.to_dict(),
                 "model": build_byol(cfg.model).state_dict()}, path)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    from byol.data import open_source
    from byol.eval.features import EvalModel, resolve_device
    from byol.eval.finetune import finetune
    from byol.eval.loading import load_eval_model
    from byol.eval.report import render_markdown, summary_line, write_json
    from byol.eval.settings import (
        EvalSettings,
        FinetuneSettings,
        KnnSettings,
        LinearSettings,
        LowshotSettings,
        MheadSettings,
        SvmSettings,
        parse_data,
    )
    from byol.eval.suite import Evaluator, fit_random_whitening

    t_start = time.perf_counter()
    out = Path(args.out)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        if not args.tiny:
            raise SystemExit("fmnist_suite: --checkpoint PATH is required (or --tiny for CI)")
        ckpt = str(_tiny_checkpoint(out / "tiny_checkpoint.pt"))
    source, path = parse_data(args.data, None, None)
    byol_model = load_eval_model(ckpt, None)
    size = byol_model.image_size
    kw = dict(image_size=size, load_size=round(size * 256 / 224), synthetic_size=max(
        args.train_limit, args.test_limit, 64), seed=args.seed)
    t0 = time.perf_counter()
    train = open_source(source, path, "train", limit=args.train_limit, **kw)
    test = open_source(source, path, "test", limit=args.test_limit, **kw)
    wall: dict[str, float] = {"load_data": time.perf_counter() - t0}
    data_info = {"source": source, "path": path, "train": "train", "test": "test",
                 "num_train": len(train), "num_test": len(test), "image_size": size}
    models: list[EvalModel] = [byol_model]
    for b in args.baselines:
        models.append(load_eval_model(ckpt, b, image_size=size, mean=byol_model.mean,
                                      std=byol_model.std, seed=args.seed))
        fit_random_whitening(models[-1], train, resolve_device(args.device))
    common = dict(device=args.device, precision=args.precision, batch_size=args.batch_size,
                  num_workers=0, progress=not args.quiet, n_jobs=args.n_jobs,
                  data_info=data_info, seed=args.seed)
    cache = args.cache_dir or str(out / "cache")
    records: list[dict[str, Any]] = []

    def keep(rec: dict[str, Any]) -> None:
        print(summary_line(rec), flush=True)
        safe = rec["model"].replace("/", "_")
        write_json(rec, out / "eval" / f"{rec['protocol']}_{safe}.json")
        records.append(rec)

    if args.supervised_epochs:
        t0 = time.perf_counter()
        sup = load_eval_model(ckpt, "random", image_size=size, mean=byol_model.mean,
                              std=byol_model.std, seed=args.seed + 1)
        res = finetune(sup.backbone, train, test, image_size=size, mean=sup.mean, std=sup.std,
                       fraction=1.0, epochs=args.supervised_epochs, seed=args.seed,
                       batch_size=args.finetune_batch_size, device=args.device,
                       precision=args.precision, num_workers=0, progress=not args.quiet,
                       copy_backbone=False)
        sup.label, sup.key = "supervised", f"supervised:{time.time_ns()}"
        wall["supervised_training"] = time.perf_counter() - t0
        models.append(sup)
        from byol.eval.report import make_record

        keep(make_record("finetune", "supervised", {"100%": res}, arch=sup.arch, data=data_info,
                         settings={"epochs": args.supervised_epochs, "from": "random init"},
                         wall_s=res["wall_s"]))

    settings = EvalSettings(
        knn=KnnSettings(ks=tuple(args.knn_ks)),
        linear=LinearSettings(epochs=args.linear_epochs),
        mhead=MheadSettings(epochs=args.mhead_epochs, train_cap=args.mhead_train_cap),
        svm=SvmSettings(layers=tuple(args.svm_layers), costs=args.svm_costs,
                        train_cap=args.svm_train_cap),
        lowshot=LowshotSettings(layer=args.svm_layers[0], ks=args.lowshot_ks,
                                draws=args.lowshot_draws, costs=args.svm_costs,
                                train_cap=args.svm_train_cap),
        finetune=FinetuneSettings(fractions=tuple(args.finetune_fractions),
                                  epochs=tuple(args.finetune_epochs),
                                  batch_size=args.finetune_batch_size,
                                  min_steps=args.finetune_min_steps),
    )
    for m in models:
        ev = Evaluator(m, train, test, cache_dir=None if m.label == "supervised" else cache,
                       **common)
        todo = [p for p in PROTOCOLS if p not in args.skip]
        t0 = time.perf_counter()
        ev.prefetch(todo, list(settings.svm.layers))
        wall[f"{m.label}/features"] = time.perf_counter() - t0
        for p in PROTOCOLS:
            if p in args.skip or (p == "finetune" and m.label == "supervised"):
                continue
            if p in ("mhead", "finetune") and not ev.has_stages:
                continue  # raw pixels: no stages, nothing to train
            keep(ev.run(p, settings))
            wall[f"{m.label}/{p}"] = records[-1]["wall_s"]
    wall["total"] = time.perf_counter() - t_start
    text = render_markdown(records, title="BYOL evaluation suite: Fashion-MNIST")
    (out / "report.md").write_text(text)
    summary = {"records": records, "wall_s": wall, "checkpoint": ckpt,
               "settings": {k: v for k, v in vars(args).items()}}
    write_json(summary, out / "results.json")
    print(f"\nwrote {out / 'report.md'} and {out / 'results.json'} "
          f"({wall['total']:.0f} s in all)")
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
