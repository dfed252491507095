"""``byol eval knn|linear|mhead|svm|lowshot|finetune|all``, ``byol export``, ``byol import``,
``byol report``: parse the arguments into the typed settings of :mod:`byol.eval.settings` and
run the library's :class:`byol.eval.suite.Evaluator` (or :mod:`byol.weights.export`,
:mod:`byol.eval.report`). Every result is an evaluation record printed as one line and
written with ``--json`` and/or into ``--out-dir`` for ``byol report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..eval.report import summary_line
from ..eval.settings import (
    PROTOCOL_ORDER,
    PROTOCOL_SETTINGS,
    DataChoice,
    EvalSettings,
    ModelChoice,
    RunSettings,
)
from .common import RAW, command, from_args, help_command, model_args, write_records

log = logging.getLogger("byol.eval")


# ---------------------------------------------------------------------------------------------
# arguments


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SOURCE:PATH",
                   help="e.g. fashion_mnist:, cifar10:/data/cifar-10-batches-py, "
                   "folder:/data/imagenet (default: the checkpoint's data)")
    g.add_argument("--source", help="data reader (alternative to SOURCE in --data)")
    g.add_argument("--data-path", help="file or folder (alternative to PATH in --data)")
    g.add_argument("--train-split", default="train", help="labelled split to fit on")
    g.add_argument("--test-split", default=None,
                   help="split to evaluate on (default: the checkpoint's data.val_split, or test)")
    g.add_argument("--test-data", metavar="[SOURCE:]PATH",
                   help="a separate test set (file or folder, read like --data unless SOURCE: is "
                   "given); default: the checkpoint's data.val_path, else --test-split of --data")
    g.add_argument("--test-on-train", action="store_true",
                   help="allow scoring the training images against themselves when there is no "
                   "separate test set (inflated numbers; refused otherwise)")
    g.add_argument("--image-size", type=int, help="evaluation crop (default: the checkpoint's)")
    g.add_argument("--mean", type=float, nargs="+", help="normalisation mean(s)")
    g.add_argument("--std", type=float, nargs="+", help="normalisation std(s)")
    g.add_argument("--limit", type=int, default=0, help="use the first N train samples (0: all)")
    g.add_argument("--test-limit", type=int, default=None,
                   help="use the first N test samples (default: --limit)")
    g.add_argument("--synthetic-size", type=int, default=1024,
                   help="size of the synthetic source's splits")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--batch-size", type=int, default=256, help="feature extraction batch")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast for the backbone (auto: bf16 on CUDA and on CPUs with fast bf16, else fp32)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (file data)")
    g.add_argument("--cache-dir", help="reuse features across commands from this folder")
    g.add_argument("--json", metavar="PATH", help="write the result record(s) to this file")
    g.add_argument("--out-dir", metavar="DIR",
                   help="also write <protocol>_<model>.json here (RUN_DIR/eval for byol report)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_settings(g: Any, protocol: str, prefix: str = "") -> None:
    """The flags of one protocol's settings class (``--PREFIX-FLAG`` in ``byol eval all``)."""
    for f in dataclasses.fields(PROTOCOL_SETTINGS[protocol]):
        meta = f.metadata
        if prefix and meta["alone_only"]:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple):
            default = list(default)
        g.add_argument(f"--{prefix}{meta['flag']}", dest=f"{protocol}__{f.name}",
                       default=default, **meta["argparse"])


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The :class:`EvalSettings` the parsed flags describe (defaults for absent protocols)."""
    parts = {}
    for protocol, cls in PROTOCOL_SETTINGS.items():
        kw = {}
        for f in dataclasses.fields(cls):
            v = getattr(args, f"{protocol}__{f.name}", None)
            if v is not None or hasattr(args, f"{protocol}__{f.name}"):
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        parts[protocol] = cls(**kw)
    settings = EvalSettings(**parts)
    if getattr(args, "command_protocol", None) == "all":  # the suite's lowshot draws from the
        settings.lowshot.train_cap = settings.svm.train_cap  # SVM's capped training set
    return settings


def choices_from_args(args: argparse.Namespace) -> tuple[ModelChoice, DataChoice, RunSettings]:
    return from_args(ModelChoice, args), from_args(DataChoice, args), from_args(RunSettings, args)


# ---------------------------------------------------------------------------------------------
# output


def emit(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    for rec in records:
        print(summary_line(rec), flush=True)
    write_records(args, records)


# ---------------------------------------------------------------------------------------------
# commands


def _cmd_protocol(protocol: str):
    def cmd(args: argparse.Namespace) -> int:
        from ..eval.suite import build_evaluators

        ev = build_evaluators(*choices_from_args(args))[0]
        emit(args, [ev.run(protocol, settings_from_args(args))])
        return 0

    return cmd


def cmd_eval_all(args: argparse.Namespace) -> int:
    from ..errors import EvalError
    from ..eval.report import write_json
    from ..eval.suite import build_evaluators

    protocols = [p for p in (args.only or PROTOCOL_ORDER) if p not in (args.skip or [])]
    if getattr(args, "voc07", None):
        protocols = [p for p in protocols if p in ("svm", "lowshot")]
    if not protocols:
        raise EvalError("--only/--skip leave no protocol to run")
    if args.out_dir is None and args.checkpoint:
        args.out_dir = str(Path(args.checkpoint).resolve().parent / "eval")
    settings = settings_from_args(args)
    records = []
    for ev in build_evaluators(*choices_from_args(args), baselines=args.baselines or ()):
        for rec in ev.run_all(protocols, settings):
            emit(argparse.Namespace(out_dir=args.out_dir), [rec])
            records.append(rec)
    if args.json:
        write_json({"records": records}, args.json)
    if args.out_dir:
        print(f"results in {args.out_dir}; `byol report {Path(args.out_dir).parent}` tabulates "
              "them")
    return 0


def _not_a_folder(out: str, flag: str, example: str) -> None:
    if Path(out).is_dir():
        from ..errors import CheckpointError

        raise CheckpointError(f"{flag} '{out}' is a folder: name the file to write, e.g. "
                              f"{flag if flag.startswith('-') else ''} {Path(out) / example}"
                              .replace("  ", " "))


def cmd_export(args: argparse.Namespace) -> int:
    from ..weights.export import DEFAULT_SUFFIX, export_checkpoint

    default = str(Path(args.checkpoint).with_suffix("")) + f"_{args.format}" + \
        DEFAULT_SUFFIX[args.format]
    out = args.out or default
    _not_a_folder(out, "--out", Path(default).name)
    rep = export_checkpoint(args.checkpoint, out, args.format, which=args.which,
                            force=args.force, trust=args.trust, verify=not args.no_verify)
    print(f"wrote {rep['out']} ({args.format}, {rep['arch']}, {rep['keys']} tensors, "
          f"from a {rep['layout']} checkpoint)")
    for n in rep["notes"]:
        print(f"  note: {n}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..weights.export import import_checkpoint

    _not_a_folder(args.out, "OUT", Path(args.source).stem + "_byol.pt")
    rep = import_checkpoint(args.source, args.out, trust=args.trust, image_size=args.image_size,
                            mean=tuple(args.mean) if args.mean else None,
                            std=tuple(args.std) if args.std else None)
    print(f"wrote {rep['out']} (byol checkpoint, {rep['arch']}, from {rep['layout']} layout)")
    print(f"  missing keys ({len(rep['missing'])}): {', '.join(rep['missing'][:10]) or 'none'}")
    print(f"  unexpected keys ({len(rep['unexpected'])}): "
          f"{', '.join(rep['unexpected'][:10]) or 'none'}")
    for n in rep["notes"]:
        print(f"  note: {n}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.report import write_report

    path, text = write_report(args.run_dir, out=args.out, plots=not args.no_plots,
                              reference=not args.no_reference, extra=args.extra or (),
                              neighbours=args.neighbours, data=args.data,
                              test_data=args.test_data, device=args.device)
    if args.print:
        print(text)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# registration

EPILOGS = {
    "knn": """examples:
  byol eval knn --checkpoint runs/fmnist_quick/last.pt --json runs/fmnist_quick/eval/knn.json
  byol eval knn --baseline random --checkpoint runs/fmnist_quick/last.pt   # same arch, random init
  byol eval knn --baseline pixels --data fashion_mnist: --ks 20
  byol eval knn --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val --device cuda
