"""Detection and segmentation transfer on Fashion-MNIST scenes, on a CPU.

Builds a VOC-layout data set by pasting Fashion-MNIST items on larger noisy canvases (train
scenes from the train split, test scenes from the test split): the class is the item's label, the
box its tight bounding box, the instance / class mask its pixels brighter than ``--threshold``
(fainter item pixels are labelled 255, ignored, like VOC's object borders). Then it fine-tunes
the BYOL checkpoint and a random-init backbone of the same architecture with
``byol transfer detection`` and ``byol transfer segmentation`` (the ``cpu_small`` presets sized
to the canvas) and prints a Markdown table of the results with each command and its wall time.

``--tiny`` makes a few 64-px scenes, an untrained tiny checkpoint when none is given, and runs
2 iterations per model: the whole pipeline in seconds, for CI.

examples:
  python benchmarks/transfer_fmnist.py --checkpoint runs/fmnist_quick/last.pt --out runs/transfer
  python benchmarks/transfer_fmnist.py --checkpoint runs/fmnist_quick/last.pt \\
      --train-scenes 4000 --det-iterations 2000 --seg-iterations 2000 --model faster_rcnn_c4
  python benchmarks/transfer_fmnist.py --tiny --out /tmp/transfer_tiny
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FMNIST_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                "bag", "boot")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="byol checkpoint pretrained on Fashion-MNIST")
    p.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist",
                   help="Fashion-MNIST folder (the four idx files)")
    p.add_argument("--out", default="runs/transfer_fmnist", help="output folder")
    p.add_argument("--canvas", type=int, default=96, help="scene side in pixels")
    p.add_argument("--min-items", type=int, default=1)
    p.add_argument("--max-items", type=int, default=4)
    p.add_argument("--threshold", type=int, default=50,
                   help="item pixels above this (0-255) are the mask; fainter ones are ignored")
    p.add_argument("--noise", type=int, default=40, help="background noise amplitude (0-255)")
    p.add_argument("--train-scenes", type=int, default=1000)
    p.add_argument("--test-scenes", type=int, default=300)
    p.add_argument("--tasks", nargs="+", default=["detection", "segmentation"],
                   choices=("detection", "segmentation"))
    p.add_argument("--model", default="faster_rcnn_fpn",
                   choices=("faster_rcnn_fpn", "faster_rcnn_c4", "mask_rcnn_fpn"))
    p.add_argument("--det-iterations", type=int, default=300,
                   help="about 1.3 s each at batch 8 on one busy CPU core (width-16 ResNet-18)")
    p.add_argument("--seg-iterations", type=int, default=300,
                   help="about 0.6 s each at batch 8 on one busy CPU core")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--det-lr", type=float, default=0.02)
    p.add_argument("--seg-lr", type=float, default=0.01)
    p.add_argument("--crop", type=int, default=0, help="segmentation crop (0: 2/3 of the canvas)")
    p.add_argument("--baselines", nargs="*", default=["random"], choices=("random",))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regenerate", action="store_true", help="rebuild the scenes even if present")
    p.add_argument("--tiny", action="store_true",
                   help="CI size: 6+3 scenes of 64 px, 2 iterations, tiny random checkpoint")
    args = p.parse_args(argv)
    if args.tiny:
        args.canvas = min(args.canvas, 64)
        args.train_scenes, args.test_scenes = 6, 3
        args.det_iterations = args.seg_iterations = 2
        args.batch_size = 2
        args.max_items = min(args.max_items, 2)
    return args


# ---------------------------------------------------------------------------------------------
# scenes


def _place(rng: np.random.Generator, taken: np.ndarray, box: tuple[int, int, int, int],
           canvas: int) -> tuple[int, int] | None:
    """Top-left corner for a 28x28 item whose content box (x0, y0, x1, y1) overlaps no other
    item's content; None after 30 tries."""
    x0, y0, x1, y1 = box
    for _ in range(30):
        ox = int(rng.integers(-x0, canvas - x1 + 1))
        oy = int(rng.integers(-y0, canvas - y1 + 1))
        if not taken[oy + y0:oy + y1, ox + x0:ox + x1].any():
            return ox, oy
    return None


