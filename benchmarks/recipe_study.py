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

# (stage, [(cell name, overrides)]): each cell applies its overrides to the current recipe.
STAGES: list[tuple[str, list[tuple[str, list[str]]]]] = [
    ("LARS trust coefficient", [
        ("eta=0.005", ["optim.eta=0.005"]),
        ("eta=0.02", ["optim.eta=0.02"]),
        ("eta=0.05", ["optim.eta=0.05"]),
    ]),
    ("base lr", [
        ("base_lr=2", ["optim.base_lr=2.0"]),
    ]),
    ("target momentum", [
        ("tau_base=0.97", ["train.tau_base=0.97"]),
        ("tau_base=0.9", ["train.tau_base=0.9"]),
    ]),
    ("predictor lr", [
        ("predictor_lr_mult=3", ["optim.predictor_lr_mult=3"]),
        ("predictor_lr_mult=10", ["optim.predictor_lr_mult=10"]),
    ]),
    ("batch size (lr = base_lr x B/256)", [
        ("batch=128", ["train.batch_size=128"]),
        ("batch=64", ["train.batch_size=64"]),
    ]),
    ("weight decay", [
        ("wd=1e-4", ["optim.weight_decay=1e-4"]),
    ]),
    ("crop scale (both views)", [
        ("crop=0.08-1", ["augment.view1.crop_scale=[0.08,1.0]", "augment.view2.crop_scale=[0.08,1.0]"]),
        ("crop=0.4-1", ["augment.view1.crop_scale=[0.4,1.0]", "augment.view2.crop_scale=[0.4,1.0]"]),
    ]),
    ("blur and solarize at 28 px", [
        ("no blur", ["augment.view1.blur_p=0", "augment.view2.blur_p=0"]),
        ("no solarize", ["augment.view2.solarize_p=0"]),
    ]),
    ("projector / predictor size", [
        ("heads 256/64", ["model.proj_hidden_dim=256", "model.proj_dim=64", "model.pred_hidden_dim=256"]),
        ("heads 1024/256", ["model.proj_hidden_dim=1024", "model.proj_dim=256", "model.pred_hidden_dim=1024"]),
    ]),
    ("multi-crop", [
        ("2 local 14px", ["augment.local_crops=2", "augment.local_size=14"]),
    ]),
    ("network width and depth (more compute per image)", [
        ("width=32", ["model.width=32"]),
        ("resnet34 w16", ["model.arch=resnet34"]),
    ]),
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
            f"data.path={args.data}", "train.device=cpu"]
    cfg = load_config(args.config, sets)
    torch.manual_seed(seed)
    init = build_byol(cfg.model).backbone  # the run's own initial weights (same seed)
    t0 = time.perf_counter()
    res = pretrain(cfg)
    wall = time.perf_counter() - t0
    trained, _ = load_backbone(res["last"])
    train = open_source(cfg.data.source, cfg.data.path, "train")
    test = open_source(cfg.data.source, cfg.data.path, "test")
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
        if r["cell"] == name and r["seed"] == seed and r["epochs"] == args.epochs and (
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
    rows = [r for r in _load_rows(out) if r["cell"] == name and r["seed"] == seed
            and r["epochs"] == args.epochs]
    return rows[-1] if rows else None


def _run_many(args, jobs: list[tuple[str, list[str], int]]) -> list[dict | None]:
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        return list(pool.map(lambda j: _spawn(args, *j), jobs))


def study(args: argparse.Namespace) -> None:
    out = Path(args.out)
    state_file = out / "recipe.json"
    recipe: list[str] = []
    best_score, decisions = -1.0, []
    for i, (stage, cells) in enumerate(STAGES):
        if args.only and not any(s in stage for s in args.only):
            continue
        if i == 0:  # the preset as it is runs alongside the first stage
            cells = [("base (fmnist_quick)", []), *cells]
        jobs = [(f"{name}", _merge(recipe, ov), args.seeds[0]) for name, ov in cells]
        rows = _run_many(args, jobs)
        if i == 0 and rows[0] is not None:
            best_score = rows[0]["knn20"]
        done = [(r, ov) for r, (_, ov) in zip(rows, cells) if r is not None]
        winner = max(done, key=lambda x: x[0]["knn20"], default=None)
        if winner and winner[0]["knn20"] > best_score + args.min_gain:
            recipe, best_score = _merge(recipe, winner[1]), winner[0]["knn20"]
            decisions.append({"stage": stage, "kept": winner[0]["cell"], "knn20": best_score})
        else:
            decisions.append({"stage": stage, "kept": None, "knn20": best_score})
        state_file.write_text(json.dumps({"recipe": recipe, "knn20": best_score,
                                          "decisions": decisions}, indent=1))
        write_table(args)
    print(json.dumps({"recipe": recipe, "knn20": best_score}), flush=True)


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
             "test images, bank = the 60k train images. `workers` jobs shared the machine, each "
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
        s = json.loads(state.read_text())
        lines += ["", "Stage decisions (a change is kept when it beats the running recipe by more "
                  f"than {args.min_gain} points):", ""]
        lines += [f"- {d['stage']}: {('kept **' + d['kept'] + '**') if d['kept'] else 'no change'}"
                  f" (running kNN {d['knn20']:.2f})" for d in s["decisions"]]
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