""",
    "linear": """examples:
  byol eval linear --checkpoint runs/fmnist_quick/last.pt                 # cached features, lr sweep
  byol eval linear --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val \\
      --mode augmented --optimizer lars --epochs 90 --train-batch-size 4096 --device cuda
""",
    "mhead": """examples:
  byol eval mhead --checkpoint runs/fmnist_quick/last.pt --epochs 30 --train-cap 10000
  byol eval mhead --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val \\
      --mode augmented --epochs 90 --device cuda
""",
    "svm": """examples:
  byol eval svm --checkpoint runs/fmnist_quick/last.pt --layers feature5 --costs fast --train-cap 5000
  byol eval svm --checkpoint byol_r50.pt --voc07 /data/VOCdevkit --layers all --n-jobs 16
""",
    "lowshot": """examples:
  byol eval lowshot --checkpoint runs/fmnist_quick/last.pt --costs fast --ks 1 4 16 --draws 3
  byol eval lowshot --checkpoint byol_r50.pt --voc07 /data/VOCdevkit --layer feature5 --n-jobs 16
""",
    "finetune": """examples:
  byol eval finetune --checkpoint runs/fmnist_quick/last.pt --fractions 1 10 100 --epochs 5
  byol eval finetune --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val \\
      --fractions 1 10 --epochs 30 50 --train-batch-size 1024 --device cuda
