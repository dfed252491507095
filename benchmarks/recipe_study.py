"""Recipe study for short CPU budgets: which settings make BYOL learn fast?

Starts from a preset (``fmnist_quick`` as it landed before this study) and changes one thing at
a time, stage by stage (coordinate descent): every cell of a stage is the current recipe with
one change; the stage's best cell, when it beats the current recipe, becomes the recipe the
next stage starts from. Every cell trains for the same number of images (``--epochs``), so
cells of the same network cost the same compute, and is scored by weighted kNN (k=20,
T=0.07) of the pooled backbone features: train split as the bank, test split as the queries,
next to the same network at its random initialisation (same seed) and raw pixels.

Cells run as separate processes (``--workers`` at a time, ``--threads`` torch threads each),
so a crash costs one cell; finished cells are kept in OUT/cells.jsonl and skipped on a rerun,
so the study resumes where it stopped. After every cell the Markdown table is rewritten into
``--results`` between ``<!-- recipe-study:start -->`` and ``<!-- recipe-study:end -->``.

Accuracy does not depend on how many jobs share the machine; wall times do (the table says how
many workers ran at once).

    python benchmarks/recipe_study.py --out runs/study --epochs 1 --workers 2 --threads 1
    python benchmarks/recipe_study.py --out runs/study --cell 'eta=optim.eta=0.02;train.tau_base=0.97' --seeds 0 1 2 --linear
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

# Part 1: one change at a time on the preset as it landed (LARS eta 0.001, batch 256, tau 0.99).
PRESET_CELLS: list[tuple[str, list[str]]] = [
    ("base (fmnist_quick)", []),
    ("eta=0.005", ["optim.eta=0.005"]),
    ("eta=0.02", ["optim.eta=0.02"]),
    ("eta=0.05", ["optim.eta=0.05"]),
    ("base_lr=2", ["optim.base_lr=2.0"]),
    ("batch=64", ["train.batch_size=64"]),
    ("tau_base=0.97", ["train.tau_base=0.97"]),
]
# Part 2 starts from the combination of part 1's three largest levers (more optimiser steps per
# image, a LARS trust coefficient that lets the weights move, a faster target) and changes one
# thing at a time again; the cells that beat it are then combined.
ANCHOR = ["train.batch_size=64", "optim.eta=0.02", "train.tau_base=0.97"]
ANCHOR_CELLS: list[tuple[str, list[str]]] = [
    ("anchor: batch 64, eta 0.02, tau 0.97", []),
    ("width=32", ["model.width=32"]),
    ("batch=32", ["train.batch_size=32"]),
    ("batch=128", ["train.batch_size=128"]),
    ("tau_base=0.99", ["train.tau_base=0.99"]),
    ("tau_base=0.9", ["train.tau_base=0.9"]),
    ("base_lr=2", ["optim.base_lr=2.0"]),
    ("predictor_lr_mult=10", ["optim.predictor_lr_mult=10"]),
    ("wd=1e-4", ["optim.weight_decay=1e-4"]),
    ("crop=0.08-1", ["augment.view1.crop_scale=[0.08,1.0]", "augment.view2.crop_scale=[0.08,1.0]"]),
    ("crop=0.5-1", ["augment.view1.crop_scale=[0.5,1.0]", "augment.view2.crop_scale=[0.5,1.0]"]),
    ("no blur", ["augment.view1.blur_p=0", "augment.view2.blur_p=0"]),
    ("no solarize", ["augment.view2.solarize_p=0"]),
    ("heads 256/64", ["model.proj_hidden_dim=256", "model.proj_dim=64", "model.pred_hidden_dim=256"]),
    ("heads 2048/256", ["model.proj_hidden_dim=2048", "model.proj_dim=256", "model.pred_hidden_dim=2048"]),
    ("2 local views 14px", ["augment.local_crops=2", "augment.local_size=14"]),
]

START, END = "<!-- recipe-study:start -->", "<!-- recipe-study:end -->"


# ----------------------------------------------------------------------------------------------
# one cell (runs in its own process)


def _features(backbone, cfg, src, device):
    from byol.eval.features import extract_features

    return extract_features(backbone, src, image_size=cfg.augment.image_size, mean=cfg.augment.mean,
                            std=cfg.augment.std, progress=False, batch_size=1024,
                            device=device)["pooled"]


def _knn20(a, ya, b, yb) -> float:
    from byol.eval.knn import knn_classify

    return knn_classify(a, ya, b, yb, ks=(20,))["k=20"]["top1"]


def run_cell(args: argparse.Namespace, name: str, overrides: list[str], seed: int) -> dict:
    import torch

    from byol.checkpoint import load_backbone
    from byol.config import load_config
    from byol.data import open_source
    from byol.engine import pretrain
    from byol.eval.linear import linear_probe_features
    from byol.models import build_byol

    torch.set_num_threads(args.threads)
    out = Path(args.out) / "cells" / f"{_slug(name)}_s{seed}"
    sets = [*overrides, f"train.epochs={args.epochs}", f"train.seed={seed}",
            f"train.threads={args.threads}", f"log.out_dir={out}", "log.progress=false",
            "log.tensorboard=false", f"log.save_every={10**6}", "log.knn_every=0",
            "train.device=cpu"] + ([f"data.path={args.data}"] if args.data else [])
    cfg = load_config(args.config, sets)
    torch.manual_seed(seed)
    init = build_byol(cfg.model).backbone  # the run's own initial weights (same seed)
    t0 = time.perf_counter()
    res = pretrain(cfg)
    wall = time.perf_counter() - t0
    trained, _ = load_backbone(res["last"])
    train = open_source(cfg.data.source, cfg.data.path, cfg.data.split)
    test = open_source(cfg.data.source, cfg.data.val_path or cfg.data.path, cfg.data.val_split)
    t1 = time.perf_counter()
    ftr, fte = _features(trained, cfg, train, "cpu"), _features(trained, cfg, test, "cpu")
    row = {"cell": name, "overrides": overrides, "seed": seed, "epochs": args.epochs,
           "steps": res["steps"], "train_s": round(wall, 1), "final_loss": res["final_loss"],
           "knn20": round(_knn20(ftr, train.labels, fte, test.labels), 2)}
    row["eval_s"] = round(time.perf_counter() - t1, 1)
    rfile = Path(args.out) / "random_init.json"
    key = json.dumps([cfg.to_dict()["model"], seed])
    cache = json.loads(rfile.read_text()) if rfile.is_file() else {}
    if key not in cache:
        a, b = _features(init, cfg, train, "cpu"), _features(init, cfg, test, "cpu")
        cache[key] = round(_knn20(a, train.labels, b, test.labels), 2)
        cache = {**(json.loads(rfile.read_text()) if rfile.is_file() else {}), key: cache[key]}
        rfile.write_text(json.dumps(cache))
    row["random_knn20"] = cache[key]
    if args.linear:
        lin = linear_probe_features(ftr, train.labels, fte, test.labels, epochs=30, device="cpu")
        row["linear"] = round(lin["top1"], 2)
    row["workers"] = args.workers
    return row


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


# ----------------------------------------------------------------------------------------------
# the driver


def _load_rows(out: Path) -> list[dict]:
    f = out / "cells.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def _spawn(args: argparse.Namespace, name: str, overrides: list[str], seed: int) -> dict | None:
    out = Path(args.out)
    for r in _load_rows(out):
        if r["overrides"] == overrides and r["seed"] == seed and r["epochs"] == args.epochs and (
                not args.linear or "linear" in r):
            return r
    cmd = [sys.executable, __file__, "--_one", json.dumps([name, overrides, seed]),
           "--out", args.out, "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--workers", str(args.workers), "--config", args.config, "--data", args.data]
    if args.linear:
        cmd.append("--linear")
    log = out / "logs" / f"{_slug(name)}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if p.returncode != 0:
        print(f"cell {name} seed {seed} failed (exit {p.returncode}): see {log}", flush=True)
        return None
    rows = [r for r in _load_rows(out) if r["overrides"] == overrides and r["seed"] == seed
            and r["epochs"] == args.epochs]
    return rows[-1] if rows else None


def _run_many(args, jobs: list[tuple[str, list[str], int]]) -> list[dict | None]:
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        return list(pool.map(lambda j: _spawn(args, *j), jobs))


def study(args: argparse.Namespace) -> None:
    """Part 1 on the preset, part 2 on the anchor (slowest cells first, so the two workers stay
    busy), then the anchor plus every part-2 change that beat it by more than --min-gain."""
    out = Path(args.out)
    seed = args.seeds[0]
    jobs = [(n, ov, seed) for n, ov in PRESET_CELLS]
    anchor_jobs = [(n, _merge(ANCHOR, ov), seed) for n, ov in ANCHOR_CELLS]
    rows = _run_many(args, [anchor_jobs[1], *jobs, anchor_jobs[0], *anchor_jobs[2:]])
    write_table(args)
    by = {json.dumps(r["overrides"]): r for r in rows if r is not None}
    anchor = by.get(json.dumps(ANCHOR))
    if anchor is None:
        return
    winners = [ov for n, ov in ANCHOR_CELLS[1:]
               if (r := by.get(json.dumps(_merge(ANCHOR, ov)))) and r["knn20"] > anchor["knn20"] + args.min_gain
               and not any(o.startswith("model.width") for o in ov)]  # compute changes: not free
    combo = ANCHOR
    for ov in winners:
        combo = _merge(combo, ov)
    if winners:
        _run_many(args, [("anchor + winners", combo, seed)])
    (out / "recipe.json").write_text(json.dumps({"anchor": ANCHOR, "winners": winners,
                                                 "combined": combo}, indent=1))
    write_table(args)


def _merge(recipe: list[str], overrides: list[str]) -> list[str]:
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in recipe if o.split("=", 1)[0] not in keys] + list(overrides)


def write_table(args: argparse.Namespace) -> None:
    rows = _load_rows(Path(args.out))
    flags = _cpu_flags()
    lines = [START, "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
             f"cores, CPU flags: {flags}; {date.today().isoformat()}.",
             f"Command: `python benchmarks/recipe_study.py --out {args.out} --epochs {args.epochs} "
             f"--workers {args.workers} --threads {args.threads}`. kNN k=20 top-1 (%) on the 10k "
             "test images, bank = the train images. `workers` jobs shared the machine, each "
             f"with {args.threads} thread(s): the train seconds are for that setting.", "",
             "| cell | overrides on the running recipe | seed | epochs | steps | train s | kNN k=20 | "
             "random init | linear |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lin = f"{r['linear']:.2f}" if "linear" in r else ""
        lines.append(f"| {r['cell']} | `{' '.join(r['overrides']) or '(preset)'}` | {r['seed']} | "
                     f"{r['epochs']} | {r['steps']} | {r['train_s']:.0f} | {r['knn20']:.2f} | "
                     f"{r['random_knn20']:.2f} | {lin} |")
    state = Path(args.out) / "recipe.json"
    if state.is_file():
        st = json.loads(state.read_text())
        lines += ["", f"Changes to the anchor that beat it by more than {args.min_gain} points: "
                  + (", ".join(f"`{' '.join(w)}`" for w in st["winners"]) or "none")
                  + f"; combined: `{' '.join(st['combined'])}`."]
    lines += ["", END]
    block = "\n".join(lines)
    path = Path(args.results)
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Recipe study (learn fast)\n\n" + block + "\n"
    path.write_text(text)


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    except (OSError, IndexError):
        return "unknown"
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return ", ".join(have) or "none of avx2/avx512"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="fmnist_quick")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs per cell")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=2, help="cells at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    ap.add_argument("--min-gain", type=float, default=0.0)
    ap.add_argument("--linear", action="store_true", help="also a linear probe per cell")
    ap.add_argument("--only", nargs="*", default=[], help="run only stages whose name contains these")
    ap.add_argument("--cell", action="append", default=[],
                    help="NAME=key=value;key=value: run just these cells (on every --seeds)")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"))
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:
        name, overrides, seed = json.loads(args._one)
        row = run_cell(args, name, overrides, seed)
        with open(Path(args.out) / "cells.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.cell:
        jobs = []
        for spec in args.cell:
            name, _, sets = spec.partition("=")
            jobs += [(name, [s for s in sets.split(";") if s], seed) for seed in args.seeds]
        for r in _run_many(args, jobs):
            print(json.dumps(r), flush=True)
        write_table(args)
        return
    study(args)


if __name__ == "__main__":
    main()
