"""``byol pretrain`` and ``byol config show|list``."""

from __future__ import annotations

import argparse
from typing import Any

from .common import RAW, command, help_command

PRETRAIN_EPILOG = """examples:
  byol pretrain --data my_images/ --out runs/mine         # no config: chosen from the data
  byol pretrain --data train.npz --test-data test.npz --out runs/mine
  byol pretrain --config fmnist_quick --out runs/fmnist_quick
  byol pretrain --config byol_resnet50_16xb256-coslr-200e_in1k --data /data/imagenet --out runs/in1k
  byol pretrain --config fmnist_quick --set train.epochs=5 --set optim.base_lr=2.0
  byol pretrain --config runs/fmnist_quick/config.yaml --resume runs/fmnist_quick
  torchrun --nproc_per_node 8 -m byol pretrain --config byol_resnet50_8xb32-accum16-coslr-200e_in1k --data /data/imagenet
"""


def _overrides(args: argparse.Namespace, data: bool = True) -> list[str]:
    sets = list(args.set or [])
    if data and getattr(args, "data", None) is not None:
        sets.append(f"data.path={args.data}")
    if data and getattr(args, "source", None) is not None:
        sets.append(f"data.source={args.source}")
    if data and getattr(args, "test_data", None) is not None:
        sets.append(f"data.val_path={args.test_data}")
    if getattr(args, "out", None) is not None:
        sets.append(f"log.out_dir={args.out}")
    if getattr(args, "epochs", None) is not None:
        sets.append(f"train.epochs={args.epochs}")
    if getattr(args, "device", None) is not None:
        sets.append(f"train.device={args.device}")
    return sets


def resolve_config(args: argparse.Namespace, announce: bool = True):
    """(config, comment header for RUN/config.yaml): chosen from the data when ``--data`` comes
    without ``--config`` (the choices printed when ``announce``), else the named config with
    ``--data`` fitted to it (warnings printed)."""
    import sys

    from ..config import load_config

    if args.config is None and getattr(args, "data", None) is not None \
            and getattr(args, "source", None) is None:
        from ..autoconfig import as_comment, auto_config, choice_block

        extra = _overrides(args, data=False)
        choice = auto_config(args.data, test_data=getattr(args, "test_data", None),
                             device=getattr(args, "device", None) or "auto", overrides=extra,
                             out_dir=getattr(args, "out", None))
        block = choice_block(choice)
        if announce:
            print(block, flush=True)
        return choice.config, as_comment(block)
    cfg = load_config(args.config, _overrides(args))
    if args.config and getattr(args, "data", None) is not None:
        from ..autoconfig import fit_preset_to_data

        cfg, notes = fit_preset_to_data(cfg, args.config, args.data,
                                        source_given=args.source is not None)
        for n in notes:
            print(f"warning: {n}", file=sys.stderr, flush=True)
    return cfg, ""


def cmd_pretrain(args: argparse.Namespace) -> int:
    import os

    from ..engine import pretrain

    rank0 = os.environ.get("RANK", "0") == "0"
    cfg, header = resolve_config(args, announce=rank0)
    result = pretrain(cfg, resume=args.resume, config_header=header)
    if rank0:
        if result.get("interrupted"):
            return 130
        loss = result.get("final_loss")
        skipped = result.get("skipped_steps") or 0
        print(
            f"done: {result['steps']} steps in {result['wall_s']:.0f} s, final loss "
            f"{'n/a' if loss is None else f'{loss:.4f}'}"
            f"{f' ({skipped} non-finite steps skipped)' if skipped else ''}; checkpoint {result['last']}"
        )
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from ..config import config_from_dict, dump_yaml

    if args.checkpoint:
        from ..checkpoint import load_checkpoint

        cfg = config_from_dict(load_checkpoint(args.checkpoint)["config"], args.checkpoint)
    else:
        cfg, header = resolve_config(args, announce=False)
        print(header, end="")
    print(dump_yaml(cfg), end="")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:  # noqa: ARG001
    from ..config import load_config, preset_names

    for name in preset_names():
        c = load_config(name)
        print(
            f"{name:55s} {c.model.arch:10s} {c.augment.image_size:4d}px "
            f"{c.train.epochs:5d}e  batch {c.train.batch_size}x{c.train.accumulate}  "
            f"base lr {c.optim.base_lr:g}  tau {c.train.tau_base:g}"
        )
    return 0


def add_commands(sub: Any) -> None:
    """Register ``pretrain`` and ``config`` on the main parser's subparsers."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder with BYOL",
        epilog=PRETRAIN_EPILOG,
        formatter_class=RAW,
    )
    p.add_argument("--config", "-c", default=None,
                   help="preset name (`byol config list`) or YAML file")
    p.add_argument("--data", help="dataset file or folder (sets data.path); without --config "
                   "the reader, image size, statistics and recipe are chosen from it")
    p.add_argument("--test-data", metavar="PATH",
                   help="a separate labelled test set for the kNN monitor (sets data.val_path)")
    p.add_argument("--source", help="dataset reader (sets data.source): folder, idx, cifar10, ...")
    p.add_argument("--out", help="run folder for checkpoints and logs (sets log.out_dir)")
    p.add_argument("--epochs", type=int, help="sets train.epochs")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (sets train.device)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override any setting, e.g. --set optim.base_lr=0.3 (repeatable)")
    p.add_argument("--resume", metavar="PATH",
                   help="checkpoint file, or run folder whose newest checkpoint to continue; "
                   "'auto': the --out folder's newest checkpoint if there is one (for torchrun "
                   "--max-restarts)")
    command(p, cmd_pretrain)

    c = sub.add_parser("config", help="show presets and resolved configs")
    command(c, help_command(c))
    csub = c.add_subparsers(dest="config_command", metavar="ACTION")
    cs = csub.add_parser(
        "show",
        help="print the resolved config (preset/YAML + overrides) as YAML",
        epilog="examples:\n  byol config show --config fmnist_quick --set train.epochs=3\n"
        "  byol config show --data my_images/\n"
        "  byol config show --checkpoint runs/fmnist_quick/last.pt",
        formatter_class=RAW,
    )
    cs.add_argument("--config", "-c", default=None, help="preset name or YAML file")
    cs.add_argument("--checkpoint", help="print the config stored in a checkpoint instead")
    cs.add_argument("--data", help="dataset file or folder; without --config: the config "
                    "`byol pretrain --data` would choose, with its reasons")
    cs.add_argument("--source", help="dataset reader (sets data.source)")
    cs.add_argument("--test-data", metavar="PATH", help="a separate test set (data.val_path)")
    cs.add_argument("--device", help="the device to choose for (default: this machine's)")
    cs.add_argument("--set", "-s", action="append", metavar="KEY=VALUE")
    command(cs, cmd_config_show)
    cl = csub.add_parser("list", help="list the shipped presets",
                         epilog="example:\n  byol config list",
                         formatter_class=RAW)
    command(cl, cmd_config_list)
