"""Recipe study for short CPU budgets: which settings make BYOL learn fast?

Part 1 changes one thing at a time on a preset (``fmnist_quick`` as it landed before this
study, frozen in ``benchmarks/configs/fmnist_quick_landed.yaml``); part 2 changes one thing at a time on an anchor built from the published evidence, then
combines the part-2 changes that beat the anchor. Every cell trains on the same number of images
(``--images``, the schedule ends there: ``train.total_steps = images // batch``), so cells of one
network cost the same compute, and is scored by weighted kNN (k=20, T=0.07) of the pooled
backbone features: a fixed, seeded bank of ``--bank`` train images (0: all 60k) and all the test
images as queries, next to the same network at its random initialisation (same seed).

Cells run as separate processes (``--workers`` at a time, ``--threads`` torch threads each),
so a crash costs one cell. Finished cells are kept in OUT/cells.jsonl and skipped on a rerun, so
the study resumes where it stopped; a cell being run is claimed by a file in OUT/claims, so two
drivers started on the same OUT share the queue without running a cell twice. After every cell
the Markdown table is rewritten into ``--results`` between ``<!-- recipe-study:start -->`` and
``<!-- recipe-study:end -->``.

Accuracy does not depend on how many jobs share the machine; wall times do (each row says how
many threads its process had; the table says how many drivers shared the machine).

    python benchmarks/recipe_study.py --out runs/study --images 30000 --workers 1 --threads 1
    python benchmarks/recipe_study.py --out runs/study --cell 'best=optim.eta=0.02;train.tau_base=0.97' --seeds 0 1 2 --linear
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
    ("base (fmnist_quick as landed)", []),
    ("eta=0.02", ["optim.eta=0.02"]),
    ("batch=64", ["train.batch_size=64"]),
    ("tau_base=0.97", ["train.tau_base=0.97"]),
]
# Part 2 starts from the combination of the three levers the published evidence points to
# (../shared/RECIPES.md: solo-learn's LARS eta 0.02, DeepMind's tau 0.97 for short schedules,
# more optimiser steps per image) and changes one thing at a time again; the cells that beat it
# are then combined. Listed in the order they run: the likeliest large effects first.
ANCHOR = ["train.batch_size=64", "optim.eta=0.02", "train.tau_base=0.97"]
ANCHOR_CELLS: list[tuple[str, list[str]]] = [
    ("anchor: batch 64, eta 0.02, tau 0.97", []),
    # under LARS a step moves each weight by about lr x eta of its norm; at batch 64 the linear
    # lr scaling leaves lr = 0.25, so the anchor moves 0.5% per step: try 2.5x, 5x, 10x
    ("eta=0.05", ["optim.eta=0.05"]),
    ("eta=0.1", ["optim.eta=0.1"]),
    ("eta=0.2", ["optim.eta=0.2"]),
    ("tau_base=0.9", ["train.tau_base=0.9"]),
    ("crop=0.5-1", ["augment.view1.crop_scale=[0.5,1.0]", "augment.view2.crop_scale=[0.5,1.0]"]),
    ("no blur", ["augment.view1.blur_p=0", "augment.view2.blur_p=0"]),
    ("no solarize", ["augment.view2.solarize_p=0"]),
    ("predictor_lr_mult=10", ["optim.predictor_lr_mult=10"]),
    ("warmup 0.02 epochs", ["optim.warmup_epochs=0.02"]),
    ("depth: resnet10", ["model.arch=resnet10"]),
    ("2 local views 14px", ["augment.local_crops=2", "augment.local_size=14"]),
    ("tau_base=0.99", ["train.tau_base=0.99"]),
    ("crop=0.08-1", ["augment.view1.crop_scale=[0.08,1.0]", "augment.view2.crop_scale=[0.08,1.0]"]),
    ("batch=32", ["train.batch_size=32"]),
    ("wd=1e-4", ["optim.weight_decay=1e-4"]),
    ("heads 2048/256", ["model.proj_hidden_dim=2048", "model.proj_dim=256", "model.pred_hidden_dim=2048"]),
    ("adamw lr 2e-3", ["optim.name=adamw", "optim.base_lr=0.002"]),
    ("width=32", ["model.width=32"]),
]
# changes that cost compute per image are reported, not combined blindly
COSTLY = ("model.width", "model.arch", "augment.local_crops", "model.proj_hidden_dim")

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


def eval_sources(cfg, bank: int):
    """The scoring images, the same for every cell: a bank of ``bank`` train images drawn with
    seed 0 (all when 0) and every test image."""
    from byol.data import open_source
    from byol.data.base import subset as subset_source
    from byol.monitor import monitor_subsets

    train = open_source(cfg.data.source, cfg.data.path, cfg.data.split)
    test = open_source(cfg.data.source, cfg.data.val_path or cfg.data.path, cfg.data.val_split)
    bi, _ = monitor_subsets(len(train), len(test), bank, 0, 0, False)
    return (subset_source(train, bi, "bank") if bank else train), test


def run_cell(args: argparse.Namespace, name: str, overrides: list[str], seed: int) -> dict:
    import torch

    from byol.checkpoint import load_backbone
    from byol.config import load_config
    from byol.engine import pretrain
    from byol.eval.linear import linear_probe_features
    from byol.models import build_byol

    torch.set_num_threads(args.threads)
    out = Path(args.out) / "cells" / f"{_slug(name)}_s{seed}"
    cfg = load_config(args.config, ["train.time_budget=", *overrides]
                      + ([f"data.path={args.data}"] if args.data else []))
    # a cell may fix its own step count (cells of different cost at the same wall time)
    own = [o for o in overrides if o.startswith("train.total_steps=")]
    steps = (int(own[-1].split("=", 1)[1]) if own
             else args.images // (cfg.train.batch_size * cfg.train.accumulate))
    sets = ["train.time_budget=", f"train.total_steps={steps}", *overrides, f"train.seed={seed}",
            f"train.threads={args.threads}", f"log.out_dir={out}", "log.progress=false",
            "log.tensorboard=false", f"log.save_every={10**6}", "log.knn_every=0",
            "log.knn_every_steps=0", "train.device=cpu"] + (
                [f"data.path={args.data}"] if args.data else [])
    cfg = load_config(args.config, sets)
    torch.manual_seed(seed)
    init = build_byol(cfg.model).backbone  # the run's own initial weights (same seed)
    t0 = time.perf_counter()
    res = pretrain(cfg)
    wall = time.perf_counter() - t0
    trained, _ = load_backbone(res["last"])
    train, test = eval_sources(cfg, args.bank)
    t1 = time.perf_counter()
    ftr, fte = _features(trained, cfg, train, "cpu"), _features(trained, cfg, test, "cpu")
    images = steps * cfg.train.batch_size * cfg.train.accumulate
    row = {"cell": name, "overrides": overrides, "seed": seed, "images": images,
           "bank": args.bank, "steps": res["steps"], "train_s": round(wall, 1),
           "final_loss": res["final_loss"], "knn20": round(_knn20(ftr, train.labels, fte, test.labels), 2)}
    row["eval_s"] = round(time.perf_counter() - t1, 1)
    rfile = Path(args.out) / "random_init.json"
    key = json.dumps([cfg.to_dict()["model"], seed, args.bank])
    cache = json.loads(rfile.read_text()) if rfile.is_file() else {}
    if key not in cache:
        a, b = _features(init, cfg, train, "cpu"), _features(init, cfg, test, "cpu")
        value = round(_knn20(a, train.labels, b, test.labels), 2)
        cache = {**(json.loads(rfile.read_text()) if rfile.is_file() else {}), key: value}
        rfile.write_text(json.dumps(cache))
    row["random_knn20"] = cache[key]
    pkey = json.dumps(["pixels", cfg.data.path, cfg.data.val_path, cfg.augment.image_size, args.bank])
    if pkey not in cache:  # raw pixels: the normalised evaluation crop, flattened
        from byol.eval.features import PixelBackbone

        pix = PixelBackbone(cfg.model.in_chans)
        a, b = _features(pix, cfg, train, "cpu"), _features(pix, cfg, test, "cpu")
        value = round(_knn20(a, train.labels, b, test.labels), 2)
        cache = {**(json.loads(rfile.read_text()) if rfile.is_file() else {}), pkey: value}
        rfile.write_text(json.dumps(cache))
    row["pixels_knn20"] = cache[pkey]
    if args.linear:
        lin = linear_probe_features(ftr, train.labels, fte, test.labels, epochs=30, device="cpu")
        row["linear"] = round(lin["top1"], 2)
    row["threads"] = args.threads
    return row


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


# ----------------------------------------------------------------------------------------------
# the driver


def _load_rows(out: Path) -> list[dict]:
    f = out / "cells.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def _done(args, overrides: list[str], seed: int) -> dict | None:
    for r in _load_rows(Path(args.out)):
        own_steps = any(o.startswith("train.total_steps=") for o in overrides)
        if (r["overrides"] == overrides and r["seed"] == seed
                and (own_steps or r.get("images") == args.images)
                and r.get("bank") == args.bank and (not args.linear or "linear" in r)):
            return r
    return None


def _spawn(args: argparse.Namespace, name: str, overrides: list[str], seed: int) -> dict | None:
    out = Path(args.out)
    if (r := _done(args, overrides, seed)) is not None:
        return r
    claim = out / "claims" / f"{_slug(json.dumps([overrides, seed, args.images, args.bank, args.linear]))[:200]}"
    claim.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # another driver runs it: wait for its row
        while (r := _done(args, overrides, seed)) is None and claim.exists():
            time.sleep(10)
        return r
    cmd = [sys.executable, __file__, "--_one", json.dumps([name, overrides, seed]),
           "--out", args.out, "--images", str(args.images), "--bank", str(args.bank),
           "--threads", str(args.threads), "--config", args.config, "--data", args.data]
    if args.linear:
        cmd.append("--linear")
    log = out / "logs" / f"{_slug(name)}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    finally:
        claim.unlink(missing_ok=True)
    if p.returncode != 0:
        print(f"cell {name} seed {seed} failed (exit {p.returncode}): see {log}", flush=True)
        return None
    write_table(args)
    return _done(args, overrides, seed)


def _run_many(args, jobs: list[tuple[str, list[str], int]]) -> list[dict | None]:
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        return list(pool.map(lambda j: _spawn(args, *j), jobs))


def study(args: argparse.Namespace) -> None:
    """Part 2's anchor and part 1's base first, then the rest in the listed order; then the
    anchor plus every part-2 change (but the costly ones) that beat it by more than --min-gain."""
    out = Path(args.out)
    seed = args.seeds[0]
    preset = [(n, ov, seed) for n, ov in PRESET_CELLS]
    anchor_jobs = [(n, _merge(ANCHOR, ov), seed) for n, ov in ANCHOR_CELLS]
    rows = _run_many(args, [anchor_jobs[0], preset[0], *anchor_jobs[1:], *preset[1:]])
    by = {json.dumps(r["overrides"]): r for r in rows if r is not None}
    anchor = by.get(json.dumps(ANCHOR))
    if anchor is None:
        return
    winners = [ov for n, ov in ANCHOR_CELLS[1:]
               if (r := by.get(json.dumps(_merge(ANCHOR, ov)))) and r["knn20"] > anchor["knn20"] + args.min_gain
               and not any(o.startswith(COSTLY) for o in ov)]
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
    bank = f"a seeded bank of {args.bank} train images" if args.bank else "all 60k train images as the bank"
    lines = [START, "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
             f"cores, CPU flags: {flags} (fp32 unless the flags include avx512_bf16); "
             f"{date.today().isoformat()}.",
             f"Command: `python benchmarks/recipe_study.py --out {args.out} --images {args.images} "
             f"--bank {args.bank} --threads {args.threads}` (two drivers shared the two cores, or "
             f"one driver next to another job). kNN k=20 top-1 (%) on the 10k test images with {bank}; "
             "`random init` is the same network before training (same seed). `threads`: torch "
             "threads of the cell's process; its train seconds are for that setting on a shared "
             "machine.", "",
             "| cell | overrides on the preset | seed | images | steps | train s | threads | kNN k=20 | "
             "random init | gain | raw pixels | linear |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lin = f"{r['linear']:.2f}" if "linear" in r else ""
        lines.append(f"| {r['cell']} | `{' '.join(r['overrides']) or '(preset)'}` | {r['seed']} | "
                     f"{r.get('images', '')} | {r['steps']} | {r['train_s']:.0f} | {r.get('threads', '')} | "
                     f"{r['knn20']:.2f} | {r['random_knn20']:.2f} | "
                     f"{r['knn20'] - r['random_knn20']:+.2f} | {r.get('pixels_knn20', '')} | {lin} |")
    state = Path(args.out) / "recipe.json"
    if state.is_file():
        st = json.loads(state.read_text())
        lines += ["", f"Changes to the anchor that beat it by more than {args.min_gain} points "
                  "(compute-changing ones aside): "
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
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent / "configs" / "fmnist_quick_landed.yaml"),
                    help="the recipe the cells change (default: fmnist_quick before the study)")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="data.path for every cell ('' keeps the config's)")
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--images", type=int, default=30000, help="training images per cell")
    ap.add_argument("--bank", type=int, default=10000, help="train images in the kNN bank (0: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=1, help="cells at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    ap.add_argument("--min-gain", type=float, default=0.0)
    ap.add_argument("--linear", action="store_true", help="also a linear probe per cell")
    ap.add_argument("--cell", action="append", default=[],
                    help="NAME=key=value;key=value: run just these cells (on every --seeds)")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"))
    ap.add_argument("--table", action="store_true", help="only rewrite the table from OUT")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.table:
        write_table(args)
        return
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