def make_scenes(items: Any, n: int, root: Path, split: str, args: argparse.Namespace,
                rng: np.random.Generator) -> int:
    """Write ``n`` scenes of ``split`` into the VOC folder ``root``; returns the object count."""
    from PIL import Image

    from byol.transfer.datasets import write_index_png, write_voc_xml

    imgs = items.images[:, 0].numpy()
    labels = items.labels.numpy()
    C, thr = args.canvas, args.threshold
    ids, count = [], 0
    for k in range(n):
        name = f"{split}_{k:05d}"
        canvas = rng.integers(0, args.noise + 1, (C, C)).astype(np.uint8)
        cls = np.zeros((C, C), np.uint8)
        inst = np.zeros((C, C), np.uint8)
        taken = np.zeros((C, C), bool)
        objects = []
        for _ in range(int(rng.integers(args.min_items, args.max_items + 1))):
            j = int(rng.integers(len(imgs)))
            item = imgs[j]
            fg = item > thr
            if not fg.any():
                continue
            ys, xs = np.nonzero(fg)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            at = _place(rng, taken, box, C)
            if at is None:
                continue
            ox, oy = at
            # the part of the 28x28 patch inside the canvas
            sy0, sx0 = max(0, -oy), max(0, -ox)
            sy1, sx1 = min(28, C - oy), min(28, C - ox)
            patch = item[sy0:sy1, sx0:sx1]
            region = (slice(oy + sy0, oy + sy1), slice(ox + sx0, ox + sx1))
            canvas[region] = np.maximum(canvas[region], patch)
            m = np.zeros((C, C), bool)
            m[region] = fg[sy0:sy1, sx0:sx1]
            faint = np.zeros((C, C), bool)
            faint[region] = (patch > 0) & ~fg[sy0:sy1, sx0:sx1]
            taken[oy + box[1]:oy + box[3], ox + box[0]:ox + box[2]] = True
            objects.append((FMNIST_NAMES[int(labels[j])],
                            [ox + box[0], oy + box[1], ox + box[2], oy + box[3]], False))
            cls[faint & (cls == 0)] = 255
            cls[m] = int(labels[j]) + 1
            inst[faint & (inst == 0)] = 255
            inst[m] = len(objects)
        if not objects:
            continue
        Image.fromarray(canvas, mode="L").save(root / "JPEGImages" / f"{name}.png")
        write_voc_xml(root / "Annotations" / f"{name}.xml", f"{name}.png", C, C, objects, depth=1)
        write_index_png(root / "SegmentationClass" / f"{name}.png", cls)
        write_index_png(root / "SegmentationObject" / f"{name}.png", inst)
        ids.append(name)
        count += len(objects)
    for sub in ("Main", "Segmentation"):
        (root / "ImageSets" / sub).mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / sub / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return count


