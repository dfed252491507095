"""Time to accuracy: Fashion-MNIST kNN (k=20) against wall-clock minutes of pretraining, for our
quick recipe and for lightly's documented BYOL loop (``benchmarks/peers.py``: its module, its
``BYOLTransform`` on PIL images, SGD lr 0.06, ``update_momentum`` with lightly's cosine
schedule, ResNet-18 width 64 small stem at 32 px, batch 256, fp32 NCHW as documented).

Both are scored the same way, on the same images: the backbone's pooled features of a seeded
subset of the train images as the bank (``--bank``, default 5,000) and of the test images as the
queries (``--queries``, default 2,000), weighted kNN k=20 T=0.07 (``byol.eval``), the subsets
drawn by ``byol.monitor.monitor_subsets`` from ``--seed`` (a width-64 ResNet-18 scores about 40
images/s on one AVX2 core, so the full 70k images would cost half an hour per point). The clock
counts training only: it stops while a point is measured. Ours measures its points with the
engine's kNN monitor (``log.knn_bank``/``log.knn_queries`` set to the same sizes, same seed); the
minutes are the monitor rows' ``elapsed_s - monitor_s``.

    python benchmarks/time_to_accuracy.py lightly --minutes 30 --out runs/tta --threads 1 --workers 0
    python benchmarks/time_to_accuracy.py byol --out runs/tta --threads 1 --set train.time_budget=10m
    python benchmarks/time_to_accuracy.py pixels --out runs/tta
    python benchmarks/time_to_accuracy.py plot --out runs/tta --png docs/time_to_accuracy.png

``pixels`` scores byol's raw-pixel baseline (the flattened, normalised evaluation crop) on the
same bank and queries through the same feature path as the networks: the line a pretrained
network has to beat, drawn by ``plot``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

FMNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = (0.2860,), (0.3530,)


def _append(out: Path, row: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "points.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _subsets(train, test, args: argparse.Namespace):
    from byol.data.base import subset as subset_source
    from byol.monitor import monitor_subsets

    bi, qi = monitor_subsets(len(train), len(test), args.bank, args.queries, args.seed, False)
    return subset_source(train, bi, "bank"), subset_source(test, qi, "queries")


def _knn20(backbone, train, test, image_size: int, mean, std) -> float:
    from byol.eval.features import extract_features
    from byol.eval.knn import knn_classify

    kw = dict(image_size=image_size, mean=mean, std=std, progress=False, batch_size=512, device="cpu")
    a = extract_features(backbone, train, **kw)["pooled"]
    b = extract_features(backbone, test, **kw)["pooled"]
    return knn_classify(a, train.labels, b, test.labels, ks=(20,))["k=20"]["top1"]


def run_lightly(args: argparse.Namespace) -> None:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from peers import LoopSpec, _backbone, _LightlyBYOL, _PILDataset, lightly_transform

    from byol.data import open_source

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = open_source("fashion_mnist", args.data, "train")
    test = open_source("fashion_mnist", args.data, "test")
    spec = LoopSpec(arch="resnet18", width=64, small_stem=True, in_chans=3, image_size=32,
                    batch=256, device="cpu", precision="fp32", channels_last=False)
    bank, queries = _subsets(train, test, args)
    backbone = _backbone(spec)
    model = _LightlyBYOL(backbone, backbone.num_features, spec.proj_hidden_dim, spec.proj_dim)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    rgb = train.images.repeat(1, 3, 1, 1)
    mean3, std3 = MEAN * 3, STD * 3
    dataset = _PILDataset(rgb, len(rgb), lightly_transform(32, mean3, std3))
    out = Path(args.out)
    marks = sorted(float(m) for m in args.marks.split(","))
    marks = [m for m in marks if m <= args.minutes]
    trained_s, images, epoch, step = 0.0, 0, 0, 0

    def point() -> None:
        model.eval()
        acc = _knn20(model.backbone, bank, queries, 32, mean3, std3)
        model.train()
        _append(out, {"library": "lightly", "minutes": round(trained_s / 60, 3), "images": images,
                      "steps": step, "knn20": round(acc, 2), "threads": args.threads,
                      "workers": args.workers})

    point()  # minute 0: lightly's network at its random init
    marks = [m for m in marks if m > 0]
    model.train()
    while marks:
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True, drop_last=True,
                                             num_workers=args.workers)
        m = cosine_schedule(epoch, 10, 0.996, 1)  # the example's per-epoch schedule (10 epochs)
        t = time.perf_counter()
        for (x0, x1), _ in loader:
            update_momentum(model.backbone, model.backbone_momentum, m=m)
            update_momentum(model.projection_head, model.projection_head_momentum, m=m)
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step, images = step + 1, images + 256
            now = time.perf_counter()
            trained_s += now - t
            t = now
            if trained_s >= marks[0] * 60:
                marks.pop(0)
                point()
                t = time.perf_counter()
                if not marks:
                    break
        epoch += 1


def run_byol(args: argparse.Namespace) -> None:
    from byol.config import load_config
    from byol.engine import pretrain

    out = Path(args.out) / "byol_run"
    sets = [f"log.out_dir={out}", "log.progress=false", f"log.knn_bank={args.bank}",
            f"log.knn_queries={args.queries}", f"train.seed={args.seed}",
            f"log.knn_every_steps={args.every}", f"train.threads={args.threads}",
            f"data.path={args.data}", "train.device=cpu", *args.set]
    cfg = load_config(args.config, sets)
    torch.set_num_threads(args.threads)
    pretrain(cfg)
    k = cfg.log.knn_k
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if f"knn_top1_k{k}" in r:
            minutes = (r["elapsed_s"] - r.get("monitor_s", 0.0)) / 60
            _append(Path(args.out), {"library": "byol", "minutes": round(minutes, 3),
                                     "steps": r["step"], "knn20": round(r[f"knn_top1_k{k}"], 2),
                                     "threads": args.threads, "config": args.config,
                                     "overrides": args.set})


def run_pixels(args: argparse.Namespace) -> None:
    from byol.data import open_source
    from byol.eval.loading import load_eval_model

    train = open_source("fashion_mnist", args.data, "train")
    test = open_source("fashion_mnist", args.data, "test")
    bank, queries = _subsets(train, test, args)
    pixels = load_eval_model(baseline="pixels", in_chans=1, image_size=28, mean=MEAN, std=STD)
    acc = _knn20(pixels.backbone, bank, queries, 28, MEAN, STD)
    _append(Path(args.out), {"library": "pixels", "knn20": round(acc, 2), "bank": args.bank,
                             "queries": args.queries, "seed": args.seed})


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (Path(args.out) / "points.jsonl").read_text().splitlines() if x]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for lib, label in (("byol", "byol, fmnist_quick (ours)"), ("lightly", "lightly BYOL example")):
        pts = sorted((r["minutes"], r["knn20"]) for r in rows if r["library"] == lib)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
            for x, y in pts:
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
    pixels = args.pixels or next((r["knn20"] for r in rows if r["library"] == "pixels"), 0.0)
    if pixels:
        ax.axhline(pixels, color="gray", ls="--", lw=1, label=f"raw pixels {pixels:.2f}")
    ax.set_xlabel("minutes of pretraining (clock stopped while scoring)")
    ax.set_ylabel("Fashion-MNIST test kNN top-1 (k=20), %")
    ax.set_xlim(left=-0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    ax.set_title(args.title, fontsize=9)
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("lightly", "byol", "pixels", "plot"))
    ap.add_argument("--out", default="runs/tta")
    ap.add_argument("--data", default=FMNIST)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--marks", default="0,2,5,10,20,30", help="lightly: minutes")
    ap.add_argument("--bank", type=int, default=5000, help="train images in the kNN bank")
    ap.add_argument("--queries", type=int, default=2000, help="test images scored")
    ap.add_argument("--workers", type=int, default=0, help="lightly: DataLoader workers")
    ap.add_argument("--config", default="fmnist_quick", help="byol: preset")
    ap.add_argument("--every", type=int, default=150, help="byol: steps between points")
    ap.add_argument("--set", action="append", default=[], help="byol: config overrides")
    ap.add_argument("--png", default="docs/time_to_accuracy.png")
    ap.add_argument("--pixels", type=float, default=0.0,
                    help="plot: raw-pixel line (default: the pixels row)")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    {"lightly": run_lightly, "byol": run_byol, "pixels": run_pixels,
     "plot": plot}[args.what](args)


if __name__ == "__main__":
    main()