""",
    "all": """examples:
  byol eval all --checkpoint runs/fmnist_quick/last.pt --baselines random pixels \\
      --cache-dir runs/cache --svm-train-cap 5000 --finetune-epochs 3
  byol report runs/fmnist_quick
""",
}


HELPS = {
    "knn": "weighted kNN (T=0.07) on GAP features, k = 10 20 100 200",
    "linear": "linear probe on GAP features (fast lr sweep, or mmselfsup's augmented one)",
    "mhead": "multi-head linear probe on feature1..feature5",
    "svm": "VOC07 SVM protocol (one-vs-rest on single-label data)",
    "lowshot": "low-shot SVM, k = 1..96 positives per class, 5 seeded draws",
    "finetune": "fine-tune the whole network on 1% / 10% / 100% of the labels",
}


def _common_args(p: argparse.ArgumentParser) -> None:
    model_args(p, verb="evaluate", baselines=("random", "pixels", "torchvision"),
               in_chans_default="the data's", label_default="byol / random-init / pixels")
    _data_args(p)
    _run_args(p)


def add_commands(subparsers: Any) -> None:
    """Register ``eval``, ``export``, ``import`` and ``report`` on the main CLI's subparsers."""
    ev = subparsers.add_parser(
        "eval", help="evaluate a checkpoint or baseline (kNN, linear, multi-head, SVM, ...)",
        formatter_class=RAW,
        epilog="examples:\n  byol eval knn --checkpoint runs/fmnist_quick/last.pt\n"
        "  byol eval all --checkpoint runs/fmnist_quick/last.pt --baselines random pixels\n")
    command(ev, help_command(ev))
    evs = ev.add_subparsers(dest="command_protocol", metavar="PROTOCOL")
    for name, h in HELPS.items():
        p = evs.add_parser(name, help=h.replace("%", "%%"), description=h, epilog=EPILOGS[name],
                           formatter_class=RAW)
        _common_args(p)
        g = p.add_argument_group(f"{name} options")
        add_settings(g, name)
        if name in ("svm", "lowshot"):
            g.add_argument("--voc07", metavar="ROOT",
                           help="VOC2007 devkit: trainval/test images and -1/0/1 labels")
            g.add_argument("--n-jobs", type=int, default=1, help="parallel SVM fits (joblib)")
        command(p, _cmd_protocol(name), f"byol eval {name}")

    p = evs.add_parser("all", help="every protocol (plus baselines), results for byol report",
                       description="Run kNN, linear, multi-head, SVM, low-shot SVM and "
                       "fine-tuning, sharing the features between protocols.",
                       epilog=EPILOGS["all"], formatter_class=RAW)
    _common_args(p)
    g = p.add_argument_group("suite")
    g.add_argument("--baselines", nargs="*", choices=("random", "pixels"), default=[],
                   help="also evaluate these baselines the same way")
    g.add_argument("--only", nargs="+", choices=PROTOCOL_ORDER, help="run only these protocols")
    g.add_argument("--skip", nargs="+", choices=PROTOCOL_ORDER, help="skip these protocols")
    g.add_argument("--voc07", metavar="ROOT", help="run svm and lowshot on VOC2007 instead")
    g.add_argument("--n-jobs", type=int, default=1, help="parallel SVM fits (joblib)")
    for name in PROTOCOL_ORDER:
        add_settings(g, name, f"{name}-")
    command(p, cmd_eval_all, "byol eval all")

    from ..weights.export import FORMATS

    p = subparsers.add_parser(
        "export", help="write a backbone for torchvision, timm, mmdet/mmseg, detectron2, ...",
        description="Export the (online) backbone of a byol, mmselfsup or torchvision "
        "checkpoint. torchvision/timm files get a zero-initialised 1000-class fc so that "
        "strict loading works.", formatter_class=RAW,
        epilog="examples:\n  byol export runs/in1k/last.pt --format torchvision --out r50_byol.pth\n"
        "  byol export runs/in1k/last.pt --format detectron2 --out r50_byol.pkl\n"
        "  byol export runs/in1k/last.pt --format mmdet --out r50_byol_mmdet.pth\n"
        "  byol export runs/fmnist_quick/last.pt --format safetensors\n")
    p.add_argument("checkpoint", help="byol / mmselfsup / torchvision checkpoint")
    p.add_argument("--format", "-f", choices=FORMATS, default="torchvision")
    p.add_argument("--out", "-o", help="output file (default: next to the checkpoint)")
    p.add_argument("--which", choices=("online", "target"), default="online")
    p.add_argument("--force", action="store_true",
                   help="write non-torchvision variants (small stem, narrow) anyway")
    p.add_argument("--trust", action="store_true", help="allow full unpickling of the input")
    p.add_argument("--no-verify", action="store_true",
                   help="skip loading the torchvision/timm file back into the stock model")
    command(p, cmd_export, "byol export")

    p = subparsers.add_parser(
        "import", help="convert mmselfsup / torchvision weights into a byol checkpoint",
        description="Convert an mmselfsup BYOL checkpoint (1.x or 0.x key layout), an "
        "mmpretrain or a torchvision ResNet state dict into a byol checkpoint; prints the "
        "missing and unexpected keys.", formatter_class=RAW,
        epilog="examples:\n  byol import byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth "
        "byol_r50.pt\n  byol eval knn --checkpoint byol_r50.pt --data folder:/data/imagenet "
        "--test-split val\n")
    p.add_argument("source", help="checkpoint to convert (.pth/.pt/.safetensors)")
    p.add_argument("out", help="byol checkpoint to write")
    p.add_argument("--trust", action="store_true",
                   help="allow full unpickling (mmengine checkpoints with Python objects in meta)")
    p.add_argument("--image-size", type=int, help="evaluation size to record (default 224)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean to record")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std to record")
    command(p, cmd_import, "byol import")

    p = subparsers.add_parser(
        "report", help="tabulate RUN_DIR/eval/*.json and plot training curves",
        description="Gather the JSON results of `byol eval` in RUN_DIR/eval into a Markdown "
        "table laid out like mmselfsup's BYOL page, and plot loss / kNN curves from "
        "RUN_DIR/metrics.jsonl.", formatter_class=RAW,
        epilog="examples:\n  byol eval all --checkpoint runs/fmnist_quick/last.pt --baselines "
        "random pixels\n  byol report runs/fmnist_quick --print\n"
        "  byol report runs/own --data photos/ --neighbours 8\n")
    p.add_argument("run_dir", help="run folder (with eval/*.json and/or metrics.jsonl)")
    p.add_argument("--out", help="Markdown file (default RUN_DIR/report.md)")
    p.add_argument("--extra", nargs="+", help="more result JSON files to include")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--neighbours", type=int, default=6, metavar="N",
                   help="queries in the nearest-neighbour picture RUN_DIR/plots/neighbours.png "
                   "(each with its top-8 training images; needs RUN_DIR/last.pt; 0: none)")
    p.add_argument("--data", help="the training images to search (default: the run's data.path)")
    p.add_argument("--test-data", dest="test_data",
                   help="the query images (default: the run's test split)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-reference", action="store_true",
                   help="omit the published mmselfsup/paper reference rows")
    p.add_argument("--print", action="store_true", help="also print the Markdown")
    command(p, cmd_report, "byol report")