def build_data(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from byol.data import open_source

    stamp = root / "scenes.json"
    spec = {k: getattr(args, k) for k in ("canvas", "min_items", "max_items", "threshold",
                                          "noise", "train_scenes", "test_scenes", "seed")}
    if stamp.is_file() and not args.regenerate and json.loads(stamp.read_text()) == spec:
        return {"reused": True, **spec}
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    objs = {}
    for split, n in (("train", args.train_scenes), ("test", args.test_scenes)):
        items = open_source("fashion_mnist", args.fmnist, split, limit=max(200, 4 * n))
        objs[split] = make_scenes(items, n, root, split, args, rng)
    (root / "class_names.txt").write_text("\n".join(FMNIST_NAMES) + "\n")
    stamp.write_text(json.dumps(spec))
    return {"reused": False, "objects": objs, "build_s": round(time.perf_counter() - t0, 1),
            **spec}


def _tiny_checkpoint(path: Path) -> Path:
    """An untrained 1-channel ResNet-18 (width 8, small stem), like a Fashion-MNIST run's."""
    import torch

    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.models import build_byol

    torch.manual_seed(12345)
    cfg = Config()
    cfg.name = "tiny-transfer"
    cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = (
        "resnet18", 1, True, 8)
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = 32
    cfg.model.proj_dim = 16
    cfg.data.source = "fashion_mnist"
    cfg.augment.image_size = 28
    cfg.augment.mean, cfg.augment.std = (0.2860,), (0.3530,)
    atomic_save({"format": FORMAT, "config": cfg.to_dict(),
                 "model": build_byol(cfg.model).state_dict()}, path)
    return path


# ---------------------------------------------------------------------------------------------
# runs


def _run(argv: list[str]) -> tuple[int, float]:
    """Run ``byol ARGV`` in this process through the main CLI."""
    from byol.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    return rc, time.perf_counter() - t0


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and np.isfinite(v) else "–"


def main(argv: list[str] | None = None) -> int:
    import logging

    import torch

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "data"
    from byol.data import DataError

    try:
        info = build_data(args, root)
    except DataError as e:
        print(f"transfer_fmnist: {e} (pass --fmnist DIR)", file=sys.stderr)
        return 2
    print(f"scenes in {root}: {info}", flush=True)
    ckpt = args.checkpoint
    if not ckpt:
        if not args.tiny:
            print("--checkpoint is required (or --tiny)", file=sys.stderr)
            return 2
        ckpt = str(_tiny_checkpoint(out / "tiny_checkpoint.pt"))
    common = ["--checkpoint", ckpt, "--data", str(root), "--device", args.device,
              "--seed", str(args.seed), "--batch-size", str(args.batch_size), "--quiet"]
    if args.baselines:
        common += ["--baselines", *args.baselines]
    if args.threads:
        common += ["--threads", str(args.threads)]
    runs = []
    C = args.canvas
    if "detection" in args.tasks:
        its = args.det_iterations
        argv_det = ["transfer", "detection", *common, "--preset", "cpu_small", "--model",
                    args.model, "--iterations", str(its), "--lr", str(args.det_lr),
                    "--steps", str(max(1, round(0.8 * its))), "--warmup-iters",
                    str(min(50, its // 10)), "--min-size", str(C), "--test-size", str(C),
                    "--set", f"max_size={max(C, 160)}", "--eval", "both",
                    "--json", str(out / "detection.json")]
        runs.append(("detection", argv_det))
    if "segmentation" in args.tasks:
        crop = args.crop or max(32, (2 * C // 3) // 8 * 8)
        argv_seg = ["transfer", "segmentation", *common, "--preset", "cpu_small",
                    "--iterations", str(args.seg_iterations), "--lr", str(args.seg_lr),
                    "--crop-size", str(crop), "--base-size", str(C),
                    "--json", str(out / "segmentation.json")]
        runs.append(("segmentation", argv_seg))
    rows, cmds = [], []
    for task, a in runs:
        rc, wall = _run(a)
        cmd = "byol " + " ".join(shlex.quote(x) for x in a)
        cmds.append((task, cmd, wall, rc))
        if rc != 0:
            print(f"{task} failed (exit {rc}): {cmd}", file=sys.stderr)
            continue
        doc = json.loads((out / f"{task}.json").read_text())
        recs = doc["records"] if "records" in doc else [doc]
        for r in recs:
            res = r["results"]
            if task == "detection":
                metrics = (f"bbox AP {_fmt(res.get('bbox_AP'))} / AP50 "
                           f"{_fmt(res.get('bbox_AP50'))}, VOC AP50 {_fmt(res.get('voc_AP50'))}")
            else:
                metrics = (f"mIoU {_fmt(res.get('mIoU'))}, mAcc {_fmt(res.get('mAcc'))}, "
                           f"aAcc {_fmt(res.get('aAcc'))}")
            rows.append(f"| {task} | {r['settings'].get('model', 'fcn_d8')} | {r['model']} | "
                        f"{metrics} | {_fmt(res.get('first_loss'))} → "
                        f"{_fmt(res.get('final_loss'))} | {_fmt(r.get('wall_s'))} |")
    lines = [
        f"## Transfer on Fashion-MNIST scenes ({C}x{C}, {args.min_items}-{args.max_items} items, "
        f"{args.train_scenes} train / {args.test_scenes} test scenes)", "",
        f"checkpoint: `{ckpt}`; device {args.device}, threads {torch.get_num_threads()}", "",
        "| task | model | init | test metrics (%) | train loss first → last | wall s |",
        "|---|---|---|---|---|---|", *rows, "", "| task | command | wall s | exit |",
        "|---|---|---|---|",
        *[f"| {t} | `{c}` | {w:.1f} | {rc} |" for t, c, w, rc in cmds]]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)
    return 0 if all(rc == 0 for *_, rc in cmds) else 1


if __name__ == "__main__":
    sys.exit(main())
