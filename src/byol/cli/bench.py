"""``byol bench``: pretraining throughput and peak memory (:mod:`byol.bench`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from ..bench import TABLE_HEADER, run_bench
from .common import RAW, command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("model", "augment", "data"), default="augment")
    p.add_argument("--config", "-c", default=None, help="start from a preset or YAML")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--small-stem", dest="small_stem", action="store_true")
    p.add_argument("--in-chans", dest="in_chans", type=int, default=3)
    p.add_argument("--image-size", dest="image_size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--proj-hidden-dim", dest="proj_hidden_dim", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps (per repeat)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time N blocks of --steps and report their median images/s with the "
                   "range (a machine's speed can drift by tens of percent within minutes)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", dest="channels_last", default=None,
                   type=lambda s: s.lower() in ("1", "true", "yes"))
    p.add_argument("--fuse-views", dest="fuse_views", default=None,
                   type=lambda s: s.lower() in ("1", "true", "yes"))
    p.add_argument("--source", default="synthetic", help="data source for --mode data")
    p.add_argument("--data", default="", help="data path for --mode data")
    p.add_argument("--flops", action="store_true", help="count FLOPs and report utilisation")
    p.add_argument("--out", default="/tmp/byol-bench", help="scratch run folder")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", help="write the result as JSON here")


def cmd_bench(args: argparse.Namespace) -> int:
    res = run_bench(args)
    print(TABLE_HEADER)
    print(res.row())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(res), f, indent=2)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure pretraining images/s and peak memory",
        epilog="examples:\n"
        "  byol bench --arch resnet18 --small-stem --image-size 32 --batch 256\n"
        "  byol bench --arch resnet50 --image-size 224 --batch 256 --device cuda --flops\n"
        "  byol bench --mode data --source fashion_mnist --in-chans 1 --image-size 28 --small-stem",
        formatter_class=RAW,
    )
    add_arguments(p)
    command(p, cmd_bench)
